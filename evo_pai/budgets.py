"""Layer budgets: how many weights each layer keeps at a given sparsity.

`uniform` keeps the same fraction everywhere. `erk` (Erdős–Rényi-Kernel, Evci et al. 2020)
gives small layers such as the classifier a higher density, which is why it is the default:
uniform 98 % on LeNet-300-100 leaves 20 of the output layer's 1,000 weights and silences
whole classes. `global` fixes only the total; scores decide the per-layer split.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

Shapes = Mapping[str, Sequence[int]]
Caps = Mapping[str, int] | None  # most weights a layer may keep (N:M patterns); None = all


def numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def total_keep(shapes: Shapes, sparsity: float) -> int:
    return int(round((1.0 - sparsity) * sum(numel(s) for s in shapes.values())))


def uniform_counts(shapes: Shapes, sparsity: float, min_keep: int = 1, caps: Caps = None) -> dict[str, int]:
    caps = caps or {}
    return {k: min(caps.get(k, numel(s)), max(min_keep, int(round((1.0 - sparsity) * numel(s))))) for k, s in shapes.items()}


def erk_counts(shapes: Shapes, sparsity: float, min_keep: int = 1, caps: Caps = None) -> dict[str, int]:
    """Density of layer l proportional to sum(shape)/prod(shape), capped at 1 (or at `caps[l]` kept
    weights, e.g. N/M of the layer under an N:M pattern), total exact where the caps allow."""
    n = {k: min(numel(s), (caps or {}).get(k, numel(s))) for k, s in shapes.items()}
    raw = {k: sum(s) / numel(s) for k, s in shapes.items()}
    keep_total = total_keep(shapes, sparsity)
    dense: set[str] = set()
    while True:
        budget = keep_total - sum(n[k] for k in dense)
        divisor = sum(raw[k] * numel(shapes[k]) for k in n if k not in dense)
        eps = budget / divisor if divisor > 0 else 0.0
        over = {k for k in n if k not in dense and eps * raw[k] * numel(shapes[k]) > n[k]}
        if not over:
            break
        dense |= over
    counts = {k: n[k] if k in dense else min(n[k], max(min_keep, int(round(eps * raw[k] * numel(shapes[k]))))) for k in n}
    # Rounding drift goes to the largest non-dense layer so the total is exact.
    drift = keep_total - sum(counts.values())
    free = [k for k in n if k not in dense] or list(n)
    big = max(free, key=lambda k: n[k])
    counts[big] = min(n[big], max(min_keep, counts[big] + drift))
    return counts


def layer_counts(shapes: Shapes, sparsity: float, budget: str, min_keep: int = 1, caps: Caps = None) -> dict[str, int] | None:
    """Per-layer kept counts (at most `caps[layer]`), or None for `global` (only the total is fixed)."""
    if budget == "uniform":
        return uniform_counts(shapes, sparsity, min_keep, caps)
    if budget == "erk":
        return erk_counts(shapes, sparsity, min_keep, caps)
    if budget == "global":
        return None
    raise ValueError(f"unknown layer budget '{budget}'")


def cubic_schedule(start: float, end: float, steps: int) -> list[float]:
    """Sparsity after each of `steps` pruning steps (Zhu & Gupta 2017): fast early, gentle late."""
    if steps <= 0:
        return []
    return [end + (start - end) * (1.0 - (i + 1) / steps) ** 3 for i in range(steps)]

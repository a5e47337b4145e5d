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


def fit_counts(density: Mapping[str, float], sizes: Mapping[str, int], total: int,
               low: Mapping[str, int], high: Mapping[str, int] | None = None) -> dict[str, int]:
    """Integer kept counts proportional to `density` x size, each in [low, high] (high: the size),
    summing to `total` exactly: water-filling (clamped layers leave the ranking, the scale is
    re-solved), then largest-remainder rounding. Needs sum(low) <= total <= sum(high)."""
    high = dict(sizes) if high is None else dict(high)
    if not sum(low.values()) <= total <= sum(high.values()):
        raise ValueError(f"cannot keep {total} weights within per-layer bounds {dict(low)}..{high}")
    want = {k: max(float(density[k]), 1e-12) * sizes[k] for k in sizes}
    fixed: dict[str, int] = {}
    while True:
        free = [k for k in sizes if k not in fixed]
        scale = (total - sum(fixed.values())) / sum(want[k] for k in free) if free else 0.0
        clamp = {k: low[k] if scale * want[k] < low[k] else high[k] for k in free
                 if not low[k] <= scale * want[k] <= high[k]}
        if not clamp:
            break
        fixed.update(clamp)
    raw = {k: scale * want[k] for k in free}
    counts = {**fixed, **{k: int(math.floor(v)) for k, v in raw.items()}}
    # Largest remainders first (ties: layer order) take the missing units; never past `high`.
    for k in sorted(free, key=lambda k: -(raw[k] - math.floor(raw[k]))):
        if sum(counts.values()) >= total:
            break
        if counts[k] < high[k]:
            counts[k] += 1
    for k in free:  # rounding could still leave a unit (every remainder went to a full layer)
        while sum(counts.values()) < total and counts[k] < high[k]:
            counts[k] += 1
    return counts


def cubic_schedule(start: float, end: float, steps: int) -> list[float]:
    """Sparsity after each of `steps` pruning steps (Zhu & Gupta 2017): fast early, gentle late."""
    if steps <= 0:
        return []
    return [end + (start - end) * (1.0 - (i + 1) / steps) ** 3 for i in range(steps)]


def exponential_schedule(start: float, end: float, steps: int) -> list[float]:
    """Density falls by the same factor every step: d_i = d_0 (d_n / d_0)^(i/n) (from 0: (1-s)^(i/n))."""
    if steps <= 0:
        return []
    d0, d1 = 1.0 - start, 1.0 - end
    return [1.0 - d0 * (d1 / d0) ** ((i + 1) / steps) for i in range(steps - 1)] + [end]


def linear_schedule(start: float, end: float, steps: int) -> list[float]:
    if steps <= 0:
        return []
    return [start + (end - start) * (i + 1) / steps for i in range(steps - 1)] + [end]


SCHEDULES = {"cubic": cubic_schedule, "exponential": exponential_schedule, "linear": linear_schedule}


def sparsity_schedule(shape: str, start: float, end: float, steps: int) -> list[float]:
    """Sparsity after each of `steps` pruning steps from `start` to `end`, by `search.schedule`'s shape."""
    return SCHEDULES[shape](start, end, steps)

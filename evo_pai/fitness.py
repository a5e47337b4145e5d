"""Built-in fitness functions. Signature: fn(result: BurstResult, mask: MaskSet, **params) -> float.

Higher is better. Per-layer normalisation makes layers of very different sizes count equally
and makes the numbers comparable across models.
"""
from __future__ import annotations

import hashlib
import logging
import math

from .errors import EvoPaiError
from .masks import MaskSet
from .registry import FITNESS, register_fitness
from .training.burst import BurstResult

WORST = float("-inf")
log = logging.getLogger(__name__)


def _layer_mean(values: dict[str, float]) -> float:
    return sum(values.values()) / max(1, len(values))


@register_fitness("weight_magnitude", "mean |w| of kept weights after the burst, per layer relative to mean |w0|")
def weight_magnitude(result: BurstResult, mask: MaskSet) -> float:
    per_layer = {}
    for k, m in mask.items():
        kept = result.traits["weight"][k][m]
        per_layer[k] = float(kept.abs().mean()) / max(result.init_scale.get(k, 1.0), 1e-12) if kept.numel() else 0.0
    return _layer_mean(per_layer)


@register_fitness("gradient_accumulation", "sum of |grad| over the burst on kept weights, per layer relative to all weights")
def gradient_accumulation(result: BurstResult, mask: MaskSet) -> float:
    per_layer = {}
    for k, m in mask.items():
        g = result.traits["grad_accum"][k]
        per_layer[k] = float(g[m].mean()) / max(float(g.mean()), 1e-12) if m.any() else 0.0
    return _layer_mean(per_layer)


@register_fitness("mixed", "alpha*log(weight_magnitude) + (1-alpha)*log(gradient_accumulation); alpha=0.5")
def mixed(result: BurstResult, mask: MaskSet, alpha: float = 0.5) -> float:
    # Logs make the mix scale-free: rescaling either term shifts every candidate equally.
    wm, ga = weight_magnitude(result, mask), gradient_accumulation(result, mask)
    if wm <= 0 or ga <= 0:
        return WORST
    return alpha * math.log(wm) + (1.0 - alpha) * math.log(ga)


@register_fitness("val_accuracy", "validation accuracy after the burst")
def val_accuracy(result: BurstResult, mask: MaskSet) -> float:
    return float(result.metrics["val_accuracy"])


@register_fitness("val_loss", "negative validation loss after the burst")
def val_loss(result: BurstResult, mask: MaskSet) -> float:
    return -float(result.metrics["val_loss"])


@register_fitness("random", "control: a uniform draw fixed by the mask (and param seed): selection by chance")
def random_pick(result: BurstResult, mask: MaskSet, seed: int = 0) -> float:
    # The same search with this fitness spends the same compute with selection replaced by a random
    # pick (tournaments, elites and the winner alike): what selection adds is the difference.
    digest = hashlib.sha256(f"{seed}:{mask.hash()}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def score(name: str, result: BurstResult, mask: MaskSet, params: dict | None = None) -> tuple[float, str | None]:
    """Fitness value and, when it had to be replaced by WORST, the reason."""
    if not result.finite:  # a backend that gave up on a task says why in metrics["error"]
        return WORST, str(result.metrics.get("error") or "training diverged (non-finite loss or weights)")
    try:
        value = float(FITNESS.get(name)(result, mask, **(params or {})))
    except TypeError as exc:
        raise EvoPaiError(f"search.fitness_params do not fit fitness '{name}': {exc}") from exc
    if not math.isfinite(value):
        return WORST, f"fitness '{name}' returned {value}"
    return value, None


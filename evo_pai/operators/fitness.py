"""Built-in fitness functions. Signature: fn(result: BurstResult, mask: MaskSet, **params) -> float.

Higher is better. Per-layer normalisation makes layers of very different sizes count equally
and makes the numbers comparable across models.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import math

from evo_pai.core.errors import EvoPaiError, brief
from evo_pai.core.masks import MaskSet
from evo_pai.core.registry import FITNESS, register_fitness
from evo_pai.training.burst import BurstResult

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


@register_fitness("adaptive_bn_accuracy", "validation accuracy after adaptive BatchNorm (EagleEye): statistics "
                  "re-estimated on search.adaptive_bn_batches training batches")
def adaptive_bn_accuracy(result: BurstResult, mask: MaskSet) -> float:
    # Without the metric (search.adaptive_bn_batches 0: refused by preflight for a search; a study's
    # predictiveness scores every fitness) NaN, so the candidate ranks worst with the reason logged.
    return float(result.metrics.get("abn_val_accuracy", math.nan))


# Fitnesses read from the burst's weight changes and gradients: without a burst every candidate looks alike.
FROM_TRAINING = ("weight_magnitude", "gradient_accumulation", "mixed")


def check_inputs(name: str, key: str, adaptive_bn_batches: int, burst_epochs: float, model=None,
                 model_name: str = "") -> None:
    """Refuse fitness `name` (configured at `key`) where the bursts cannot give it what it reads: adaptive
    BN switched off or a model without BatchNorm statistics (`model`, when known), or no burst at all."""
    if name == "adaptive_bn_accuracy":
        if adaptive_bn_batches == 0:
            raise EvoPaiError(f"{key}: adaptive_bn_accuracy needs search.adaptive_bn_batches > 0 (training batches "
                              "that re-estimate BatchNorm statistics, e.g. 50); set it")
        # a model without BatchNorm statistics: nothing to recalibrate, the fitness is val_accuracy (it is
        # the default of channel masks, which must work on any model)
    if burst_epochs == 0 and name in FROM_TRAINING:
        raise EvoPaiError(f"search.burst_epochs: 0 trains nothing, so fitness '{name}' (from the burst's weight "
                          f"changes and gradients) cannot rank candidates; set {key} to adaptive_bn_accuracy or "
                          "val_accuracy, or search.burst_epochs > 0")


@register_fitness("random", "control: a uniform draw fixed by the mask (and param seed): selection by chance")
def random_pick(result: BurstResult, mask: MaskSet, seed: int = 0) -> float:
    # The same search with this fitness spends the same compute with selection replaced by a random
    # pick (tournaments, elites and the winner alike): what selection adds is the difference.
    digest = hashlib.sha256(f"{seed}:{mask.hash()}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def check_params(name: str, params: dict | None) -> None:
    """Refuse `search.fitness_params` that fitness `name` does not take (preflight and every score)."""
    fn = FITNESS.get(name)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    try:
        sig.bind(None, None, **(params or {}))
    except TypeError as exc:
        takes = [p for p in list(sig.parameters)[2:] if sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
        raise EvoPaiError(f"search.fitness_params do not fit fitness '{name}': {exc}; it takes "
                          f"{', '.join(takes) or 'no parameters'}") from None


def as_number(name: str, value: object) -> float:
    """A fitness value as a float; anything that is not one number is the fitness function's bug."""
    if not isinstance(value, (bool, str, bytes)):
        try:
            return float(value)  # type: ignore[arg-type]  (ints, numpy scalars, one-element tensors)
        except (TypeError, ValueError, RuntimeError):
            pass
    shown = " ".join(repr(value).split())[:60]
    raise EvoPaiError(f"search.fitness: fitness '{name}' returned {type(value).__name__} {shown}, not a number; "
                      "a fitness function returns one float (higher is better)")


def score(name: str, result: BurstResult, mask: MaskSet, params: dict | None = None) -> tuple[float, str | None]:
    """Fitness value and, when it had to be replaced by WORST, the reason."""
    if not result.finite:  # a backend that gave up on a task says why in metrics["error"]
        return WORST, str(result.metrics.get("error") or "training diverged (non-finite loss or weights)")
    check_params(name, params)
    try:
        raw = FITNESS.get(name)(result, mask, **(params or {}))
    except EvoPaiError:
        raise
    except Exception as exc:  # a user's fitness function: name it, and where it failed
        raise EvoPaiError(f"search.fitness: fitness '{name}' raised {brief(exc)}; fix the function or choose "
                          "another search.fitness") from exc
    value = as_number(name, raw)
    if not math.isfinite(value):
        return WORST, f"fitness '{name}' returned {value}"
    return value, None

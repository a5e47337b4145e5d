"""What a candidate's accuracy looks like before and after adaptive BatchNorm, for predictiveness studies.

Both helpers go through an `Evaluator` (any backend; its config must have
`search.adaptive_bn_batches` > 0), so they cost what the search's own bursts cost and agree across
backends. A burst of 0 epochs trains nothing: it evaluates its start weights under the mask, plainly
(`val_accuracy`) and after adaptive BN (`abn_val_accuracy`).
"""
from __future__ import annotations

import torch

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.training.tasks import BurstTask, Evaluator


def _check(evaluator: Evaluator) -> None:
    if not evaluator.cfg.search.adaptive_bn_batches:
        raise EvoPaiError("search.adaptive_bn_batches: 0 in the evaluator's config, so bursts report no adaptive-BN "
                          "accuracy; build the evaluator from a config with it > 0")


def state_accuracies(evaluator: Evaluator, mask: MaskSet, state: dict[str, torch.Tensor] | None,
                     seed: int) -> tuple[float, float]:
    """(plain validation accuracy, validation accuracy after adaptive BN) of the network `state` (a full
    state_dict, e.g. a BurstResult's `state`; None: θ0) under `mask`; `seed` picks the recalibration batches."""
    _check(evaluator)
    res = evaluator.evaluate([BurstTask(mask, 0.0, seed, start=state)])[0]
    return res.metrics["val_accuracy"], res.metrics["abn_val_accuracy"]


def burst_predictors(evaluator: Evaluator, masks: list[MaskSet], seeds: list[int], burst_epochs: float) -> list[dict]:
    """Per candidate, the three predictors of its final accuracy that EagleEye compares: the burst's plain
    validation accuracy, adaptive-BN accuracy without a burst (θ0 under the mask) and after the burst
    (both bursts from θ0 with the candidate's seed, evaluated in one call: a vectorized backend batches them)."""
    _check(evaluator)
    tasks = [BurstTask(m, e, s) for e in (0.0, burst_epochs) for m, s in zip(masks, seeds)]
    results = evaluator.evaluate(tasks)
    before, after = results[: len(masks)], results[len(masks):]
    return [{"burst_val_accuracy": a.metrics["val_accuracy"], "abn_no_burst_val_accuracy": b.metrics["abn_val_accuracy"],
             "abn_after_burst_val_accuracy": a.metrics["abn_val_accuracy"]} for b, a in zip(before, after)]

"""Iterative magnitude pruning with rewinding: the lottery-ticket procedure (Frankle & Carbin 2019).

Train from the rewind point, prune `prune_fraction` of the remaining weights by |w| (per layer
under masks.budget), rewind, repeat; the last round lands exactly on the target. Every round's
training goes through the evaluator, so `search_model_epochs` counts IMP's whole cost.

search.params: `prune_fraction` (0.2), `round_epochs` (epochs trained per round; default
final.epochs), `rewind_epochs` (0: rewind to θ0; r > 0: train the dense net r epochs once and
rewind every round, and the final training, to that state — "late rewinding").
"""
from __future__ import annotations

import math

from evo_pai.core.errors import EvoPaiError
from evo_pai.training.tasks import BurstTask
from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.core.individual import Individual, derive_seed
from evo_pai.core.registry import register_method


def imp_schedule(target: float, fraction: float) -> list[float]:
    """Sparsity after each round: 1 - (1-f)^r, capped at (and ending on) the target."""
    if not 0.0 < fraction < 1.0:
        raise EvoPaiError(f"search.params.prune_fraction: must be in (0, 1), got {fraction}")
    if target <= 0.0:
        return []
    rounds = max(1, math.ceil(math.log(1.0 - target) / math.log(1.0 - fraction) - 1e-9))
    return [min(target, 1.0 - (1.0 - fraction) ** (r + 1)) for r in range(rounds - 1)] + [target]


def imp_params(cfg) -> tuple[float, float, float]:
    """(prune_fraction, round_epochs, rewind_epochs) from search.params, checked."""
    p = cfg.search.params
    try:
        fraction = float(p.get("prune_fraction", 0.2))
        round_epochs = float(p.get("round_epochs", cfg.final.epochs))
        rewind_epochs = float(p.get("rewind_epochs", 0))
    except (TypeError, ValueError) as exc:
        raise EvoPaiError(f"search.params: imp's prune_fraction, round_epochs and rewind_epochs are numbers ({exc})") from None
    if round_epochs <= 0 or rewind_epochs < 0:
        raise EvoPaiError("search.params.round_epochs must be > 0 and search.params.rewind_epochs >= 0")
    imp_schedule(cfg.search.sparsity, fraction)  # refuses a fraction outside (0, 1)
    return fraction, round_epochs, rewind_epochs


def imp_plan(cfg) -> tuple[int, int]:
    """(training tasks, rounds): one per round, plus the late-rewinding run."""
    fraction, _, rewind_epochs = imp_params(cfg)
    rounds = len(imp_schedule(cfg.search.sparsity, fraction))
    return rounds + (1 if rewind_epochs > 0 else 0), rounds


IMP_PARAMS = {"prune_fraction": "share of the remaining weights pruned per round, default 0.2",
              "round_epochs": "epochs trained per round, default final.epochs",
              "rewind_epochs": "0: rewind to θ0; r > 0: train the dense net r epochs once and rewind to that, default 0"}


@register_method("imp", "lottery ticket: train, prune 20 % of the rest by magnitude, rewind; repeat to the target",
                 plan=imp_plan, params=IMP_PARAMS, preflight=imp_params, reads=("search.fitness",))
def imp(exp: Experiment) -> SearchOutcome:
    fraction, round_epochs, rewind_epochs = imp_params(exp.cfg)
    mask, rewind = exp.dense_mask(), None
    if rewind_epochs > 0:
        rewind = exp.run_task(BurstTask(mask, rewind_epochs, derive_seed(exp.cfg.seed, "imp-rewind"), keep_state=True)).state
    schedule = imp_schedule(exp.cfg.search.sparsity, fraction)
    for r, sparsity in enumerate(schedule):
        res = exp.run_task(BurstTask(mask, round_epochs, derive_seed(exp.cfg.seed, "imp", r), start=rewind))
        ind = Individual(mask)
        exp.assign(ind, res)
        step = exp.prune_step(sparsity, final=r == len(schedule) - 1)
        mask = exp.mutate(ind, step, "magnitude", {"scope": "layer"})
        exp.log_generation(r, [ind], pruned_to=mask.sparsity())
    return SearchOutcome(mask, final_start=rewind, extra={"imp_rounds": len(schedule), "round_epochs": round_epochs,
                                                          "rewind_epochs": rewind_epochs})


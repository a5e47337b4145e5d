"""Gradual magnitude pruning: the control for dissipating gradients.

The very same loop as `dissipating` (one network, one epoch per step, DG's cubic schedule over
`search.dg.epochs` steps, the same seeds and scope), with the `magnitude` mutation instead of
`search.mutation`: it prunes the smallest |w_t| rather than the weights that moved least.
A gain of DG over gmp is therefore the criterion's, not the schedule's.
"""
from __future__ import annotations

from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.core.registry import register_method
from evo_pai.search.dissipating import dissipating, epoch_plan


@register_method("gmp", "control: the dissipating loop and schedule, pruning the smallest |w_t| (magnitude mutation)",
                 plan=epoch_plan, params={},
                 reads=("search.fitness", "search.dg", "search.schedule", "search.optimizer_state"))
def gmp(exp: Experiment) -> SearchOutcome:
    cfg = exp.cfg
    # The mutation's schedule mode follows step.sparsity: DG's cubic schedule, exactly.
    if exp.channels:  # structured gmp: widths shrink by search.mutation_params' criterion and scope
        params = {"prob": 0.0, **cfg.search.mutation_params}
        search = cfg.search.model_copy(update={"mutation": "width", "mutation_params": params})
    else:
        search = cfg.search.model_copy(update={"mutation": "magnitude", "mutation_params": {}})
    exp.cfg = cfg.model_copy(update={"search": search})
    try:
        outcome = dissipating(exp)
    finally:
        exp.cfg = cfg
    outcome.extra["mutation"] = search.mutation
    return outcome

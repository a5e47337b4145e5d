"""Dissipating gradients: one network; after each epoch prune the weights that barely moved from θ0.

With `search.optimizer_state: keep` (default) the loop is one training run pruned at epoch
boundaries: one optimizer state (a pruned weight's entries zeroed), one batch stream and one
learning-rate schedule across all pruning epochs. `reset` restarts optimizer and batch order each
epoch (the v1 loop, kept to reproduce older results).
"""
from __future__ import annotations

from evo_pai.core.budgets import sparsity_schedule
from evo_pai.training.tasks import BurstTask
from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.core.individual import Individual, derive_seed
from evo_pai.core.registry import register_method


def epoch_plan(cfg) -> tuple[int, int]:
    """One training task and one logged step per pruning epoch."""
    return cfg.search.dg.epochs, cfg.search.dg.epochs


@register_method("dissipating", "train one network; after each epoch prune by search.mutation until the target",
                 plan=epoch_plan, params={}, evolutionary=True,
                 reads=("search.fitness", "search.mutation", "search.dg", "search.schedule", "search.optimizer_state"))
def dissipating(exp: Experiment) -> SearchOutcome:
    s = exp.cfg.search
    mask, state, opt = exp.dense_mask(), None, None
    schedule = sparsity_schedule(s.schedule, 0.0, s.sparsity, s.dg.epochs)
    keep, per_epoch = s.optimizer_state == "keep", exp.steps(1.0)
    first = 0
    if exp.resume_state is not None:  # a resumed run continues after the last checkpointed epoch
        r = exp.resume_state
        mask, state, opt, first = r["mask"], r["state"], r.get("opt_state"), r["generation"] + 1
    for epoch, sparsity in enumerate(schedule):
        if epoch < first:
            continue
        if keep:
            task = BurstTask(mask, 1.0, derive_seed(exp.cfg.seed, "dissipating"), start=state, keep_state=True,
                             opt_state=opt, offset=epoch * per_epoch, horizon=len(schedule) * per_epoch)
        else:
            task = BurstTask(mask, 1.0, derive_seed(exp.cfg.seed, "dissipating", epoch), start=state, keep_state=True)
        res = exp.run_task(task)
        ind = Individual(mask)
        exp.assign(ind, res)
        mask = exp.mutate(ind, exp.prune_step(sparsity, final=epoch == len(schedule) - 1))
        state, opt = res.state, res.opt_state if keep else None
        exp.log_generation(epoch, [ind], pruned_to=mask.sparsity())
        exp.checkpoint({"generation": epoch, "mask": mask, "state": state, "opt_state": opt})
    if exp.cfg.final.init == "continue":
        return SearchOutcome(mask, final_start=state, final_opt_state=opt)
    return SearchOutcome(mask)

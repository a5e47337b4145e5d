"""Dissipating gradients: one network; after each epoch prune the weights that barely moved from θ0."""
from __future__ import annotations

from ..budgets import cubic_schedule
from ..training.tasks import BurstTask
from .experiment import Experiment, SearchOutcome
from ..individual import Individual, derive_seed
from ..registry import register_method


@register_method("dissipating", "train one network; after each epoch prune by search.mutation until the target")
def dissipating(exp: Experiment) -> SearchOutcome:
    s = exp.cfg.search
    mask, state = exp.dense_mask(), None
    schedule = cubic_schedule(0.0, s.sparsity, s.dg.epochs)
    first = 0
    if exp.resume_state is not None:  # a resumed run continues after the last checkpointed epoch
        r = exp.resume_state
        mask, state, first = r["mask"], r["state"], r["generation"] + 1
    for epoch, sparsity in enumerate(schedule):
        if epoch < first:
            continue
        res = exp.run_task(BurstTask(mask, 1.0, derive_seed(exp.cfg.seed, "dissipating", epoch), start=state, keep_state=True))
        ind = Individual(mask)
        exp.assign(ind, res)
        mask = exp.mutate(ind, exp.prune_step(sparsity, final=epoch == len(schedule) - 1))
        state = res.state
        exp.log_generation(epoch, [ind], pruned_to=mask.sparsity())
        exp.checkpoint({"generation": epoch, "mask": mask, "state": state})
    if exp.cfg.final.init == "continue":
        return SearchOutcome(mask, final_start=state)
    return SearchOutcome(mask)

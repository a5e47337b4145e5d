"""Dynamic sparse training baselines: RigL (regrow by gradient) and SET (regrow at random).

Neither searches: the dynamic run *is* the final training. The method returns the random mask at
the target (masks.budget, ERK by default; the very mask `random` trains, so `rigl − random` is
what the updates add) and a `DynamicSpec`; the runner's final training — final.epochs (+
search.params.extra_epochs) from θ0, through the evaluator like every task — updates the mask every
ΔT steps until T_end, and the last mask is the one saved, reported and priced. Search compute is
0, so a `rigl` run costs one sparse training run (RigL's own accounting); the same total training
as `gmp` (search.dg.epochs + final.epochs) is `search.params.extra_epochs: <search.dg.epochs>`,
which is how the study files compare them. There is nothing to continue from, so final.init is
moot (as for `random`). The per-layer densities of the starting mask are kept exactly.
"""
from __future__ import annotations

from evo_pai.core.individual import derive_seed
from evo_pai.core.registry import register_method
from evo_pai.training.drop_grow import DynamicSpec, Grow
from evo_pai.search.experiment import Experiment, SearchOutcome


def dynamic_outcome(exp: Experiment, grow: Grow) -> SearchOutcome:
    cfg = exp.cfg
    d = cfg.search.dst
    spec = DynamicSpec(grow=grow, drop_fraction=d.drop_fraction, interval_epochs=d.interval_epochs,
                       end_fraction=d.end_fraction, anneal=d.anneal, output_layer=exp.output_layer,
                       min_output_fan_in=cfg.masks.min_output_fan_in)
    mask = exp.random_mask(cfg.search.sparsity, derive_seed(cfg.seed, "random"))
    return SearchOutcome(mask, dynamic=spec, extra={"initial_mask": mask.hash()})


DYNAMIC = {"plan": lambda cfg: (0, None), "params": {}, "reads": ("search.dst",)}  # no search: it all happens in the final training


@register_method("rigl", "RigL: a random mask trained while dropping the smallest |w| and regrowing the largest |g|", **DYNAMIC)
def rigl(exp: Experiment) -> SearchOutcome:
    return dynamic_outcome(exp, "gradient")


@register_method("set", "SET: a random mask trained while dropping the smallest |w| and regrowing at random", **DYNAMIC)
def sparse_evolutionary_training(exp: Experiment) -> SearchOutcome:
    return dynamic_outcome(exp, "random")

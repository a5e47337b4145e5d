"""The trivial references: the dense network and a random mask at the target sparsity."""
from __future__ import annotations

from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.core.individual import derive_seed
from evo_pai.core.registry import register_method


NO_SEARCH = {"plan": lambda cfg: (0, None), "params": {}, "reads": ()}  # trained by the final recipe alone


@register_method("dense", "no pruning: the unpruned network trained with the final recipe", sparse=False, **NO_SEARCH)
def dense(exp: Experiment) -> SearchOutcome:
    return SearchOutcome(exp.dense_mask())


@register_method("random", "one random mask at the target sparsity (layer budget from masks.budget)", **NO_SEARCH)
def random_mask(exp: Experiment) -> SearchOutcome:
    return SearchOutcome(exp.random_mask(exp.cfg.search.sparsity, derive_seed(exp.cfg.seed, "random")))

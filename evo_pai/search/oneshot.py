"""One-shot pruning at initialization: score θ0 once (SynFlow: iteratively), keep the best weights.

Methods `magnitude`, `snip`, `grasp`, `synflow` (`random` lives in baselines.py). Options in
`search.params`: `examples` (scoring examples for data-dependent pruners, default 1280),
`budget` (override masks.budget for the ranking: erk, uniform or global), `iterations`
(SynFlow rounds, default 100), and any keyword the scorer takes (`batch_size`, `temperature`).
Equal-epoch controls use `search.params.extra_epochs` (read by the runner, any method).
"""
from __future__ import annotations

import inspect

import torch

from evo_pai.core.errors import EvoPaiError
from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.core.individual import derive_seed
from evo_pai.data.batches import examples
from evo_pai.operators.pruners import ScoreContext, prune
from evo_pai.core.registry import COMMON_PARAMS, PRUNER, register_method

RUNNER_KEYS = tuple(COMMON_PARAMS)  # search.params read by the runner, not by the scorer
ONE_SHOT_PARAMS = {"examples": "scoring examples for data-dependent pruners, default 1280",
                   "budget": "the ranking's layer budget (erk, uniform or global), default masks.budget"}


def score_context(exp: Experiment, count: int) -> ScoreContext:
    """θ0 and a seeded random sample of `count` training examples, in the model's dtype."""
    if count < 1:
        raise EvoPaiError(f"search.params.examples: must be at least 1, got {count}")
    gen = torch.Generator().manual_seed(derive_seed(exp.cfg.seed, "prune-batch"))
    idx = torch.randperm(exp.data.n_train, generator=gen)[:count]
    dtype = next(exp.model.parameters()).dtype
    x, y = examples(exp.data, idx)
    return ScoreContext(exp.model, list(exp.shapes), x.to(dtype), y,
                        torch.Generator().manual_seed(derive_seed(exp.cfg.seed, "prune-random")))


def one_shot(exp: Experiment, pruner: str) -> SearchOutcome:
    params = {k: v for k, v in exp.cfg.search.params.items() if k not in RUNNER_KEYS}
    examples = int(params.pop("examples", 1280))
    budget = params.pop("budget", exp.cfg.masks.budget)
    if budget not in ("erk", "uniform", "global"):
        raise EvoPaiError(f"search.params.budget: '{budget}' is not erk, uniform or global")
    m = exp.cfg.masks
    ctx = score_context(exp, examples)
    mask = prune(pruner, ctx, exp.dense_mask(), exp.cfg.search.sparsity, budget, m.min_output_fan_in,
                 m.allow_empty_layers, params)
    return SearchOutcome(mask, extra={"pruner": pruner, "prune_budget": budget, "scoring_examples": len(ctx.y)})


def scorer_params(pruner: str) -> dict[str, str]:
    """The search.params a one-shot method reads: its own, then the keywords the scorer takes."""
    scorer = PRUNER.get(pruner)
    own = dict(ONE_SHOT_PARAMS, **({"iterations": "pruning rounds, default 100"} if getattr(scorer, "iterative", False) else {}))
    sig = list(inspect.signature(scorer).parameters.values())[2:]  # (ctx, mask, **params)
    return {**own, **{p.name: f"the scorer's keyword, default {p.default}" for p in sig if p.default is not p.empty}}


def _register(name: str, description: str) -> None:
    register_method(name, description, plan=lambda cfg: (0, None), params=scorer_params(name), reads=())(
        lambda exp: one_shot(exp, name))


_register("magnitude", "one-shot: keep the largest |θ0| (layer budget from masks.budget)")
_register("snip", "one-shot SNIP at θ0: keep the largest |g ⊙ θ0| on search.params.examples examples")
_register("grasp", "one-shot GraSP at θ0: keep the largest θ0 ⊙ Hg (gradient-flow preserving)")
_register("synflow", "iterative SynFlow: data-free path-norm scores, 100 rounds on an exponential schedule")

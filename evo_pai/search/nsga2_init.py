"""Generation 0 of nsga2: members spread over the density grid (search.nsga2.init).

- `gradual` (default): one network from θ0, trained `init_epochs` in `init_steps` chunks and pruned
  after each chunk on gmp's cubic schedule down to the sparsest level; each level gets its mask
  when the trajectory passes it (the prune mutation applied to the weights trained so far). One
  trajectory's compute for every level, instead of one gmp run per sparsity.
- `magnitude`: one dense burst of `init_epochs`; every level prunes its trained weights one-shot.
- `random`: random masks at each level (pure pruning at initialisation).
Members beyond one per level repeat the levels; a repeated mask gets a small random swap.
"""
from __future__ import annotations

import torch

from ..budgets import cubic_schedule
from ..individual import Individual, derive_seed
from ..masks import MaskSet
from ..training.tasks import BurstTask
from .experiment import Experiment


def draw(weights: dict[str, float], generator: torch.Generator) -> str:
    names = [k for k, w in weights.items() if w > 0]
    probs = torch.tensor([float(weights[k]) for k in names], dtype=torch.float64)
    return names[int(torch.multinomial(probs, 1, generator=generator))]


def prune_to_level(exp: Experiment, parent: Individual, name: str, sparsity: float) -> MaskSet:
    params = {**exp.mutation_params(name), **exp.cfg.search.nsga2.mutation_params.get(name, {})}
    return exp.mutate(parent, exp.prune_step(sparsity, final=True, target=sparsity), name, params)


def gradual_masks(exp: Experiment, levels: list[float]) -> dict[float, MaskSet]:
    n = exp.cfg.search.nsga2
    ramp = cubic_schedule(0.0, levels[-1], n.init_steps)
    mask, state, out, passed = exp.dense_mask(), None, {}, 0
    for e, s in enumerate(ramp):
        res = exp.run_task(BurstTask(mask, n.init_epochs / n.init_steps, derive_seed(exp.cfg.seed, "nsga2-gradual", e),
                                     start=state, keep_state=True))
        ind, state = Individual(mask, res.traits), res.state
        last = e == len(ramp) - 1
        while passed < len(levels) and (levels[passed] <= s + 1e-12 or last):
            out[levels[passed]] = prune_to_level(exp, ind, draw(n.prune_mutations, exp.generator), levels[passed])
            passed += 1
        # Carry on from the deepest level passed, or prune to the schedule when none was passed here.
        mask = out[levels[passed - 1]] if passed and levels[passed - 1] >= s - 1e-12 else \
            prune_to_level(exp, ind, draw(n.prune_mutations, exp.generator), s)
    return out


def magnitude_masks(exp: Experiment, levels: list[float]) -> dict[float, MaskSet]:
    n = exp.cfg.search.nsga2
    dense = Individual(exp.dense_mask())
    dense.traits = exp.run_task(BurstTask(dense.mask, n.init_epochs, derive_seed(exp.cfg.seed, "nsga2-dense"))).traits
    return {s: prune_to_level(exp, dense, draw(n.prune_mutations, exp.generator), s) for s in levels}


def initial_population(exp: Experiment, levels: list[float], objectives: int) -> list[Individual]:
    s = exp.cfg.search
    targets = [levels[i % len(levels)] for i in range(s.population)]
    if s.nsga2.init == "random":
        masks = [exp.random_mask(t, derive_seed(exp.cfg.seed, "nsga2", i)) for i, t in enumerate(targets)]
    else:
        by_level = gradual_masks(exp, levels) if s.nsga2.init == "gradual" else magnitude_masks(exp, levels)
        masks, seen = [], set()
        for t in targets:
            m = by_level[t]
            if m.hash() in seen:  # a second member at this level: a small random swap makes it new
                m = exp.mutate(Individual(m), exp.prune_step(t, True, t), "random_swap", {"fraction": 0.05})
            seen.add(m.hash())
            masks.append(m)
    pop = [Individual(m, objectives=objectives) for m in masks]
    for ind in pop:
        ind.origin = "init"
    return pop


def init_tasks(cfg) -> int:
    """Training tasks generation 0 runs before its members' bursts (for the progress bar)."""
    n = cfg.search.nsga2
    return {"gradual": n.init_steps, "magnitude": 1, "random": 0}[n.init]

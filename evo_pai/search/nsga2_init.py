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

from evo_pai.core.budgets import cubic_schedule
from evo_pai.core.individual import Individual, derive_seed
from evo_pai.core.masks import MaskSet
from evo_pai.training.carry import Carry
from evo_pai.training.tasks import BurstTask
from evo_pai.search.experiment import Experiment


def draw(weights: dict[str, float], generator: torch.Generator) -> str:
    names = [k for k, w in weights.items() if w > 0]
    probs = torch.tensor([float(weights[k]) for k in names], dtype=torch.float64)
    return names[int(torch.multinomial(probs, 1, generator=generator))]


def prune_to_level(exp: Experiment, parent: Individual, name: str, sparsity: float) -> MaskSet:
    params = {**exp.mutation_params(name), **exp.cfg.search.nsga2.mutation_params.get(name, {})}
    return exp.mutate(parent, exp.prune_step(sparsity, final=True, target=sparsity), name, params)


def trunk_steps(exp: Experiment) -> int:
    """Optimizer steps of generation 0's training before the members' bursts."""
    n = exp.cfg.search.nsga2
    if n.init == "random":
        return 0
    return exp.steps(n.init_epochs) if n.init == "magnitude" else n.init_steps * exp.steps(n.init_epochs / n.init_steps)


def lineage_horizon(exp: Experiment) -> int:
    """The learning-rate schedule's length: the trunk, and with inheritance the generations' bursts on it."""
    s = exp.cfg.search
    return trunk_steps(exp) + (s.generations * exp.steps(s.burst_epochs) if s.inherit == "parent" else 0)


def gradual_masks(exp: Experiment, levels: list[float]) -> tuple[dict[float, MaskSet], dict[float, Carry]]:
    """(mask per level, the trajectory's trained state when it passed that level)."""
    n, keep = exp.cfg.search.nsga2, exp.cfg.search.optimizer_state == "keep"
    ramp = cubic_schedule(0.0, levels[-1], n.init_steps)
    chunk = n.init_epochs / n.init_steps
    mask, state, opt, steps, out, carries, passed = exp.dense_mask(), None, None, 0, {}, {}, 0
    for e, s in enumerate(ramp):
        # As gmp: one network and (optimizer_state: keep) one optimizer across the pruning steps.
        task = BurstTask(mask, chunk, derive_seed(exp.cfg.seed, "nsga2-gradual", e), start=state, keep_state=True,
                         opt_state=opt if keep else None, offset=steps if keep else 0,
                         horizon=lineage_horizon(exp) if keep else None)
        res = exp.run_task(task)
        ind, state, opt, steps = Individual(mask, res.traits), res.state, res.opt_state, task.offset + res.steps
        last = e == len(ramp) - 1
        while passed < len(levels) and (levels[passed] <= s + 1e-12 or last):
            out[levels[passed]] = prune_to_level(exp, ind, draw(n.prune_mutations, exp.generator), levels[passed])
            carries[levels[passed]] = Carry(state, opt if keep else None, steps if keep else 0)
            passed += 1
        # Carry on from the deepest level passed, or prune to the schedule when none was passed here.
        mask = out[levels[passed - 1]] if passed and levels[passed - 1] >= s - 1e-12 else \
            prune_to_level(exp, ind, draw(n.prune_mutations, exp.generator), s)
    return out, carries


def magnitude_masks(exp: Experiment, levels: list[float]) -> tuple[dict[float, MaskSet], dict[float, Carry]]:
    n = exp.cfg.search.nsga2
    dense = Individual(exp.dense_mask())
    res = exp.run_task(BurstTask(dense.mask, n.init_epochs, derive_seed(exp.cfg.seed, "nsga2-dense"), keep_state=True))
    dense.traits = res.traits
    carry = Carry(res.state, res.opt_state, res.steps)
    return {s: prune_to_level(exp, dense, draw(n.prune_mutations, exp.generator), s) for s in levels}, \
        {s: carry for s in levels}


def initial_population(exp: Experiment, levels: list[float], objectives: int) -> list[Individual]:
    s = exp.cfg.search
    targets = [levels[i % len(levels)] for i in range(s.population)]
    if s.nsga2.init == "random":
        masks = [exp.random_mask(t, derive_seed(exp.cfg.seed, "nsga2", i)) for i, t in enumerate(targets)]
    else:
        by_level, carries = gradual_masks(exp, levels) if s.nsga2.init == "gradual" else magnitude_masks(exp, levels)
        masks, seen = [], set()
        for t in targets:
            m = by_level[t]
            if m.hash() in seen:  # a second member at this level: a small random swap makes it new
                m = exp.swap(Individual(m), t)
            seen.add(m.hash())
            masks.append(m)
    pop = [Individual(m, objectives=objectives) for m in masks]
    for ind, t in zip(pop, targets):
        ind.origin = "init"
        if s.inherit == "parent" and s.nsga2.init != "random":  # members train on from the trajectory
            ind.carry = carries[t]
    return pop


def init_tasks(cfg) -> int:
    """Training tasks generation 0 runs before its members' bursts (for the progress bar)."""
    n = cfg.search.nsga2
    return {"gradual": n.init_steps, "magnitude": 1, "random": 0}[n.init]

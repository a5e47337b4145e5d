"""The combination: a DEAP-style evolutionary loop over masks with DG as the mutation.

Generation g evaluates a population at sparsity s_g (s_0 = p, then `search.schedule` to the target).
Between generations: elites are kept, parents are selected and mated (layerwise crossover),
and every survivor is mutated by the sparsity-advancing operator to s_{g+1}.

`search.inherit: rewind` trains every generation from θ0 (the paper's loop: what a generation
learns is thrown away). `parent` is population-based training for masks: a child trains its burst
from its parent's trained weights and optimizer state under its own mask (a crossover child takes
each layer from the parent whose mask layer it took), so progress accumulates and a generation
still costs one burst per member. The learning-rate schedule spans the whole search.
"""
from __future__ import annotations

import math

import torch
from deap import tools

from evo_pai.core.budgets import sparsity_schedule
from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.core.individual import Individual
from evo_pai.core.registry import CHECKED_FIELDS, SELECTION, register_method
from evo_pai.search.kstarts import kstarts_population, winner_outcome


def initial_sparsity(exp: Experiment) -> float:
    """p: a number, `sqrt` (1 - sqrt(1 - s): half the target's log-density), `{fraction: f}` (f * s),
    or None (0.5 * s)."""
    s = exp.cfg.search
    p = s.initial_sparsity
    if p is None:
        return 0.5 * s.sparsity
    if p == "sqrt":
        return 1.0 - math.sqrt(1.0 - s.sparsity)
    if isinstance(p, (int, float)):
        return float(p)
    return p.fraction * s.sparsity


def next_generation(exp: Experiment, population: list[Individual], sparsity: float, final: bool) -> list[Individual]:
    s = exp.cfg.search
    elites = [ind.clone() for ind in tools.selBest(population, min(s.elite, len(population)))]
    select = SELECTION.get(s.selection)
    params = {"tournament_size": s.tournament_size} if s.selection == "tournament" else {}
    offspring = [ind.clone() for ind in select(population, len(population) - len(elites), **params)]
    for i in range(1, len(offspring), 2):
        if float(torch.rand((), generator=exp.generator)) < s.crossover_prob:
            a, b = offspring[i - 1], offspring[i]
            offspring[i - 1], offspring[i] = exp.crossover(a, b)
            for child, parent in ((offspring[i - 1], a), (offspring[i], b)):
                if child.carry is None:  # a crossover that knows nothing of inheritance: its first parent's state
                    child.carry = parent.carry
    step = exp.prune_step(sparsity, final)
    children: list[Individual] = []
    seen: set[str] = set()
    for ind in elites + offspring:
        child = Individual(exp.mutate(ind, step), ind.traits)
        child.origin = "elite" if ind in elites else ind.origin if ind.origin == "crossover" else "mutation"
        explore = child.key in seen or float(torch.rand((), generator=exp.generator)) < s.explore_prob
        if child.origin != "elite" and s.explore_mutation and explore:
            child = Individual(exp.mutate(child, step, s.explore_mutation, s.explore_params), ind.traits)
            child.origin = "explore"
        seen.add(child.key)
        children.append(Individual(child.mask))
        children[-1].origin = child.origin
        children[-1].carry = ind.carry  # used only under inheritance: the parent's trained state
    return children


@register_method("combined", "K-starts population + DG mutation in an evolutionary loop (the paper's combination)",
                 plan=lambda cfg: (cfg.search.population * cfg.search.generations, cfg.search.generations),
                 params={}, evolutionary=True,
                 reads=CHECKED_FIELDS + ("search.population", "search.generations", "search.burst_epochs", "search.dg",
                                         "search.schedule", "search.initial_sparsity", "search.elite", "search.inherit"))
def combined(exp: Experiment) -> SearchOutcome:
    s = exp.cfg.search
    p = initial_sparsity(exp) if s.generations > 1 else s.sparsity  # one generation: K-starts at target
    schedule = [p] + sparsity_schedule(s.schedule, p, s.sparsity, s.generations - 1)
    inherit = s.inherit == "parent"
    horizon = s.generations * exp.steps(s.burst_epochs) if inherit else None
    state = exp.resume_state
    if state is None:
        population = kstarts_population(exp, p)
        start = 0
    else:
        population, start = state["population"], state["generation"] + 1
    for g in range(start, s.generations):
        exp.evaluate(population, inherit=inherit, horizon=horizon)
        exp.log_generation(g, population, target=schedule[g])
        if g == s.generations - 1:
            break
        population = next_generation(exp, population, schedule[g + 1], final=g + 1 == s.generations - 1)
        exp.checkpoint({"population": population, "generation": g})
    best = max(range(len(population)), key=lambda i: (population[i].fitness.values[0], -i))
    return winner_outcome(exp, population[best], final_population=len(population), winner_index=best)

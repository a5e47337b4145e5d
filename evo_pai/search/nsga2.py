"""NSGA-II over masks of many densities: the accuracy–sparsity front in one search.

Generation 0 spreads `search.population` members over the density grid (`search.nsga2.levels`),
by default from one gradual-magnitude trajectory that passes every level (search/nsga2_init.py).
Every later generation makes one child per member: a parent picked by a crowded binary tournament
(lower non-domination rank, then larger crowding distance) is moved on the grid by one mutation —
prune (1..max_move levels sparser, a mutation drawn from `prune_mutations`, e.g. magnitude and the
structured `neuron` mixed), grow (denser, `grow_mutation`) or swap (same density,
`swap_mutation`). Children are burst-trained (from θ0, or with `search.inherit: parent` from their
parent's trained state) and scored exactly as in the single-objective methods (fitness of the burst through the evaluator); parents and children together (each mask
once) are cut back to the population size by DEAP's `selNSGA2` (non-dominated sorting, crowding
distance). The answer is the last population's non-dominated front; the runner trains the
members `final.members` picks.
"""
from __future__ import annotations

import torch
from deap import tools

from evo_pai.core.individual import Individual
from evo_pai.core.registry import register_method
from evo_pai.search.experiment import Experiment, SearchOutcome, level
from evo_pai.search.nsga2_init import draw, init_tasks, initial_population, lineage_horizon, prune_to_level
from evo_pai.search.objectives import Costs, density_levels, preflight


def inherits(exp: Experiment) -> bool:
    return exp.cfg.search.inherit == "parent"


def evaluate(exp: Experiment, individuals: list[Individual], costs: Costs) -> None:
    """Bursts for the members not yet scored, then their objectives. `inherit: rewind`: every member
    trains from θ0 (pruning at initialisation), as in kstarts and combined. `parent`: a member continues
    its parent's trained weights and optimizer state under its own mask (generation 0: the init
    trajectory's state where it passed the member's level); the learning-rate schedule spans the
    trajectory and the generations."""
    inherit = inherits(exp)
    exp.evaluate([ind for ind in individuals if not ind.fitness.valid], inherit=inherit,
                 horizon=lineage_horizon(exp) if inherit else None, fitness=exp.cfg.search.nsga2.objectives[0],
                 costs=costs)


def rank_and_crowd(population: list[Individual]) -> dict[int, int]:
    """Non-domination rank per individual (by id), and DEAP's crowding distance on its fitness."""
    rank: dict[int, int] = {}
    for r, front in enumerate(tools.sortNondominated(population, len(population))):
        tools.emo.assignCrowdingDist(front)
        for ind in front:
            rank[id(ind)] = r
    return rank


def _tournament(population: list[Individual], rank: dict[int, int], generator: torch.Generator) -> Individual:
    i, j = torch.randint(len(population), (2,), generator=generator).tolist()
    order = lambda k: (rank[id(population[k])], -population[k].fitness.crowding_dist, k)  # noqa: E731
    return population[min(i, j, key=order)]


def nearest_level(levels: list[float], sparsity: float) -> int:
    return min(range(len(levels)), key=lambda i: (abs(levels[i] - sparsity), i))


def move(exp: Experiment, parent: Individual, levels: list[float], how: str | None = None) -> tuple[str, str, float]:
    """(move, mutation name, target sparsity) for one child; a move off the grid's end turns around."""
    n, gen = exp.cfg.search.nsga2, exp.generator
    how = how or draw(n.moves, gen)
    at = nearest_level(levels, level(parent))
    step = 1 + int(torch.randint(n.max_move, (1,), generator=gen))
    if how == "prune" and at == len(levels) - 1 or how == "grow" and at == 0:
        flipped = "grow" if how == "prune" else "prune"
        how = flipped if n.moves.get(flipped, 0) > 0 and len(levels) > 1 else "swap"
    if how == "prune":
        return how, draw(n.prune_mutations, gen), levels[min(len(levels) - 1, at + step)]
    if how == "grow":
        return how, n.grow_mutation, levels[max(0, at - step)]
    return how, n.swap_mutation, levels[at]


def make_child(exp: Experiment, parent: Individual, levels: list[float], seen: set[str], how: str | None = None) -> Individual:
    kind, name, sparsity = move(exp, parent, levels, how)
    child = Individual(prune_to_level(exp, parent, name, sparsity), objectives=parent.objectives)
    child.origin = f"{kind}:{name}"
    child.carry = parent.carry  # used only under inheritance: the parent's trained state
    if child.key in seen:  # deterministic operators repeat themselves: a random swap makes it new
        child = Individual(exp.swap(parent if kind == "swap" else Individual(child.mask, parent.traits), sparsity),
                           objectives=parent.objectives)
        child.origin = f"{kind}:{name}+explore"
        child.carry = parent.carry
    seen.add(child.key)
    return child


def final_front(population: list[Individual]) -> list[Individual]:
    """The non-dominated members by sparsity; of members with equal objectives (neither dominates) one is kept."""
    front = tools.sortNondominated(population, len(population), first_front_only=True)[0]
    unique: dict[tuple, Individual] = {}
    for ind in sorted(front, key=lambda i: (level(i), i.key)):
        unique.setdefault(tuple(ind.fitness.values), ind)
    return list(unique.values())


def front_record(front: list[Individual], names: list[str]) -> list[dict]:
    rows = []
    for ind in sorted(front, key=level):
        row = {"sparsity": round(level(ind), 6), "val_accuracy": ind.metrics.get("val_accuracy")}
        row.update({n: ind.metrics.get(n) for n in names[1:]})
        rows.append(row)
    return rows


def nsga2_plan(cfg) -> tuple[int, int]:
    """Generation 0's trajectory, then one burst per member and generation."""
    s = cfg.search
    reference = len(density_levels(cfg)) if cfg.masks.granularity == "channel" else 0  # uniform_reference's bursts
    return s.population * s.generations + init_tasks(cfg) + reference, s.generations


@register_method("nsga2", "NSGA-II over many densities: the accuracy-sparsity front in one search (search.nsga2)",
                 plan=nsga2_plan, params={}, preflight=preflight, members=True, evolutionary=True,
                 reads=("search.nsga2", "search.population", "search.generations", "search.burst_epochs", "search.inherit"))
def nsga2(exp: Experiment) -> SearchOutcome:
    s = exp.cfg.search
    names = list(s.nsga2.objectives)
    levels = density_levels(exp.cfg)
    costs = Costs(exp, names[1:])
    state = exp.resume_state
    if state is None:
        population, start = initial_population(exp, levels, len(names)), 0
        evaluate(exp, population, costs)
    else:
        population, start = state["population"], state["generation"] + 1
    if start == 0:
        rank_and_crowd(population)
        _log(exp, 0, population, names, evaluated=len(population))
        exp.checkpoint({"population": population, "generation": 0})
        start = 1
    for g in range(start, s.generations):
        rank = rank_and_crowd(population)
        seen = {ind.key for ind in population}
        children = [make_child(exp, _tournament(population, rank, exp.generator), levels, seen) for _ in population]
        evaluate(exp, children, costs)
        population = tools.selNSGA2(population + children, s.population)
        rank_and_crowd(population)
        _log(exp, g, population, names, evaluated=len(children),
             moves={k: sum(c.origin.startswith(k) for c in children) for k in ("prune", "grow", "swap")})
        exp.checkpoint({"population": population, "generation": g})
    front = final_front(population)
    head = min(front, key=lambda i: (abs(level(i) - s.sparsity), level(i)))
    extra = {"objectives": names, "levels": levels, "front_size": len(front)}
    if exp.channels:  # the width multiplier at every level, after the same burst: the curve to beat
        extra["uniform_reference"] = uniform_reference(exp, levels, costs, len(names))
    return SearchOutcome(head.mask, members=front, extra=extra)


def uniform_reference(exp: Experiment, levels: list[float], costs: Costs, objectives: int) -> list[dict]:
    """Channel masks: every group at one fraction at each level, burst-trained from θ0 like a member
    of generation 0 and costed like the members (rows for front.png and summary.json)."""
    from evo_pai.search.channel_mode import uniform_channel_mask

    s, m = exp.structure, exp.cfg.masks
    first = {g.id: -torch.arange(g.channels, dtype=torch.float64) for g in s.free}  # the first channels
    people = [Individual(uniform_channel_mask(s, lv, first, m.macs_tolerance, m.min_channels, exp.output_layer)[0],
                         objectives=objectives) for lv in levels]
    exp.evaluate(people, fitness=exp.cfg.search.nsga2.objectives[0], costs=costs)
    names = exp.cfg.search.nsga2.objectives[1:]
    return [{"sparsity": level(ind), "val_accuracy": ind.metrics.get("val_accuracy"),
             **{n: ind.metrics.get(n) for n in names}} for ind in people]


def _log(exp: Experiment, g: int, population: list[Individual], names: list[str], **extra) -> None:
    front = tools.sortNondominated(population, len(population), first_front_only=True)[0]
    exp.log_generation(g, population, front=front_record(front, names), **extra)


"""K lineages side by side: `independent` (the control: no selection until the end) and `pbt`
(exploit / explore over hyperparameter genes, Jaderberg et al. 2017 with Ray Tune's rules).

Both follow `combined`'s generational loop with inheritance (configs/best_fmnist.yaml): generation 0
is K random masks at p; every generation each member trains one burst from its own trained weights
and optimizer state, then is pruned by search.mutation to the next step of the schedule and sometimes
explored (search.explore_mutation) — but a lineage's child comes from that lineage only: no
tournament, no crossover, no elite. K lineages x G generations cost what a population of K over G
generations costs. The winner is the member of the last generation with the best validation accuracy.

`pbt` adds, every `search.pbt.interval` generations, the exploit step (operators/hyperparams.py): the
bottom quantile by validation accuracy each copy a top member's mask, trained weights, optimizer
state, schedule position and genes, then perturb or resample the genes. Genes (Individual.hparams)
set the member's bursts (lr scale, weight decay: BurstTask fields every backend honours), its
exploration (explore_fraction) and its own pruning schedule (schedule_exponent). The final training
uses the winner's lr scale and weight decay.
"""
from __future__ import annotations

import inspect

import torch

from evo_pai.core.budgets import sparsity_schedule
from evo_pai.core.config import Config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.registry import MUTATION, register_method
from evo_pai.operators.hyperparams import Gene, exploit_pairs, explore, parse_genes
from evo_pai.search.combined import initial_sparsity
from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.search.kstarts import kstarts_population, winner_outcome

RANK = "val_accuracy"  # lineages are ranked (exploit) and picked (winner) by validation accuracy
_EXPONENT = {"cubic": 3.0, "linear": 1.0}  # the polynomial schedules schedule_exponent generalises
READS = ("search.mutation", "search.explore", "search.population", "search.generations", "search.burst_epochs",
         "search.schedule", "search.initial_sparsity", "search.inherit")


def recipe_value(cfg: Config, gene: str) -> float:
    """A gene's value in the recipe: where a member starts unless search.pbt.initial is `sample`."""
    s = cfg.search
    if gene == "lr_scale":
        return 1.0
    if gene == "weight_decay":
        return float(cfg.train.weight_decay)
    if gene == "schedule_exponent":
        return _EXPONENT[s.schedule]
    default = inspect.signature(MUTATION.get(s.explore_mutation)).parameters["fraction"].default
    return float(s.explore_params.get("fraction", default))


def check_genes(cfg: Config) -> list[Gene]:
    """search.pbt's genes, checked against the recipe they act on (one line naming the field and the fix)."""
    s = cfg.search
    genes = parse_genes(s.pbt.genes)
    names = {g.name for g in genes}
    if "schedule_exponent" in names and s.schedule not in _EXPONENT:
        raise EvoPaiError(f"search.pbt.genes.schedule_exponent: search.schedule '{s.schedule}' has no exponent; "
                          "set search.schedule to cubic or linear, or drop the gene")
    if "explore_fraction" in names:
        fn = MUTATION.get(s.explore_mutation) if s.explore_mutation in MUTATION else None
        if fn is None or "fraction" not in inspect.signature(fn).parameters:
            raise EvoPaiError(f"search.pbt.genes.explore_fraction: search.explore_mutation '{s.explore_mutation}' "
                              "takes no fraction; set it to regrow or random_swap, or drop the gene")
    return genes


def preflight_pbt(cfg: Config) -> None:
    check_genes(cfg)
    if cfg.search.inherit != "parent":
        raise EvoPaiError("search.inherit: pbt's exploit copies trained weights and optimizer state; "
                          "set search.inherit: parent")


def schedule_level(cfg: Config, p: float, g: int, exponent: float) -> float:
    """Sparsity at generation g (>= 1) of a schedule s + (p - s)(1 - g/(G-1))^e: `cubic_schedule` for e = 3."""
    s = cfg.search
    return s.sparsity + (p - s.sparsity) * (1.0 - g / (s.generations - 1)) ** exponent


def advance(exp: Experiment, population: list[Individual], levels: list[float], g: int, p: float,
            schedule: list[float]) -> tuple[list[Individual], list[float]]:
    """Each lineage's child: its parent pruned to the lineage's next level, explored like combined's children."""
    s = exp.cfg.search
    final = g + 1 == s.generations - 1
    children, new_levels, seen = [], [], set()
    for ind, level in zip(population, levels):
        hp = ind.hparams or {}
        nxt = schedule[g + 1] if "schedule_exponent" not in hp else schedule_level(exp.cfg, p, g + 1, hp["schedule_exponent"])
        nxt = s.sparsity if final else max(level, nxt)  # a perturbed exponent never un-prunes
        step = exp.prune_step(nxt, final)
        child = Individual(exp.mutate(ind, step))
        child.origin = "mutation"
        if s.explore_mutation and (child.key in seen or float(torch.rand((), generator=exp.generator)) < s.explore_prob):
            params = s.explore_params if "explore_fraction" not in hp else {**s.explore_params, "fraction": hp["explore_fraction"]}
            child = Individual(exp.mutate(Individual(child.mask, ind.traits), step, s.explore_mutation, params))
            child.origin = "explore"
        seen.add(child.key)
        child.carry, child.hparams = ind.carry, None if ind.hparams is None else dict(ind.hparams)
        children.append(child)
        new_levels.append(nxt)
    return children, new_levels


def exploit(exp: Experiment, population: list[Individual], levels: list[float], pairs: list[tuple[int, int]],
            genes: list[Gene]) -> None:
    """Bottom member i becomes a copy of top member j (mask, weights, optimizer state, steps, traits,
    level, genes), its genes then explored."""
    pbt = exp.cfg.search.pbt
    for i, j in pairs:
        copy = population[j].clone()
        copy.origin = "exploit"
        if genes:
            copy.hparams = explore(copy.hparams, genes, tuple(pbt.perturb_factors), pbt.resample_probability,
                                   exp.generator)
        population[i], levels[i] = copy, levels[j]


def lineages(exp: Experiment, pbt: bool) -> SearchOutcome:
    s = exp.cfg.search
    p = initial_sparsity(exp) if s.generations > 1 else s.sparsity
    schedule = [p] + sparsity_schedule(s.schedule, p, s.sparsity, s.generations - 1)
    inherit = s.inherit == "parent"
    horizon = s.generations * exp.steps(s.burst_epochs) if inherit else None
    genes = check_genes(exp.cfg) if pbt else []
    state = exp.resume_state
    if state is None:
        population, levels, start = kstarts_population(exp, p), [p] * s.population, 0
        for ind in population if genes else ():
            ind.hparams = {g.name: g.sample(exp.generator) if s.pbt.initial == "sample" else recipe_value(exp.cfg, g.name)
                           for g in genes}
    else:
        population, levels, start = state["population"], state["levels"], state["generation"] + 1
    exploits = 0
    for g in range(start, s.generations):
        exp.evaluate(population, inherit=inherit, horizon=horizon, fitness=RANK)
        last = g == s.generations - 1
        due = pbt and not last and (g + 1) % s.pbt.interval == 0
        pairs = exploit_pairs([ind.fitness.values[0] for ind in population], s.pbt.quantile, exp.generator) if due else []
        extra = {"hparams": {n.name: [ind.hparams[n.name] for ind in population] for n in genes}} if genes else {}
        exp.log_generation(g, population, target=schedule[g], levels=list(levels),
                           val_accuracy=[ind.metrics.get("val_accuracy") for ind in population],
                           **extra, **({"exploit": [list(x) for x in pairs]} if pbt else {}))
        if last:
            break
        exploit(exp, population, levels, pairs, genes)
        exploits += len(pairs)
        population, levels = advance(exp, population, levels, g, p, schedule)
        exp.checkpoint({"population": population, "levels": levels, "generation": g})
    best = max(range(len(population)), key=lambda i: (population[i].fitness.values[0], -i))
    winner = population[best]
    outcome = winner_outcome(exp, winner, final_population=len(population), winner_index=best,
                             **({"winner_hparams": winner.hparams} if genes else {}))
    hp = winner.hparams or {}
    outcome.final_lr_scale, outcome.final_weight_decay = hp.get("lr_scale", 1.0), hp.get("weight_decay")
    return outcome


def _plan(cfg):
    return cfg.search.population * cfg.search.generations, cfg.search.generations


@register_method("independent", "K lineages with combined's schedule and inheritance, no selection; best by validation",
                 plan=_plan, params={}, reads=READS)
def independent(exp: Experiment) -> SearchOutcome:
    return lineages(exp, pbt=False)


@register_method("pbt", "K lineages; every search.pbt.interval generations the worst copy the best and perturb genes",
                 plan=_plan, params={}, reads=READS + ("search.pbt",), preflight=preflight_pbt, evolutionary=True)
def pbt(exp: Experiment) -> SearchOutcome:
    return lineages(exp, pbt=True)

"""K-starts: k random p-sparse masks over one θ0, a short burst each, the fittest wins."""
from __future__ import annotations

from evo_pai.training.tasks import BurstTask
from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.core.individual import Individual, derive_seed
from evo_pai.core.registry import register_method


def kstarts_population(exp: Experiment, sparsity: float) -> list[Individual]:
    """search.population random masks at `sparsity`, each drawn from a seed of its own: the K-starts
    candidates (combined's generation 0, kstarts_sh's first rung and the predictiveness cells draw the same)."""
    return [Individual(exp.random_mask(sparsity, derive_seed(exp.cfg.seed, "kstarts", i)))
            for i in range(exp.cfg.search.population)]


def candidate_table(population: list[Individual]) -> list[dict]:
    return [
        {"key": ind.key[:12], "fitness": ind.fitness.values[0], "val_accuracy": ind.metrics.get("val_accuracy")}
        for ind in population
    ]


def winner_outcome(exp: Experiment, winner: Individual, **extra) -> SearchOutcome:
    """Rewind: train the winner's mask from θ0. Continue: from its trained weights and optimizer
    state — kept by an inheriting search, else got by re-running its burst (counted as training)."""
    if exp.cfg.final.init != "continue":
        return SearchOutcome(winner.mask, extra=extra)
    if winner.carry is not None:
        return SearchOutcome(winner.mask, final_start=winner.carry.weights, final_opt_state=winner.carry.opt_state,
                             extra=extra)
    replay = BurstTask(winner.mask, exp.cfg.search.burst_epochs, exp.task_seed(winner), keep_state=True)
    return SearchOutcome(winner.mask, replay=replay, extra=extra)


@register_method("kstarts", "k random masks at the target sparsity over one θ0; a burst each; the fittest wins",
                 plan=lambda cfg: (cfg.search.population, 1), params={}, evolutionary=True,
                 reads=("search.fitness", "search.population", "search.burst_epochs"))
def kstarts(exp: Experiment) -> SearchOutcome:
    s = exp.cfg.search
    population = kstarts_population(exp, s.sparsity)
    exp.evaluate(population, progress=getattr(exp, "progress", None))
    exp.log_generation(0, population)
    # argmax with ties to the first candidate: deterministic across backends
    best = max(range(len(population)), key=lambda i: (population[i].fitness.values[0], -i))
    return winner_outcome(exp, population[best], candidates=candidate_table(population), winner_index=best)

"""Successive-halving K-starts (beyond the paper): spend the burst budget on the promising masks.

The same K candidates as `kstarts` (same seeds, same masks). Rung 0 trains all K for
b / 2^(R-1) epochs (R = ceil(log2 K) rungs, b = search.burst_epochs); each later rung keeps the
fitter half and *continues* their training to twice the previous budget, so the last rung's
two candidates have trained b epochs, like every plain K-starts candidate, at a fraction of the
cost. Continuing (not restarting) is what saves compute. With `search.optimizer_state: keep` a
continuation carries the optimizer state and the batch stream, so a rung-R state equals one
uninterrupted b-epoch burst; `reset` starts a fresh optimizer and batch order per rung (v1).
"""
from __future__ import annotations

import math

from evo_pai.training.tasks import BurstTask
from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.core.individual import Individual, derive_seed
from evo_pai.core.registry import register_method
from evo_pai.search.kstarts import candidate_table, kstarts_population


def rung_budgets(k: int, burst: float) -> list[float]:
    """Cumulative epochs of each rung: ..., b/4, b/2, b (one rung when k <= 2)."""
    rungs = max(1, math.ceil(math.log2(k))) if k > 1 else 1
    return [burst / 2 ** (rungs - 1 - r) for r in range(rungs)]


def halving_plan(cfg) -> tuple[int, int]:
    """(bursts, rungs): every candidate in the first rung, the fitter half in each next one, until one is left."""
    alive, tasks, rungs = cfg.search.population, 0, 0
    for r, _ in enumerate(rung_budgets(alive, cfg.search.burst_epochs)):
        if r > 0 and alive == 1:
            break
        tasks, rungs, alive = tasks + alive, rungs + 1, max(1, alive // 2)
    return tasks, rungs


@register_method("kstarts_sh", "K-starts with successive halving: short bursts for all, longer for the fitter half",
                 plan=halving_plan, params={}, evolutionary=True,
                 reads=("search.fitness", "search.population", "search.burst_epochs", "search.optimizer_state"))
def kstarts_sh(exp: Experiment) -> SearchOutcome:
    s = exp.cfg.search
    population = kstarts_population(exp, s.sparsity)
    alive = list(range(len(population)))
    states: dict[int, dict | None] = {i: None for i in alive}
    opts: dict[int, dict | None] = {i: None for i in alive}
    keep = s.optimizer_state == "keep"
    done = {i: 0.0 for i in alive}
    spent0 = exp.evaluator.epochs_spent
    rungs = []
    for r, budget in enumerate(rung_budgets(len(population), s.burst_epochs)):
        if r > 0 and len(alive) == 1:
            break  # one remains: it is the winner
        if keep:  # one continuous run per candidate: the same batch stream and optimizer state
            tasks = [BurstTask(population[i].mask, budget - done[i], derive_seed(exp.cfg.seed, "kstarts_sh", population[i].key),
                               start=states[i], keep_state=True, opt_state=opts[i], offset=exp.steps(done[i]))
                     for i in alive]
        else:
            tasks = [BurstTask(population[i].mask, budget - done[i], derive_seed(exp.cfg.seed, "kstarts_sh", r, population[i].key),
                               start=states[i], keep_state=True) for i in alive]
        for i, res in zip(alive, exp.evaluator.evaluate(tasks, getattr(exp, "progress", None))):
            exp.assign(population[i], res)
            states[i], opts[i], done[i] = res.state, res.opt_state if keep else None, budget
        exp.log_generation(r, [population[i] for i in alive], rung_epochs=budget, candidates=len(alive))
        rungs.append({"candidates": len(alive), "epochs": budget})
        # Keep the fitter half (ties to the lower index: deterministic across backends).
        ranked = sorted(alive, key=lambda i: (-population[i].fitness.values[0], i))
        alive = sorted(ranked[: max(1, len(alive) // 2)])
    winner = min(alive, key=lambda i: (-population[i].fitness.values[0], i))
    spent = exp.evaluator.epochs_spent - spent0
    plain = len(population) * s.burst_epochs
    extra = {
        "candidates": candidate_table(population), "winner_index": winner, "rungs": rungs,
        "plain_kstarts_epochs": plain, "compute_saved_ratio": plain / spent if spent else None,
    }
    if exp.cfg.final.init == "continue":
        return SearchOutcome(population[winner].mask, final_start=states[winner], final_opt_state=opts[winner], extra=extra)
    return SearchOutcome(population[winner].mask, extra=extra)

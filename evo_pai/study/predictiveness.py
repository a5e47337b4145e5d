"""Fitness predictiveness: does a candidate's burst fitness rank it as full training would?

For chosen K-starts cells, every candidate (the very masks `kstarts` draws) gets its burst, a
score from every registered fitness function, and the study's full final training (rewound to
θ0, the seed the winner would get). Spearman's rank correlation between each fitness and the
final test accuracy, per cell, says whether selecting after a burst beats picking at random.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from evo_pai.core.config import Config
from evo_pai.study.grid import StudySpec, cell_config, methods_of, write_csv

GROUP_FIELDS = ["sparsity", "seed", "candidate", "burst_val_accuracy", "final_test_accuracy", "final_val_accuracy"]


@dataclass(frozen=True)
class Group:
    sparsity: float
    seed: int
    cfg: Config
    fitnesses: tuple[str, ...]

    @property
    def dirname(self) -> str:
        from evo_pai.runs.folder import config_hash

        return f"predict-s{self.sparsity:g}-seed{self.seed}-{config_hash(self.cfg)}"


def predictiveness_jobs(spec: StudySpec) -> list[Group]:
    from evo_pai.core.errors import EvoPaiError
    from evo_pai.core.registry import FITNESS

    p = spec.predictiveness
    if p is None or not p.sparsities or not p.seeds:
        return []
    rows = {m.name: m for m in methods_of(spec)}
    if p.method not in rows:
        raise EvoPaiError(f"study: predictiveness.method '{p.method}' is not a row of methods; use a K-starts row's name")
    names = tuple(p.fitnesses or FITNESS.names())
    for n in names:
        FITNESS.get(n)
    return [Group(s, seed, cell_config(spec, rows[p.method], s, seed), names) for seed in p.seeds for s in p.sparsities]


def run_predictiveness_group(group: Group, root: Path, threads: int) -> str | None:
    import torch

    from evo_pai.data.datasets import load_data
    from evo_pai.training.tasks import BurstTask
    from evo_pai.evaluation.base import make_evaluator
    from evo_pai.search.experiment import Experiment
    from evo_pai.operators.fitness import score
    from evo_pai.core.individual import derive_seed
    from evo_pai.search.kstarts import kstarts_population
    from evo_pai.runs.runner import extra_epochs, seed_everything
    from evo_pai.runs.components import load_components
    from evo_pai.runs.folder import write_json

    torch.set_num_threads(threads)
    load_components(group.cfg.plugins)  # a spawned worker starts with empty registries
    out = root / "predictiveness" / f"{group.dirname}.json"
    if out.exists():
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = group.cfg
    seed_everything(cfg.seed)
    data = load_data(cfg.data)
    try:
        with make_evaluator(cfg, data) as evaluator:
            exp = Experiment(cfg, evaluator, data)
            population = kstarts_population(exp, cfg.search.sparsity)
            bursts = exp.evaluate(population)
            final_seed = derive_seed(cfg.seed, "final")
            rows = []
            for i, (ind, res) in enumerate(zip(population, bursts)):
                row = {"sparsity": group.sparsity, "seed": group.seed, "candidate": i,
                       "burst_val_accuracy": res.metrics.get("val_accuracy")}
                for name in group.fitnesses:
                    params = cfg.search.fitness_params if name == cfg.search.fitness else {}
                    row[f"fitness_{name}"] = score(name, res, ind.mask, params)[0]
                final = exp.run_task(BurstTask(ind.mask, cfg.final.epochs + extra_epochs(cfg), final_seed, test=True))
                row["final_test_accuracy"] = final.metrics["test_accuracy"]
                row["final_val_accuracy"] = final.metrics["val_accuracy"]
                rows.append(row)
    except Exception as exc:  # reported, not fatal: the main grid's numbers stand on their own
        return f"{group.dirname}: {type(exc).__name__}: {exc}"
    write_json(out, {"fitnesses": list(group.fitnesses), "rows": rows})
    return None


def read_rows(root: Path) -> tuple[list[str], list[dict]]:
    fitnesses: list[str] = []
    rows: list[dict] = []
    for path in sorted((root / "predictiveness").glob("*.json")) if (root / "predictiveness").is_dir() else []:
        data = json.loads(path.read_text())
        fitnesses = fitnesses or data["fitnesses"]
        rows.extend(data["rows"])
    return fitnesses, rows


def write_predictiveness_csv(root: Path) -> None:
    fitnesses, rows = read_rows(root)
    if rows:
        write_csv(root / "predictiveness.csv", rows, GROUP_FIELDS + [f"fitness_{n}" for n in fitnesses])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return -math.inf
    return v if math.isfinite(v) else -math.inf


def spearman_table(rows: list[dict], fitnesses: list[str]) -> list[dict]:
    """Per fitness: Spearman rho per (sparsity, seed) cell, its mean and spread, and what picking by it gains."""
    import statistics

    from scipy.stats import spearmanr

    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((float(r["sparsity"]), int(r["seed"])), []).append(r)
    out = []
    for name in fitnesses:
        rhos, gains, ranks = [], [], []
        for members in cells.values():
            acc = [float(m["final_test_accuracy"]) for m in members]
            fit = [_num(m[f"fitness_{name}"]) for m in members]
            finite = [f for f in fit if f != -math.inf]
            floor = (min(finite) - 1.0) if finite else 0.0
            fit = [f if f != -math.inf else floor for f in fit]  # failed candidates rank last
            if len(members) < 3 or len(set(fit)) < 2:
                continue
            rho = spearmanr(fit, acc).statistic
            if rho == rho:
                rhos.append(float(rho))
            pick = max(range(len(fit)), key=lambda i: (fit[i], -i))
            gains.append(acc[pick] - statistics.fmean(acc))
            ranks.append(sorted(acc, reverse=True).index(acc[pick]) + 1)
        out.append({
            "fitness": name, "cells": len(rhos),
            "rho_mean": statistics.fmean(rhos) if rhos else None,
            "rho_std": statistics.stdev(rhos) if len(rhos) > 1 else 0.0 if rhos else None,
            "pick_gain": statistics.fmean(gains) if gains else None,  # accuracy of the pick minus the candidates' mean
            "pick_rank": statistics.fmean(ranks) if ranks else None,
            "candidates": statistics.fmean(len(m) for m in cells.values()) if cells else 0,
        })
    return out

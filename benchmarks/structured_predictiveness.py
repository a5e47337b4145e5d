"""Which fitness ranks width candidates like their full training? (issue 23, part 3 — not a timing benchmark)

K random width vectors of ResNet-20 (projection shortcuts, width 8) at a MACs budget — the candidates
`kstarts` draws with masks.granularity: channel — on the structured study's data and recipe
(Fashion-MNIST 4,096-image subset, crop + flip, SGD 0.05 cosine). For each candidate:
  (a) burst_val_accuracy           validation accuracy after a 1-epoch burst from θ0
  (b) abn_no_burst_val_accuracy    adaptive BatchNorm (EagleEye) on θ0's masked network, no training
  (c) abn_after_burst_val_accuracy adaptive BatchNorm after the same burst
and its full training (final.epochs from θ0, the final seed). Spearman ρ of each against the final
test (and validation) accuracy; rows to a CSV, the table to stdout.
    python benchmarks/structured_predictiveness.py [--quick] [--k 16] [--seeds 0] [--sparsity 0.75] [--out CSV]
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

from evo_pai.core.config import build_config
from evo_pai.core.individual import Individual
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import make_evaluator
from evo_pai.runs.components import load_components
from evo_pai.search.experiment import Experiment
from evo_pai.search.kstarts import kstarts_population
from evo_pai.training.abn_probe import burst_predictors
from evo_pai.training.tasks import BurstTask
from evo_pai.core.individual import derive_seed

COLUMNS = ("burst_val_accuracy", "abn_no_burst_val_accuracy", "abn_after_burst_val_accuracy")


def raw(seed: int, k: int, sparsity: float, quick: bool) -> dict:
    data = ({"name": "digits", "train_subset": 256} if quick else
            {"name": "fashion_mnist", "root": "/usr/share/datasets/fashion-mnist", "train_subset": 4096,
             "val_fraction": 0.0833333333, "augment": {"crop_padding": 2, "flip": True}})
    return {"seed": seed, "data": data,
            "model": {"name": "resnet20", "params": {"width": 4 if quick else 8, "shortcut": "projection"},
                      "init": "kaiming_normal", "bias_init": "zero"},
            "masks": {"granularity": "channel"},
            "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0001, "batch_size": 128,
                      "lr_schedule": "cosine", "threads": 1},
            "search": {"method": "kstarts", "population": k, "sparsity": sparsity, "burst_epochs": 0.5 if quick else 1,
                       "adaptive_bn_batches": 4 if quick else 20, "mutation": "width", "crossover": "group_uniform",
                       "explore_mutation": None},
            "final": {"epochs": 1 if quick else 8, "init": "rewind"},
            "evaluation": {"backend": "local", "device": "cpu"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sparsity", type=float, default=0.75)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    load_components()
    rows = []
    for seed in args.seeds:
        cfg = build_config(raw(seed, 4 if args.quick else args.k, args.sparsity, args.quick))
        data = load_data(cfg.data)
        with make_evaluator(cfg, data) as ev:
            exp = Experiment(cfg, ev, data)
            people: list[Individual] = kstarts_population(exp, cfg.search.sparsity)
            masks = [ind.mask for ind in people]
            pred = burst_predictors(ev, masks, [exp.task_seed(ind) for ind in people], cfg.search.burst_epochs)
            finals = ev.evaluate([BurstTask(m, cfg.final.epochs, derive_seed(cfg.seed, "final"), test=True) for m in masks])
        s = exp.structure
        for i, (m, r, f) in enumerate(zip(masks, pred, finals)):
            rows.append({"seed": seed, "candidate": i, "macs_removed": 1 - s.macs_of_mask(m) / s.dense_macs,
                         "widths": " ".join(map(str, s.widths(m))), **{c: r[c] for c in COLUMNS},
                         "final_test_accuracy": f.metrics["test_accuracy"], "final_val_accuracy": f.metrics["val_accuracy"]})
        print(f"seed {seed}: {len(masks)} candidates done", file=sys.stderr, flush=True)
    if args.out:
        with open(args.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    print(f"# resnet20 width {4 if args.quick else 8}, {len(rows)} candidates at {args.sparsity:g} of the MACs removed, "
          f"seeds {args.seeds}; Spearman rho against the final accuracy (per seed, then their mean)")
    print("| predictor | rho vs final test | rho vs final val |")
    print("|---|---|---|")
    for c in COLUMNS:
        per = {}
        for target in ("final_test_accuracy", "final_val_accuracy"):
            rhos = []
            for seed in args.seeds:
                sub = [r for r in rows if r["seed"] == seed]
                rho = spearmanr([r[c] for r in sub], [r[target] for r in sub]).statistic
                rhos.append(float(rho))
            per[target] = statistics.fmean(rhos)
        print(f"| {c} | {per['final_test_accuracy']:+.2f} | {per['final_val_accuracy']:+.2f} |")
    finals = [r["final_test_accuracy"] for r in rows]
    print(f"final test accuracy: {min(finals):.4f}..{max(finals):.4f} (mean {statistics.fmean(finals):.4f})")


if __name__ == "__main__":
    main()

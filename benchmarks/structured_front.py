"""S4 of issue 24: does an nsga2 accuracy-latency front dominate the uniform-width curve?

Reads one nsga2 run with channel masks (its trained members: test accuracy) and uniform-width runs of
the same recipe (`search.method: uniform`), prunes every network physically (torch-pruning) and times
them all in the same interleaved rounds at one batch size (best round), so load hits every point alike.
For each trained front member: the most accurate uniform network with equal or lower latency, and
whether the member is at least as accurate.
    python benchmarks/structured_front.py NSGA2_RUN UNIFORM_RUN [UNIFORM_RUN ...] [--batch 64] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from evo_pai.core.config import load_config
from evo_pai.data.datasets import load_data
from evo_pai.models.group_check import channel_structure, physically_pruned
from evo_pai.models.prunable import masked_names, output_layer_name
from evo_pai.runs.components import load_components
from evo_pai.runs.mask_file import load_mask
from evo_pai.training.tasks import initial_model


def pruned_net(model, input_shape, structure, mask):
    with torch.enable_grad():
        return physically_pruned(model, input_shape, structure, structure.kept(mask)).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("nsga2_run", type=Path)
    p.add_argument("uniform_runs", type=Path, nargs="+")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    load_components()
    cfg = load_config(args.nsga2_run / "config.yaml")
    data = load_data(cfg.data)
    model = initial_model(cfg, data)
    names = masked_names(model, cfg.masks)
    out = output_layer_name(model)
    s = channel_structure(model, data.input_shape, names, out if out in names else None, check=False)
    points = []  # (kind, macs removed, test accuracy, network)
    summary = json.loads((args.nsga2_run / "summary.json").read_text())
    for row in summary["members"]:
        if row.get("test_accuracy") is not None:
            m = load_mask(args.nsga2_run, row["member"])
            points.append(("front", 1 - s.macs_of_mask(m) / s.dense_macs, row["test_accuracy"], pruned_net(model, data.input_shape, s, m)))
    for run in args.uniform_runs:
        m = load_mask(run)
        acc = json.loads((run / "summary.json").read_text())["test_accuracy"]
        points.append(("uniform", 1 - s.macs_of_mask(m) / s.dense_macs, acc, pruned_net(model, data.input_shape, s, m)))
    x = torch.randn(args.batch, *data.input_shape)
    best = [float("inf")] * len(points)
    with torch.inference_mode():
        for _, _, _, net in points:
            net(x)
        for r in range(args.repeats):
            for i in (range(len(points)) if r % 2 == 0 else reversed(range(len(points)))):
                t0 = time.perf_counter()
                for _ in range(5):
                    points[i][3](x)
                best[i] = min(best[i], (time.perf_counter() - t0) / 5)
    print(f"# batch {args.batch}, 1 thread, best of {args.repeats} interleaved rounds x 5 calls; "
          f"{cfg.model.name} {cfg.model.params}")
    print("| kind | MACs removed | test accuracy | latency ms |")
    print("|---|---|---|---|")
    for (kind, lv, acc, _), t in sorted(zip(points, best), key=lambda z: z[1]):
        print(f"| {kind} | {lv:.3f} | {100 * acc:.2f} | {1e3 * t:.2f} |")
    wins = 0
    fronts = [(lv, acc, t) for (kind, lv, acc, _), t in zip(points, best) if kind == "front"]
    uniforms = [(lv, acc, t) for (kind, lv, acc, _), t in zip(points, best) if kind == "uniform"]
    for lv, acc, t in fronts:
        rivals = [u for u in uniforms if u[2] <= t]
        rival = max(rivals, key=lambda u: u[1]) if rivals else None
        ok = rival is None or acc >= rival[1]
        wins += ok
        print(f"front member at {lv:.3f} ({1e3 * t:.2f} ms, {100 * acc:.2f} %): "
              + (f"best uniform at <= its latency {100 * rival[1]:.2f} % ({1e3 * rival[2]:.2f} ms) -> "
                 f"{'at least as accurate' if ok else 'LESS accurate'}" if rival else "no uniform network is as fast"))
    print(f"ratio front members at least as accurate as uniform of equal or lower latency: {wins}/{len(fronts)}")


if __name__ == "__main__":
    sys.exit(main())

"""Inference speed of pruned LeNet-300-100 on CPU: dense vs masked-dense vs compact vs CSR.

    python benchmarks/inference.py [--quick] [--repeats N] [--unstructured RUN] [--structured RUN]

Masks come from real searches: an unstructured nsga2 run (magnitude prune mutation) and a structured
one (the `neuron` mutation), each a front at 90 / 95 / 98 / 99 % on Fashion-MNIST. Pass finished
run folders (their trained members are used), or the script runs two short searches itself (the
weights' values do not change the timings; the sparsity structure does). Every variant of one
(mask, batch) cell is timed in the same interleaved rounds (benchmarks/_common.py), one torch
thread, torch.inference_mode: batch 1 (latency) and batch 256 (throughput).
- dense: the unpruned nn.Module as built; masked: the same module with masked weights (zeros
  cost the same); compact: `evo-pai export --format compact` (dead units removed); csr: Linear
  weights as torch.sparse_csr (`--format csr`); dense_plan: the unpruned network through the same
  inference code as compact (CompactNet of an all-kept mask), so compact / dense_plan is what removing
  units buys with the layout and dispatch savings taken out.
Ratios are dense time / variant time (> 1: faster than dense), from each variant's best round.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import FMNIST, interleaved, machine, parse, table  # noqa: E402

from evo_pai.deploy.compact import compact_model, widths  # noqa: E402
from evo_pai.core.config import build_config  # noqa: E402
from evo_pai.core.masks import MaskSet  # noqa: E402
from evo_pai.runs.components import load_components  # noqa: E402
from evo_pai.runs.export import load_source  # noqa: E402
from evo_pai.runs.runner import run_experiment  # noqa: E402
from evo_pai.deploy.csr import csr_model, masked_copy  # noqa: E402

SPARSITIES = [0.9, 0.95, 0.98, 0.99]
ROOT = Path(__file__).resolve().parents[1]


def search(out: Path, structured: bool, quick: bool) -> Path:
    """A short nsga2 front on Fashion-MNIST (configs/nsga2_fmnist.yaml's recipe, shortened in --quick)."""
    raw = {
        "seed": 0, "data": {**FMNIST, "root": "/usr/share/datasets/fashion-mnist",
                            "train_subset": 1024 if quick else 12288, "val_fraction": 0.05},
        "model": {"name": "mlp"}, "masks": {"budget": "erk"}, "evaluation": {"device": "cpu"},
        "search": {"method": "nsga2", "sparsity": 0.98, "population": 4, "generations": 1, "burst_epochs": 0.5,
                   "nsga2": {"density_range": [0.01, 0.1], "levels": SPARSITIES,
                             "init_epochs": 1 if quick else 4, "init_steps": 2 if quick else 4}},
        "final": {"epochs": 0 if quick else 10},
    }
    if structured:
        raw["search"]["nsga2"].update(prune_mutations={"neuron": 1.0}, mutation_params={"neuron": {"fraction": 0.5}})
    out.mkdir(parents=True, exist_ok=True)
    run_experiment(build_config(raw), out)
    return out


def cells(run: Path) -> list[tuple[float, object]]:
    """(sparsity, Source) of the front members nearest each benchmarked sparsity."""
    import json

    members = json.loads((run / "summary.json").read_text())["members"]
    picks = {min(members, key=lambda m: abs(m["sparsity"] - s))["member"] for s in SPARSITIES}  # a front may lack one
    return sorted((round(members[i]["sparsity"], 4), load_source(run, i)) for i in picks)


def timed(fn, x, calls: int):
    def run(_r: int) -> None:
        with torch.inference_mode():
            for _ in range(calls):
                fn(x)
    return run


def main() -> None:
    args = parse(__doc__.splitlines()[0], lambda p: (p.add_argument("--unstructured", type=Path),
                                                     p.add_argument("--structured", type=Path)))
    torch.set_num_threads(1)
    load_components()
    tmp = Path(tempfile.mkdtemp(prefix="evo-pai-inference-"))
    runs = {"unstructured": args.unstructured or search(tmp / "u", False, args.quick),
            "structured": args.structured or search(tmp / "s", True, args.quick)}
    calls = {1: 100 if args.quick else 2000, 256: 5 if args.quick else 100}
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"inference: {machine()}, LeNet-300-100 (Fashion-MNIST masks), repeats={args.repeats}"
          f"{' (quick)' if args.quick else ''}; uptime: {load}")
    rows = []
    for kind, run in runs.items():
        for s, src in cells(run):
            model = src.model()
            every = MaskSet.dense(src.mask.shapes(), src.mask.output_layer)
            nets = {"dense": model, "masked": masked_copy(model, src.mask), "compact": compact_model(model, src.mask),
                    "csr": csr_model(model, src.mask), "dense_plan": compact_model(model, every)}
            for batch in (1, 256):
                x = torch.randn(batch, *src.input_shape, generator=torch.Generator().manual_seed(0))
                t = interleaved({n: timed(net, x, calls[batch]) for n, net in nets.items()}, args.repeats)
                us = {n: 1e6 * t.best(n) / calls[batch] for n in nets}
                rows.append([kind, f"{100 * src.mask.sparsity():.1f}", str(widths(nets["compact"])[:-1]), batch,
                             us["dense"], us["masked"], us["compact"], us["csr"], us["dense_plan"],
                             f"{t.ratio('dense', 'masked'):.2f}x", f"{t.ratio('dense', 'compact'):.2f}x",
                             f"{t.ratio('dense', 'csr'):.2f}x", f"{t.ratio('dense_plan', 'compact'):.2f}x"])
                print(f"ratio speedup compact/dense {kind} {s:g} b{batch}: {t.ratio('dense', 'compact'):.2f}x "
                      f"(csr {t.ratio('dense', 'csr'):.2f}x, masked {t.ratio('dense', 'masked'):.2f}x, "
                      f"compact/dense_plan {t.ratio('dense_plan', 'compact'):.2f}x)", flush=True)
    print()
    print(table(["mask", "sparsity %", "hidden units", "batch", "dense_us", "masked_us", "compact_us", "csr_us",
                 "dense_plan_us", "masked", "compact", "csr", "compact/dense_plan"], rows))


if __name__ == "__main__":
    main()

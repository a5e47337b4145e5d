"""Measured speed-up of physically pruned networks on this CPU: ResNet-20 and VGG-16 at 2x and 4x fewer MACs.

    python benchmarks/structured_speed.py [--quick] [--repeats N] [--models resnet20,vgg16] [--threads 1,0]
                                          [--channels-last]

For each model (CIFAR shape 3x32x32, 10 classes; ResNet-20 width 16 with projection shortcuts, VGG-16
width 64) the channel groups are built and proven (models/group_check.channel_structure), then for
`search.sparsity` 0.5 and 0.75 (2x / 4x fewer MACs of the masked layers) two channel choices:
- random: random widths repaired to the MACs level (`search.channel_mode.random_channel_mask`, what a
  channel-mode search starts from);
- uniform: every group kept at the same fraction, repaired to the budget (`operators.widths.repair`
  from the full widths: one common scale, then single channels).
Each is pruned physically (`models/group_check.physically_pruned`, as `--format pruned` does) and checked
against the masked network (float32, 1e-4 relative). Per (model, threads, batch) every variant is timed in
the same interleaved rounds (benchmarks/_common.py; torch.inference_mode; threads 0 = torch's default);
speed-up = dense best round / pruned best round, next to the MAC ratio (dense / pruned multiply-adds of
the whole network, benchmarks' count_flops: every Conv/Linear). With --channels-last every network is also
timed in torch.channels_last memory format in the same rounds (rows "... CL": speed-up against the dense
network in the same layout; the "dense CL" row: channels_last dense against the default dense).
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import interleaved, machine, parse, table  # noqa: E402

from evo_pai.core.config import build_config  # noqa: E402
from evo_pai.models.group_check import channel_structure, physically_pruned  # noqa: E402
from evo_pai.models.networks import build_model, count_flops  # noqa: E402
from evo_pai.models.prunable import masked_names, output_layer_name  # noqa: E402
from evo_pai.operators.widths import choose_channels, repair  # noqa: E402
from evo_pai.runs.components import load_components  # noqa: E402
from evo_pai.search.channel_mode import random_channel_mask  # noqa: E402

SHAPE = (3, 32, 32)
MODELS = {"resnet20": {"name": "resnet20", "params": {"width": 16, "shortcut": "projection"}},
          "vgg16": {"name": "vgg16", "params": {}}}
QUICK = {"resnet20": {"width": 4, "shortcut": "projection"}, "vgg16": {"width": 8}}
LEVELS = {"2x": 0.5, "4x": 0.75}
TOLERANCE = 0.01  # masks.macs_tolerance's default


def variants(model_raw: dict) -> tuple[torch.nn.Module, dict[str, torch.nn.Module], dict[str, list[int]]]:
    """(dense, {variant: pruned network}, {variant: widths}) for one model."""
    cfg = build_config({"model": model_raw, "data": {"name": "synthetic"}})
    torch.manual_seed(0)
    dense = build_model(cfg.model, SHAPE, 10).eval()
    names = masked_names(dense, cfg.masks)
    out = output_layer_name(dense)
    structure = channel_structure(dense, SHAPE, names, out if out in names else None)
    nets, widths = {}, {}
    for label, sparsity in LEVELS.items():
        target = (1 - sparsity) * structure.dense_macs
        mask = random_channel_mask(structure, sparsity, 0, TOLERANCE, 1, out if out in names else None)
        keep_random = structure.kept(mask)
        uniform = repair(structure, structure.full_widths(), target, TOLERANCE)
        first = {g.id: -torch.arange(g.channels, dtype=torch.float64) for g in structure.free}  # exchangeable at θ0
        keep_uniform = choose_channels(structure, uniform, first)
        for kind, keep in (("random", keep_random), ("uniform", keep_uniform)):
            name = f"{label} {kind}"
            net = physically_pruned(dense, SHAPE, structure, keep).eval()
            check(dense, net, structure.mask_of(keep), name)
            nets[name], widths[name] = net, [int(keep[g.id].sum()) for g in structure.free]
    return dense, nets, widths


def check(dense: torch.nn.Module, pruned: torch.nn.Module, masks: dict, name: str) -> None:
    masked = copy.deepcopy(dense)
    with torch.no_grad():
        for k, m in masks.items():
            masked.get_parameter(k).mul_(m)
        x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(1))
        want, got = masked(x), pruned(x)
    rel = float((want - got).abs().max() / want.abs().max())
    if not rel <= 1e-4:
        raise SystemExit(f"{name}: pruned network differs from the masked one by {rel:.2e}")


def macs(net: torch.nn.Module) -> int:
    return count_flops(net, SHAPE)["dense"] // 2


def timed(net: torch.nn.Module, x: torch.Tensor, calls: int):
    def run(_r: int) -> None:
        with torch.inference_mode():
            for _ in range(calls):
                net(x)
    return run


def calls_for(net: torch.nn.Module, x: torch.Tensor, target_s: float) -> int:
    import time

    with torch.inference_mode():
        net(x)
        t0 = time.perf_counter()
        net(x)
        one = time.perf_counter() - t0
    return max(1, int(target_s / max(one, 1e-6)))


def main() -> None:
    args = parse(__doc__.splitlines()[0], lambda p: (p.add_argument("--models", default="resnet20,vgg16"),
                                                     p.add_argument("--threads", default="1,0"),
                                                     p.add_argument("--channels-last", action="store_true")))
    load_components()
    default_threads = torch.get_num_threads()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"structured_speed: {machine()}, repeats={args.repeats}{' (quick)' if args.quick else ''}; uptime: {load}",
          flush=True)
    rows = []
    for model in args.models.split(","):
        raw = copy.deepcopy(MODELS[model])
        if args.quick:
            raw["params"] = QUICK[model]
        dense, nets, widths = variants(raw)
        dense_macs = macs(dense)
        ratio = {n: dense_macs / macs(net) for n, net in nets.items()}
        for n in nets:
            print(f"{model} {n}: MACs {dense_macs / 1e6:.1f}M -> {macs(nets[n]) / 1e6:.1f}M ({ratio[n]:.2f}x), "
                  f"widths {widths[n]}", flush=True)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads or default_threads)
            for batch in (1, 64):
                x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
                calls = calls_for(dense, x, (0.05 if args.quick else 0.4))
                ways = {"dense": timed(dense, x, calls), **{n: timed(net, x, calls) for n, net in nets.items()}}
                if args.channels_last:
                    xc = x.to(memory_format=torch.channels_last)
                    ways.update({f"{n} CL": timed(copy.deepcopy(net).to(memory_format=torch.channels_last), xc, calls)
                                 for n, net in {"dense": dense, **nets}.items()})
                t = interleaved(ways, args.repeats)
                pairs = [("dense", n, n) for n in nets]
                if args.channels_last:
                    pairs += [("dense", "dense CL", None)] + [("dense CL", f"{n} CL", n) for n in nets]
                for base, n, pruned in pairs:
                    speed, mac = t.ratio(base, n), ratio[pruned] if pruned else 1.0
                    rows.append([model, n, f"{mac:.2f}x", batch, torch.get_num_threads(),
                                 1e3 * t.best(base) / calls, 1e3 * t.best(n) / calls, f"{speed:.2f}x",
                                 f"{t.paired(base, n):.2f}x", f"{speed / mac:.2f}"])
                    print(f"ratio speedup pruned/dense {model} {n} b{batch} t{torch.get_num_threads()}: {speed:.2f}x "
                          f"(MACs {mac:.2f}x, paired {t.paired(base, n):.2f}x)", flush=True)
    torch.set_num_threads(default_threads)
    print()
    print(table(["model", "variant", "MAC ratio", "batch", "threads", "dense ms", "pruned ms", "speed-up",
                 "paired", "speed-up / MAC ratio"], rows))


if __name__ == "__main__":
    main()

"""Training K width candidates: padded to the widest (masked channels) vs physically narrower networks.

With masks.granularity: channel every backend trains a candidate as the full-width network with its
removed channels masked — padding to the widest, which is what lets the vectorized trainer batch
candidates of different widths. The alternative trains each candidate physically pruned (narrower:
fewer FLOPs). This measures, in one run, interleaved and repeated, for K random-width candidates at
4x fewer MACs (ResNet-20, projection shortcuts, Fashion-MNIST subset, SGD, batch 128):

  vectorized   evo-pai's vectorized backend, K masked networks in one pass
  sequential   evo-pai's local backend, one masked network after another
  plain_masked a plain torch loop over the K masked full-width networks (mask re-applied each step)
  plain_pruned the same loop over the K physically pruned networks (torch-pruning)

The last two isolate what physical narrowing saves (same loop, same steps); the first two what evo-pai's
trainers cost. Prints `ratio ...` lines.
    python benchmarks/structured_training.py [--quick] [--repeats N] [--width 8] [--k 8]
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, parse, table  # noqa: E402

from evo_pai.core.config import build_config  # noqa: E402
from evo_pai.core.individual import derive_seed  # noqa: E402
from evo_pai.data.datasets import load_data  # noqa: E402
from evo_pai.evaluation.base import make_evaluator  # noqa: E402
from evo_pai.models.group_check import physically_pruned  # noqa: E402
from evo_pai.runs.components import load_components  # noqa: E402
from evo_pai.search.experiment import Experiment  # noqa: E402
from evo_pai.training.tasks import BurstTask  # noqa: E402


def raw(width: int, n_train: int, backend: str) -> dict:
    return {"seed": 0, "data": {"name": "fashion_mnist", "root": "/usr/share/datasets/fashion-mnist",
                                "train_subset": n_train, "val_fraction": 0.05},
            "model": {"name": "resnet20", "params": {"width": width, "shortcut": "projection"}},
            "masks": {"granularity": "channel"},
            "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 128, "threads": 1},
            "search": {"mutation": "width", "crossover": "group_uniform", "explore_mutation": None},
            "evaluation": {"backend": backend, "device": "cpu"}}


def plain_loop(nets, masks, x, y, steps: int) -> None:
    for net, mask in zip(nets, masks):
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        net.train()
        for i in range(steps):
            xb, yb = x[i * 128 % len(x):][:128], y[i * 128 % len(y):][:128]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
            if mask is not None:
                with torch.no_grad():
                    for k, m in mask.items():
                        net.get_parameter(k).mul_(m)


def main() -> None:
    args = parse(__doc__.splitlines()[0], lambda p: (p.add_argument("--width", type=int, default=8),
                                                     p.add_argument("--k", type=int, default=8)))
    torch.set_num_threads(1)
    load_components()
    k, n_train = (4, 512) if args.quick else (args.k, 2048)
    steps = n_train // 128
    cfg = build_config(raw(args.width, n_train, "local"))
    data = load_data(cfg.data)
    local = make_evaluator(cfg, data)
    vec = make_evaluator(build_config(raw(args.width, n_train, "vectorized")), data)
    exp = Experiment(cfg, local, data)
    s = exp.structure
    masks = [exp.random_mask(0.75, derive_seed(0, "bench", i)) for i in range(k)]
    pruned_macs = [s.macs_of_mask(m) / s.dense_macs for m in masks]
    x, y = data.train_x[: n_train], data.train_y[: n_train]
    theta0 = exp.theta0

    def masked_nets():
        nets = []
        for m in masks:
            net = copy.deepcopy(exp.model)
            net.load_state_dict(theta0)
            with torch.no_grad():
                for name, mm in m.items():
                    net.get_parameter(name).mul_(mm)
            nets.append(net)
        return nets

    def pruned_nets():
        return [physically_pruned(net, data.input_shape, s, s.kept(m)) for net, m in zip(masked_nets(), masks)]

    variants = {
        "vectorized": lambda r: vec.evaluate([BurstTask(m, 1.0, 1000 * r + i) for i, m in enumerate(masks)]),
        "sequential": lambda r: local.evaluate([BurstTask(m, 1.0, 1000 * r + i) for i, m in enumerate(masks)]),
        "plain_masked": lambda r: plain_loop(masked_nets(), [dict(m) for m in masks], x, y, steps),
        "plain_pruned": lambda r: plain_loop(pruned_nets(), [None] * k, x, y, steps),
    }
    t = interleaved(variants, args.repeats)
    print(f"# {machine()}; resnet20 width {args.width} (projection), K={k} random widths at 4x fewer MACs "
          f"(kept MACs {min(pruned_macs):.3f}..{max(pruned_macs):.3f}), {steps} steps of batch 128 each, 1 thread")
    print(table(["variant", "best s", "median s"], [[n, t.best(n), sorted(v)[len(v) // 2]] for n, v in t.items()]))
    print(f"ratio sequential/vectorized: {t.ratio('sequential', 'vectorized'):.2f}x (paired {t.paired('sequential', 'vectorized'):.2f}x)")
    print(f"ratio plain_masked/plain_pruned: {t.ratio('plain_masked', 'plain_pruned'):.2f}x "
          f"(paired {t.paired('plain_masked', 'plain_pruned'):.2f}x; MAC ratio {1 / (sum(pruned_macs) / k):.2f}x)")
    print(f"ratio vectorized/plain_pruned: {t.ratio('vectorized', 'plain_pruned'):.2f}x")


if __name__ == "__main__":
    main()

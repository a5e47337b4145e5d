"""What the bad-data check (evo_pai/data/checks.py) costs, once per run, before the run folder exists.

    python benchmarks/data_check.py [--quick] [--repeats N]

memory: Fashion-MNIST as the run holds it (standardized float32 tensors, 54k/6k/10k): `check_data` against
  loading the dataset and against one LeNet-5 burst (1 epoch of Adam, batch 128, then validation); and a
  CIFAR-10-sized float32 tensor (50k x 3x32x32), checked alone.
stream: the same Fashion-MNIST tensors served item by item as float32 (a plugin's streamed Dataset with no
  `labels()`: the check reads every item once through the loader) against one streamed LeNet-5 burst; and
  as uint8 items with `labels()` (what the built-in cifar10/100 and image_folder streams are: integer inputs
  cannot be non-finite, so only the labels and one probe item per split are read).
Times are each variant's best round, rounds interleaved; the machine is shared: load only adds time.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from _common import FMNIST, interleaved, machine, parse, table  # noqa: E402

from evo_pai.core.config import build_config  # noqa: E402
from evo_pai.data.checks import check_data  # noqa: E402
from evo_pai.data.datasets import assemble_streamed, load_data  # noqa: E402
from evo_pai.evaluation.local import LocalEvaluator  # noqa: E402
from evo_pai.runs.components import load_components  # noqa: E402
from evo_pai.search.experiment import Experiment  # noqa: E402
from evo_pai.training.tasks import BurstTask  # noqa: E402


class Items(Dataset):
    """A plugin's streamed set: items one by one, no `labels()`."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class Labelled(Items):
    """As the built-in streams: `labels()` gives every label without reading an item."""

    def labels(self):
        return self.y.numpy()


def burst(cfg, data):
    ev = LocalEvaluator(cfg, data)
    mask = Experiment(cfg, ev, data).random_mask(0.5, 0)
    return lambda r: ev.evaluate([BurstTask(mask, 1.0, 1000 + r)])


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    args = parse(__doc__.splitlines()[0])
    load_components()
    subset = 6000 if args.quick else None
    cfg = build_config({"seed": 0, "data": {**FMNIST, "train_subset": subset}, "model": {"name": "lenet5"},
                        "train": {"batch_size": 128}, "evaluation": {"device": "cpu"}})
    load_s = min(timed(lambda: load_data(cfg.data)) for _ in range(args.repeats))
    data = load_data(cfg.data)
    t = interleaved({"check": lambda r: check_data("fashion_mnist", data), "burst": burst(cfg, data)}, args.repeats)
    n = 10_000 if args.quick else 50_000
    cifar = torch.randn(n, 3, 32, 32)
    cifar_s = min(timed(lambda: check_data("cifar-sized", _splits(data, cifar))) for _ in range(args.repeats))
    rows = [["fashion_mnist in memory", t.best("check"), load_s, t.best("burst")],
            [f"float32 {n} x 3x32x32 in memory", cifar_s, "", ""]]
    x = torch.cat([data.train_x, data.val_x])
    y = torch.cat([data.train_y, data.val_y])
    floats = assemble_streamed("s", cfg.data, Items(x, y), Items(data.test_x, data.test_y), 10, (1, 28, 28), False)
    u8 = (x * 40 + 100).clamp(0, 255).to(torch.uint8)
    ints = assemble_streamed("s", cfg.data, Labelled(u8, y), Labelled(data.test_x.to(torch.uint8), data.test_y), 10,
                             (1, 28, 28), False)
    s = interleaved({"check": lambda r: check_data("s", floats), "burst": burst(cfg, floats),
                     "check_u8": lambda r: check_data("s", ints)}, args.repeats)
    rows += [["float32 items streamed (no labels())", s.best("check"), "", s.best("burst")],
             ["uint8 items streamed with labels()", s.best("check_u8"), "", s.best("burst")]]
    print(machine())
    print(table(["data", "check s", "load s", "1-epoch burst s"], rows))
    print(f"ratio check/burst fashion_mnist in memory: {t.best('check') / t.best('burst'):.4f}")
    print(f"ratio check/load fashion_mnist in memory: {t.best('check') / load_s:.4f}")
    print(f"ratio check/burst float32 streamed: {s.best('check') / s.best('burst'):.4f}")
    print(f"ratio check/burst uint8 streamed with labels: {s.best('check_u8') / s.best('burst'):.5f}")


def _splits(data, x):
    import dataclasses

    y = torch.arange(len(x)) % 10
    return dataclasses.replace(data, train_x=x, train_y=y, val_x=x[:10], val_y=y[:10], test_x=x[:10], test_y=y[:10])


if __name__ == "__main__":
    main()

"""Structured search on a ResNet, end to end on a CPU in a few minutes (docs/structured.md).

1. nsga2 over channel widths of ResNet-20 (projection shortcuts) on scikit-learn's digits: the front
   of validation accuracy vs *measured* latency at 2x, 4x and 8x fewer MACs, with the uniform-width
   (width multiplier) reference in front.png;
2. the member at 4x fewer MACs exported physically pruned (`export("pruned")`: channels removed by
   torch-pruning, read back and checked against the masked network);
3. its measured speed-up over the dense network at batch 1 and 64, next to the MAC ratio.

    python examples/structured_resnet.py [--out runs/structured_example]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import evo_pai


class Block(nn.Module):
    """A basic residual block with BatchNorm and a 1x1 projection where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.proj(x))


class ResNet(nn.Module):
    """Your own network: a ResNet-20-like stack of 3 stages x 3 blocks (16/32/64 channels)."""

    def __init__(self, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(3):
                blocks.append(Block(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def latency(net: torch.nn.Module, batch: int, rounds: int = 20) -> float:
    """Best of `rounds` forward passes (seconds): load on a shared machine only ever adds time."""
    x = torch.randn(batch, 1, 8, 8)
    net.eval()
    best = float("inf")
    with torch.inference_mode():
        net(x)
        for _ in range(rounds):
            t0 = time.perf_counter()
            net(x)
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="keep the run folder here (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(1)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = ResNet()  # projection shortcuts: option A's zero-padding is refused (docs/structured.md)
    result = evo_pai.search(model, (x[:1400], y[:1400]), test=(x[1400:], y[1400:]), method="nsga2", sparsity=0.75,
                            out=args.out, overrides=[
                                "masks.granularity=channel", "train.optimizer=sgd", "train.lr=0.05",
                                "search.population=6", "search.generations=3", "search.burst_epochs=1",
                                "search.inherit=parent", "search.nsga2.density_range=[0.1, 0.6]",
                                "search.nsga2.levels=[0.5, 0.75, 0.875]", "search.nsga2.prune_mutations={width: 1.0}",
                                "search.nsga2.grow_mutation=width", "search.nsga2.swap_mutation=width",
                                "search.nsga2.objectives=[val_accuracy, latency]", "search.nsga2.latency_batch=64",
                                "final.epochs=6", "final.members=[0.5, 0.75, 0.875]"])
    print("front (fraction of MACs removed, val accuracy after the burst, measured latency at batch 64):")
    rows = result.summary["members"]  # front.csv's rows: the objectives of every member
    for row in rows:
        print(f"  {row['sparsity']:.3f}  {row['val_accuracy']:.3f}  {1e3 * row['latency']:.2f} ms"
              + (f"  test {row['test_accuracy']:.3f}" if row.get("test_accuracy") is not None else ""))
    pick = min(rows, key=lambda r: (abs(r["sparsity"] - 0.75), r["test_accuracy"] is None))
    written = result.export("pruned", member=pick["member"])
    net = evo_pai.load_pruned(written["path"], model=model)
    dense = ResNet()
    macs_ratio = 1.0 / (1.0 - pick["sparsity"])
    print(f"exported {written['path']} ({sum(p.numel() for p in net.parameters()):,} parameters, dense "
          f"{sum(p.numel() for p in dense.parameters()):,})")
    for batch in (1, 64):
        speedup = latency(dense, batch) / latency(net, batch)
        print(f"batch {batch}: measured speed-up {speedup:.2f}x, MAC ratio {macs_ratio:.2f}x")


if __name__ == "__main__":
    main()

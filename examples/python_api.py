"""evo-pai on your own nn.Module and tensors, from Python: search -> apply -> export -> measure.

Run it:  python examples/python_api.py     (about half a minute on a laptop CPU; docs/python.md)
No YAML, no registration: the module and the data are handed over as they are.
"""
from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import evo_pai


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def microseconds(model: nn.Module, x: torch.Tensor, rounds: int = 300) -> float:
    """Seconds per one-example forward, in µs: the best of three runs of `rounds` calls."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(rounds):
                model(x[i % len(x)].unsqueeze(0))
            best = min(best, (time.perf_counter() - t0) / rounds)
    return best * 1e6


def main() -> None:
    # Your data: any (x, y) tensors (a Dataset or a DataLoader works too). Here sklearn's 8x8 digits.
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1437], order[1437:]

    # Your network: its current weights are θ0, the initialisation the masks are searched for.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    dense = sum(p.numel() for p in model.parameters())

    result = evo_pai.search(model, (x[train], y[train]), test=(x[test], y[test]), sparsity=0.9)
    print(result)

    # Prune your own module in place (the run's trained weights, masked): it scores what the run measured.
    result.apply(model)
    print(f"accuracy of your pruned module on the test data: {100 * accuracy(model, x[test], y[test]):.2f} % "
          f"(the run measured {100 * result.summary['test_accuracy']:.2f} %)")
    for layer, s in result.summary["layer_sparsity"].items():
        print(f"  {layer}: {100 * s:.1f} % of the weights pruned")

    # Export: a smaller dense network without the dead units; load it anywhere with evo_pai.load_compact.
    info = result.export("compact")
    compact = evo_pai.load_compact(info["path"])
    small = sum(p.numel() for p in compact.parameters())
    print(f"compact: units per layer {info['widths']}, {small:,} parameters (dense: {dense:,}), "
          f"test accuracy {100 * accuracy(compact, x[test], y[test]):.2f} %")
    print(f"one-example inference: {microseconds(model, x[test]):.0f} µs masked, "
          f"{microseconds(compact, x[test]):.0f} µs compact")
    print(f"search {result.summary['search_seconds']:.1f} s, final training {result.summary['final_seconds']:.1f} s; "
          "result.save('my_run') keeps the run folder (evo-pai export / report read it)")


if __name__ == "__main__":
    main()

"""Shared benchmark plumbing: interleaved, repeated timing and a plain-text table.

Every benchmark compares two (or more) ways of doing the same work *in one run*: the ways are
timed alternately, round after round (rotating which goes first), so load on a shared machine
hits all of them; ratios are reported from each way's best round and, as a cross-check, as the
median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import torch

FMNIST = {"name": "fashion_mnist"}


def parse(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    if extra:
        extra(p)
    p.add_argument("--quick", action="store_true", help="small sizes, finishes in under a minute")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 5, quick 2)")
    args = p.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


class Timings(dict):
    """variant -> list of seconds, one per round."""

    def best(self, name: str) -> float:
        return min(self[name])

    def ratio(self, slow: str, fast: str) -> float:
        """best(slow) / best(fast). On a shared machine, load only ever adds time: the best of several
        interleaved rounds is the closest estimate of each way's own cost."""
        return self.best(slow) / self.best(fast)

    def paired(self, slow: str, fast: str) -> float:
        """Median over rounds of slow/fast timed back to back: a second estimate, also load-tolerant."""
        return statistics.median(a / b for a, b in zip(self[slow], self[fast]))


def interleaved(variants: dict[str, Callable[[int], object]], repeats: int, warmup: bool = True) -> Timings:
    """Time every variant once per round, rotating the order. Each callable gets the round number
    (to vary seeds and so dodge result caches)."""
    names = list(variants)
    if warmup:  # first call pays allocator growth and kernel selection
        for name in names:
            variants[name](-1)
    times = Timings({n: [] for n in names})
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            variants[name](r)
            times[name].append(time.perf_counter() - t0)
    return times


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def table(header: list[str], rows: list[list[object]]) -> str:
    cells = [header] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

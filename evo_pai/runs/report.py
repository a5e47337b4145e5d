"""Plots and the one-screen summary of a run."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, never open windows
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_fitness(records: list[dict], path: Path, title: str) -> None:
    """Best and mean fitness (± std) per generation, with the population's sparsity."""
    gens = [r["generation"] for r in records]
    best = [r["best_fitness"] for r in records]
    mean = [r["mean_fitness"] for r in records]
    std = [r.get("std_fitness") or 0.0 for r in records]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(gens, best, "o-", label="best fitness")
    if any(m is not None for m in mean):
        lo = [m - s if m is not None else None for m, s in zip(mean, std)]
        hi = [m + s if m is not None else None for m, s in zip(mean, std)]
        ax.plot(gens, mean, "s--", label="mean fitness")
        ax.fill_between(gens, [x if x is not None else float("nan") for x in lo],
                        [x if x is not None else float("nan") for x in hi], alpha=0.2)
    ax.set_xlabel("generation / pruning step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylabel("fitness")
    ax2 = ax.twinx()
    ax2.plot(gens, [r["sparsity"] for r in records], "k:", label="sparsity")
    ax2.set_ylabel("mean sparsity")
    ax2.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f} %"

    return [
        ("method", summary["method"]),
        ("data / model", f"{summary['dataset']} / {summary['model']}"),
        ("sparsity (target → measured)", f"{pct(summary['target_sparsity'])} → {pct(summary['sparsity'])}"),
        ("test accuracy", pct(summary["test_accuracy"])),
        ("search cost", f"{summary['search_model_epochs']:.2f} model-epochs ({summary['search_seconds']:.1f} s)"),
        ("final training", f"{summary['final_epochs']} epochs ({summary['final_seconds']:.1f} s)"),
        ("FLOPs / example (sparse / dense)", f"{summary['flops']['sparse']:,} / {summary['flops']['dense']:,}"),
        ("dead units", str(sum(summary["dead_units"].values()))),
        ("backend / device", f"{summary['backend']} / {summary['device']}"),
        *([("torch threads", f"{summary['threads']['count']} ({summary['threads']['reason']})")]
          if summary.get("threads") else []),
        ("wall time", f"{summary['wall_seconds']:.1f} s"),
    ]

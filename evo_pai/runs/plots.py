"""Plots and the one-screen summary of a run.

fitness.png: per generation (or pruning step) the best fitness, the population's mean ± std when there
is a population, the sparsity reached (for one-network methods the pruned-to sparsity), the target
sparsity, and the best individual's validation accuracy; a one-generation K-starts run shows its k
candidates instead (fitness and validation accuracy, the winner marked). layers.png: the kept fraction
of every layer of the final mask, against the overall density. hyperparams.png (a run whose log
records carry `hparams`): each member's hyperparameter genes over the generations, one panel per gene,
with the members that copied another (exploit) marked where they start from the copy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, never open windows
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from evo_pai.models.prunable import roles_brief  # noqa: E402

DEAD_UNITS = "units whose every incoming weight is pruned (they output a constant)"


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) else float("nan")


def plot_fitness(records: list[dict], path: Path, title: str, target: float | None = None,
                 candidates: list[dict] | None = None, winner: int | None = None) -> dict[str, list[float]]:
    if candidates and len(records) <= 1:
        return _plot_candidates(candidates, winner, path, title, target, records[0] if records else {})
    gens = [r["generation"] for r in records]
    best = [_num(r.get("best_fitness")) for r in records]
    mean = [_num(r.get("mean_fitness")) for r in records]
    std = [_num(r.get("std_fitness") or 0.0) for r in records]
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    # one network (dissipating, gmp, imp): its fitness is both the best and the mean, drawn once
    population = any(abs(m - b) > 1e-12 for m, b in zip(mean, best) if m == m and b == b)
    ax.plot(gens, best, "o-", color="tab:blue", lw=2, label="best fitness" if population else "fitness (one network)")
    if population:
        ax.plot(gens, mean, "s--", color="tab:orange", lw=1.2, label="mean fitness (± std)")
        ax.fill_between(gens, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color="tab:orange", alpha=0.15)
    ax.set_xlabel("generation / pruning step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    if len(gens) == 1:
        ax.set_xlim(gens[0] - 0.5, gens[0] + 0.5)
    ax.set_ylabel("fitness")
    ax2 = ax.twinx()
    reached = [_num(r.get("pruned_to", r.get("sparsity"))) for r in records]
    label = "sparsity after pruning" if any("pruned_to" in r for r in records) else "mean sparsity"
    ax2.plot(gens, reached, "k:", marker=".", label=label)
    acc = [_num(r.get("best_val_accuracy")) for r in records]
    if any(a == a for a in acc):
        ax2.plot(gens, acc, "^-", color="tab:green", ms=4, lw=1, label="val accuracy (best)")
    return _finish(fig, ax, ax2, target, "sparsity / validation accuracy", title, path)


def plot_hyperparams(records: list[dict], path: Path, title: str) -> dict[str, list[list[float]]]:
    """One panel per gene: a line per member over generations; x where a member restarts as a copy."""
    rows = [r for r in records if r.get("hparams")]
    genes = list(rows[0]["hparams"])
    fig, axes = plt.subplots(len(genes), 1, figsize=(7.0, 1.9 * len(genes) + 0.8), sharex=True, squeeze=False)
    drawn: dict[str, list[list[float]]] = {}
    gens = [r["generation"] for r in rows]
    copied = {(r["generation"] + 1, i) for r in rows for i, _ in r.get("exploit", [])}
    for ax, gene in zip(axes[:, 0], genes):
        members = list(zip(*[r["hparams"][gene] for r in rows]))
        drawn[gene] = [list(map(float, m)) for m in members]
        for i, values in enumerate(members):
            line, = ax.plot(gens, values, "o-", ms=3, lw=1.2, label=f"member {i}")
            marks = [(g, v) for g, v in zip(gens, values) if (g, i) in copied]
            if marks:
                ax.plot(*zip(*marks), "x", color=line.get_color(), ms=9, mew=2)
        ax.set_ylabel(gene)
        if gene in ("lr_scale", "weight_decay") and all(v > 0 for m in members for v in m):
            ax.set_yscale("log")
    axes[-1, 0].set_xlabel("generation (x: the member restarts as a copy of a better one, genes perturbed)")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].legend(fontsize=7, ncol=min(4, len(drawn[genes[0]])), loc="best")
    axes[0, 0].set_title(f"hyperparameter genes: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _plot_candidates(candidates: list[dict], winner: int | None, path: Path, title: str, target: float | None,
                     record: dict) -> dict[str, list[float]]:
    """K-starts: one burst per candidate mask; the fittest (marked) is trained to the end."""
    idx = list(range(len(candidates)))
    fit = [_num(c.get("fitness")) for c in candidates]
    acc = [_num(c.get("val_accuracy")) for c in candidates]
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    ax.plot(idx, fit, "o", color="tab:blue", ms=8, label="fitness after the burst")
    if winner is not None and 0 <= winner < len(idx):
        ax.plot([winner], [fit[winner]], "*", color="tab:red", ms=16, label=f"winner (candidate {winner})")
    finite = [f for f in fit if f == f]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = (hi - lo) * 0.25 or abs(hi) * 0.1 or 0.1
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(-0.5, len(idx) - 0.5)
    ax.grid(axis="y", alpha=0.3)
    ax.set_xlabel("candidate mask")
    ax.set_xticks(idx)
    ax.set_ylabel("fitness")
    ax2 = ax.twinx()
    if any(a == a for a in acc):
        ax2.plot(idx, acc, "^-", color="tab:green", label="val accuracy after the burst")
    sparsity = record.get("sparsity")
    if isinstance(sparsity, (int, float)):
        ax2.axhline(sparsity, color="k", ls=":", label=f"sparsity {sparsity:.1%}")
    return _finish(fig, ax, ax2, target, "validation accuracy / sparsity", title, path)


def _finish(fig, ax, ax2, target: float | None, ylabel: str, title: str, path: Path) -> dict[str, list[float]]:
    """The target line, the right axis (a fraction), the legend and title; writes and closes the figure."""
    if target is not None:
        ax2.axhline(target, color="tab:red", ls="-.", lw=1, label=f"target sparsity {target:.0%}")
    ax2.set_ylabel(ylabel)
    ax2.set_ylim(0, 1.02)
    drawn = _legend(ax, ax2)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _legend(ax, ax2) -> dict[str, list[float]]:
    """The legend under the plot; returns label -> y values of what was drawn (tests read it)."""
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
    drawn = {}
    for h, label in zip(h1 + h2, l1 + l2):
        ydata = h.get_ydata() if hasattr(h, "get_ydata") else []
        drawn[label] = [float(y) for y in ydata]
    return drawn


def plot_layers(counts: Mapping[str, int], sizes: Mapping[str, int], path: Path, title: str) -> dict[str, tuple[float, str]]:
    """Kept fraction per layer (input to output), with the kept/total counts and the overall density.
    Returns what was drawn, read back from the figure: layer label (top to bottom) -> (bar length, its text)."""
    names = list(counts)
    density = [counts[k] / sizes[k] if sizes[k] else 1.0 for k in names]
    overall = sum(counts.values()) / max(1, sum(sizes.values()))
    fig, ax = plt.subplots(figsize=(7.0, 1.6 + 0.42 * len(names)))
    y = list(range(len(names)))[::-1]  # first layer on top
    ax.barh(y, density, color="tab:blue", alpha=0.8)
    for yi, k, d in zip(y, names, density):
        ax.text(max(d, overall) + 0.01, yi, f"{d:.1%}  ({counts[k]:,} of {sizes[k]:,})", va="center", fontsize=8)
    ax.axvline(overall, color="tab:red", ls="-.", lw=1, label=f"overall density {overall:.1%}")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, 1.35)
    ax.set_xlabel("density (fraction of weights kept)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3 if len(names) < 4 else -0.12), fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    bars = sorted(ax.patches, key=lambda b: -b.get_y())  # top first
    labels = [t.get_text() for t in ax.get_yticklabels()]
    ticks = list(ax.get_yticks())
    texts = sorted(ax.texts, key=lambda t: -t.get_position()[1])
    drawn = {labels[ticks.index(round(b.get_y() + b.get_height() / 2))]: (b.get_width(), t.get_text())
             for b, t in zip(bars, texts)}
    plt.close(fig)
    return drawn


def threads_text(t: dict) -> str:
    text = f"{t['count']} ({t['reason']})"
    for seconds, n in t.get("adjusted") or []:
        text += f"; {n} from {seconds:g} s (other processes' load)"
    return text


def diverged_text(where: dict) -> str:
    return f"{where['stage']}, epoch {where['epoch']}" if where.get("epoch") else where["stage"]


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f} %"

    dead = sum(summary["dead_units"].values())
    return [
        ("method", summary["method"]),
        ("data / model", f"{summary['dataset']} / {summary['model']}"),
        *([("MACs removed (target → measured)", f"{pct(summary['target_sparsity'])} → "
            f"{pct(summary['structure']['macs_removed'])} (weights: {pct(summary['sparsity'])})")]
          if summary.get("structure") else
          [("sparsity (target → measured)", f"{pct(summary['target_sparsity'])} → {pct(summary['sparsity'])}")]),
        ("test accuracy", pct(summary["test_accuracy"])),
        ("search cost", f"{summary['search_model_epochs']:.2f} model-epochs ({summary['search_seconds']:.1f} s)"),
        ("final training", f"{summary['final_epochs']} epochs ({summary['final_seconds']:.1f} s)"),
        *([("diverged", f"training went non-finite in {diverged_text(summary['diverged_at'])}: no accuracy is a "
            "result")] if summary.get("diverged") else []),
        ("FLOPs / example (sparse / dense)", f"{summary['flops']['sparse']:,} / {summary['flops']['dense']:,}"),
        *([("prunable parameters", roles_brief(summary["parameters"]))] if summary.get("parameters") else []),
        *([] if summary.get("structure") else [("dead units", f"{dead}: {DEAD_UNITS}")]),  # channel masks: removed channels
        ("backend / device", f"{summary['backend']} / {summary['device']}"),
        *([("torch threads", threads_text(summary["threads"]))] if summary.get("threads") else []),
        ("wall time", f"{summary['wall_seconds']:.1f} s"),
    ]

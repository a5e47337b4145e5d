"""front.png: accuracy vs sparsity of an nsga2 run — each generation's front faded, the final front marked."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, never open windows
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402


def plot_front(records: list[dict], rows: list[dict], path: Path, title: str) -> None:
    """`records`: log.jsonl (each with a `front`); `rows`: the final members (front.csv rows)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    fronts = [r["front"] for r in records if r.get("front")]
    for g, front in enumerate(fronts[:-1]):
        pts = sorted((p["sparsity"], p["val_accuracy"]) for p in front if p.get("val_accuracy") is not None)
        if pts:  # later generations darker: the front's progress reads left to right in time
            shade = 0.85 - 0.55 * g / max(1, len(fronts) - 1)
            ax.plot(*zip(*pts), "o-", color=str(shade), ms=3, lw=0.8, zorder=1,
                    label="earlier generations' fronts" if g == 0 else None)
    final = sorted((r["sparsity"], r["val_accuracy"]) for r in rows if r.get("val_accuracy") is not None)
    if final:
        ax.plot(*zip(*final), "o-", color="tab:blue", ms=6, zorder=3, label="final front (val. accuracy after burst)")
    tested = sorted((r["sparsity"], r["test_accuracy"]) for r in rows if r.get("test_accuracy") is not None)
    if tested:
        ax.plot(*zip(*tested), "*", color="tab:red", ms=11, zorder=4, label="trained member (test accuracy)")
        for s, a in tested:
            ax.annotate(f"{100 * a:.1f}", (s, a), textcoords="offset points", xytext=(4, 5), fontsize=7)
    sparsities = [p["sparsity"] for f in fronts for p in f] + [r["sparsity"] for r in rows]
    if sparsities and 0.0 < min(sparsities) and max(sparsities) < 1.0:
        ax.set_xscale("logit")  # 90, 99, 99.9 % evenly spaced: the interesting end is not squashed
        ax.xaxis.set_minor_locator(NullLocator())
        ticks = sorted({round(s, 4) for s in sparsities})
        ax.set_xticks(ticks if len(ticks) <= 10 else ticks[:: max(1, len(ticks) // 8)])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.4g} %"))
    ax.set_xlabel("sparsity (logit scale)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

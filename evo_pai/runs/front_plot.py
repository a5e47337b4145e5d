"""front.png: accuracy vs sparsity of an nsga2 run — each generation's front faded, the final front marked."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, never open windows
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402


def plot_front(records: list[dict], rows: list[dict], path: Path, title: str, uniform: list[dict] | None = None) -> None:
    """`records`: log.jsonl (each with a `front`); `rows`: the final members (front.csv rows); `uniform`:
    channel masks' width-multiplier reference (a second panel against measured latency when it has one)."""
    latency = bool(uniform) and all(r.get("latency") is not None for r in list(rows) + list(uniform))
    fig, axes = plt.subplots(1, 2 if latency else 1, figsize=(11.5 if latency else 6.4, 4.2), squeeze=False)
    ax = axes[0][0]
    if uniform:
        pts = sorted((r["sparsity"], r["val_accuracy"]) for r in uniform if r.get("val_accuracy") is not None)
        if pts:
            ax.plot(*zip(*pts), "s--", color="tab:gray", ms=5, zorder=2, label="uniform width (one burst from θ0)")
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
        ticks = sorted({round(s, 2 if uniform else 4) for s in sparsities})  # MACs levels land within ±1 %
        ax.set_xticks(ticks if len(ticks) <= 10 else ticks[:: max(1, len(ticks) // 8)])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.4g} %"))
    ax.set_xlabel("sparsity (logit scale)" if not uniform else "MACs removed (logit scale)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=10)
    if latency:
        bx = axes[0][1]
        for data, style, label in ((uniform, "s--", "uniform width (one burst from θ0)"), (rows, "o-", "final front")):
            pts = sorted((1e3 * r["latency"], r["val_accuracy"]) for r in data if r.get("val_accuracy") is not None)
            if pts:
                bx.plot(*zip(*pts), style, color="tab:gray" if data is uniform else "tab:blue", label=label)
        bx.set_xlabel("measured latency (ms per batch)")
        bx.set_ylabel("val. accuracy after burst")
        bx.grid(alpha=0.3)
        bx.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

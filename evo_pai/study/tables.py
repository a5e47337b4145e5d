"""`evo-pai report STUDY_DIR`: tables, plots and target checks, regenerated from results.csv alone.

Writes report.md (accuracy mean ± std per method and sparsity with the best pruned method per
column in bold, search compute, paired comparisons for the paper's claims, the issue's targets,
fitness predictiveness), accuracy_vs_sparsity.png and accuracy_vs_compute.png.
"""
from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from evo_pai.core.errors import EvoPaiError
from evo_pai.study.predictiveness import read_csv, spearman_table
from evo_pai.runs.folder import write_atomic
from evo_pai.study.grid import StudySpec, TargetsSpec



def _f(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _stats(values: list[float]) -> tuple[float, float, int]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


STUDY_FILE = "study.yaml"  # the study file as run, kept in the study folder for `evo-pai report`
REQUIRED = ("label", "method", "target_sparsity", "seed", "test_accuracy")  # what every table reads
NUMERIC = {"target_sparsity": float, "seed": int}  # read strictly; the measured columns may be empty


def load_results(root: Path) -> list[dict]:
    """results.csv's rows, checked: a garbage or foreign CSV is one line naming the file and the fix."""
    path = root / "results.csv"
    if not path.is_file():
        raise EvoPaiError(f"report: {path} not found; pass a study folder written by `evo-pai study`")
    fix = "regenerate it with `evo-pai study` (a rerun only rewrites the table from finished cells)"
    try:
        rows = read_csv(path)
    except UnicodeDecodeError as exc:
        raise EvoPaiError(f"report: {path} is not UTF-8 text (byte at offset {exc.start}); {fix}") from None
    except (csv.Error, OSError) as exc:
        raise EvoPaiError(f"report: {path} is not a readable CSV ({exc}); {fix}") from None
    if not rows:
        raise EvoPaiError(f"report: {path} has no finished cells yet; run `evo-pai study` first")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise EvoPaiError(f"report: {path} lacks the column(s) {', '.join(missing)} (its header: "
                          f"{', '.join(list(rows[0])[:6])}{'...' if len(rows[0]) > 6 else ''}); {fix}")
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        for col, kind in NUMERIC.items():
            try:
                kind(row[col])
            except (TypeError, ValueError):
                raise EvoPaiError(f"report: {path} line {i}: {col} is {row[col]!r}, not a number; {fix}") from None
        if not row["label"] or not row["method"]:
            raise EvoPaiError(f"report: {path} line {i}: empty label or method; {fix}")
    return rows


def group(rows: list[dict], field: str) -> dict[tuple[str, float], list[float]]:
    out: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in rows:
        v = _f(r.get(field))
        if v is not None:
            out[(r["label"], float(r["target_sparsity"]))].append(v)
    return out


def layout(rows: list[dict]) -> tuple[list[str], list[float], set[str]]:
    """Row labels in first-seen order; the pruned sparsities; labels whose method is dense."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    pruned = {r["label"] for r in rows if float(r["target_sparsity"]) > 0}
    dense = set(labels) - pruned  # unpruned rows (target sparsity 0): one column, a reference in every column
    sparsities = sorted({float(r["target_sparsity"]) for r in rows if r["label"] not in dense})
    return labels, sparsities, dense


def value_at(acc: dict, label: str, s: float, dense: set[str]) -> list[float]:
    """Dense rows have one column (sparsity 0) and are shown in every column as a reference."""
    if label in dense:
        return [v for (lab, _), vals in acc.items() if lab == label for v in vals]
    return acc.get((label, s), [])


def accuracy_table(rows: list[dict]) -> str:
    acc = group(rows, "test_accuracy")
    labels, sparsities, dense = layout(rows)
    best = {}
    for s in sparsities:
        means = {lab: statistics.fmean(acc[(lab, s)]) for lab in labels if lab not in dense and acc.get((lab, s))}
        best[s] = max(means.values()) if means else None
    head = "| method | " + " | ".join(f"{100 * s:g} %" for s in sparsities) + " |"
    lines = [head, "|---|" + "---|" * len(sparsities)]
    for lab in labels:
        cells = []
        for s in sparsities:
            vals = value_at(acc, lab, s, dense)
            if not vals:
                cells.append("–")
                continue
            m, sd, n = _stats(vals)
            text = f"{100 * m:.2f} ± {100 * sd:.2f}" + (f" (n={n})" if n != _n_expected(rows) else "")
            bold = lab not in dense and best[s] is not None and abs(m - best[s]) < 1e-12
            cells.append(f"**{text}**" if bold else text)
        lines.append(f"| {lab}{' (0 %)' if lab in dense else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _n_expected(rows: list[dict]) -> int:
    return len({r["seed"] for r in rows})


def compute_table(rows: list[dict]) -> str:
    ep, fl = group(rows, "search_model_epochs"), group(rows, "search_flops_dense")
    tr = group(rows, "train_model_epochs")
    tf = group(rows, "train_flops")
    labels, sparsities, dense = layout(rows)
    lines = ["| method | " + " | ".join(f"{100 * s:g} %" for s in sparsities) + " |", "|---|" + "---|" * len(sparsities)]
    for lab in labels:
        cells = []
        for s in sparsities:
            e, f, t = value_at(ep, lab, s, dense), value_at(fl, lab, s, dense), value_at(tr, lab, s, dense)
            x = value_at(tf, lab, s, dense)
            train = f"; {statistics.fmean(x):.2e} train" if x else ""
            cells.append(f"{statistics.fmean(e):.1f} / {statistics.fmean(t):.1f} ({statistics.fmean(f):.2e}{train})" if e else "–")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(rows: list[dict], a: str, b: str, s: float) -> tuple[float, float, int, int] | None:
    """Mean and std of a − b over the seeds both have, and how many seeds a wins (a dense row, stored at
    sparsity 0, pairs in every column, as it is shown)."""
    dense = layout(rows)[2]
    sa, sb = (0.0 if a in dense else s), (0.0 if b in dense else s)
    by = {(r["label"], float(r["target_sparsity"]), r["seed"]): _f(r["test_accuracy"]) for r in rows}
    diffs = [by[(a, sa, seed)] - by[(b, sb, seed)] for (lab, sp, seed) in by if lab == a and sp == sa
             and (b, sb, seed) in by and by[(a, sa, seed)] is not None and by[(b, sb, seed)] is not None]
    if not diffs:
        return None
    m, sd, n = _stats(diffs)
    return m, sd, n, sum(d > 0 for d in diffs)


def claims_table(rows: list[dict], compare: list[tuple[str, str, str]]) -> str:
    """The study file's `compare:` pairs (row labels a, b, the question), those with both rows present."""
    labels, sparsities, _ = layout(rows)
    lines = ["| comparison (a − b) | " + " | ".join(f"{100 * s:g} %" for s in sparsities) + " |",
             "|---|" + "---|" * len(sparsities)]
    for a, b, question in compare:
        if a not in labels or b not in labels:
            continue
        cells = []
        for s in sparsities:
            p = paired(rows, a, b, s)
            cells.append("–" if p is None else f"{100 * p[0]:+.2f} ± {100 * p[1]:.2f} ({p[3]}/{p[2]})")
        lines.append(f"| {question}: {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(rows: list[dict], spec: TargetsSpec, evolutionary: set[str]) -> list[str]:
    """The study file's targets, checked from the numbers; 'n/a' where a needed row is missing.
    `evolutionary`: the methods that declare themselves evolutionary searches (T1 and T2 pick among their rows)."""
    acc, cost = group(rows, "test_accuracy"), group(rows, "train_model_epochs")
    search = group(rows, "search_model_epochs")
    labels, sparsities, _ = layout(rows)
    method_of = {r["label"]: r["method"] for r in rows}
    evo = [lab for lab in labels if method_of[lab] in evolutionary]
    base = [lab for lab in labels if method_of[lab] in spec.baselines]
    out = []
    for s in [x for x in spec.sparsities if x in sparsities]:
        have = [lab for lab in evo if acc.get((lab, s))]
        if spec.baselines and not have:
            out.append(f"- T1 at {100 * s:g} %: n/a (no evo-pai search row)")
        elif spec.baselines:
            top = max(have, key=lambda lab: statistics.fmean(acc[(lab, s)]))
            m, sd, _ = _stats(acc[(top, s)])
            worse = [lab for lab in base if acc.get((lab, s)) and statistics.fmean(acc[(lab, s)]) > m + sd]
            verdict = "MET" if not worse else "MISSED (beaten by " + ", ".join(worse) + ")"
            out.append(f"- T1 at {100 * s:g} %: best evo-pai search is {top} ({100 * m:.2f} ± {100 * sd:.2f}); "
                       f"at least as accurate as every one of {', '.join(spec.baselines)} (those present) "
                       f"within one std: {verdict}")
        if spec.reference is None:
            continue
        ref = [lab for lab in labels if method_of[lab] == spec.reference and acc.get((lab, s))]
        if not ref or not have:
            out.append(f"- T2 at {100 * s:g} %: n/a (needs {spec.reference} and an evo-pai search)")
        else:
            out.append(_t2(acc, cost, search, ref[0], have, s))
    cheap, full = spec.cheaper or (None, None)
    sh = [lab for lab in labels if method_of[lab] == cheap]
    ks = [lab for lab in labels if method_of[lab] == full]
    if sh and ks:
        for s in sparsities:
            if acc.get((sh[0], s)) and acc.get((ks[0], s)) and search.get((sh[0], s)):
                loss = statistics.fmean(acc[(ks[0], s)]) - statistics.fmean(acc[(sh[0], s)])
                ratio = statistics.fmean(search[(ks[0], s)]) / max(1e-12, statistics.fmean(search[(sh[0], s)]))
                ok = loss <= 0.003 and ratio >= 2.0
                out.append(f"- T3 at {100 * s:g} %: {cheap} loses {100 * loss:+.2f} pt at {ratio:.2f}× less search "
                           f"compute: {'MET' if ok else 'MISSED'}")
    return out


def _t2(acc: dict, cost: dict, search: dict, ref: str, have: list[str], s: float) -> str:
    """Matching the reference (e.g. IMP; −0.3 pt) at ≤ 1/5 of its compute, read two ways: all training (search + final
    training, the natural reading) and the search alone (the final recipe is the same for all)."""
    mean = lambda d, lab: statistics.fmean(d[(lab, s)])  # noqa: E731
    r = mean(acc, ref)
    close = [lab for lab in have if mean(acc, lab) >= r - 0.003]
    total = [lab for lab in close if mean(cost, lab) <= mean(cost, ref) / 5]
    only = [lab for lab in close if mean(search, lab) <= mean(search, ref) / 5]
    detail = ", ".join(f"{lab} {100 * mean(acc, lab):.2f} % at {mean(cost, lab) / mean(cost, ref):.2f}× "
                       f"(search only {mean(search, lab) / max(1e-12, mean(search, ref)):.2f}×)" for lab in have)
    verdict = lambda ok: "MET by " + ", ".join(ok) if ok else "MISSED"  # noqa: E731
    return (f"- T2 at {100 * s:g} %: {ref} {100 * r:.2f} % with {mean(cost, ref):.1f} model-epochs of training "
            f"({mean(search, ref):.1f} in the search); {detail}: all training {verdict(total)}; "
            f"search alone {verdict(only)}")


def predictiveness_section(root: Path) -> str:
    path = root / "predictiveness.csv"
    if not path.is_file():
        return ""
    rows = read_csv(path)
    fitnesses = [k[len("fitness_"):] for k in rows[0] if k.startswith("fitness_")] if rows else []
    table = spearman_table(rows, fitnesses)
    lines = ["## Fitness predictiveness (K-starts candidates)", "",
             "Spearman ρ between each candidate's burst fitness and its test accuracy after the full final "
             "training, per cell (mean ± std over cells); pick gain = accuracy of the candidate the fitness "
             "picks minus the candidates' mean; pick rank = its rank by final accuracy (1 = best).", "",
             "| fitness | cells | ρ | pick gain (pt) | pick rank |", "|---|---|---|---|---|"]
    for t in table:
        rho = "–" if t["rho_mean"] is None else f"{t['rho_mean']:+.2f} ± {t['rho_std']:.2f}"
        gain = "–" if t["pick_gain"] is None else f"{100 * t['pick_gain']:+.2f}"
        rank = "–" if t["pick_rank"] is None else f"{t['pick_rank']:.1f} of {t['candidates']:.0f}"
        lines.append(f"| {t['fitness']} | {t['cells']} | {rho} | {gain} | {rank} |")
    return "\n".join(lines)


def saved_study(root: Path) -> StudySpec | None:
    """The study file `evo-pai study` copied into its folder (None for a folder without one)."""
    from evo_pai.study.grid import load_study

    path = root / STUDY_FILE
    return load_study(path) if path.is_file() else None


MARKERS = "osD^v<>pP*XhdH8"


def style(i: int) -> dict:
    """One colour and marker per row, the same in both plots (tab20: 20 distinct colours)."""
    import matplotlib

    return {"color": matplotlib.colormaps["tab20"](i % 20), "marker": MARKERS[i % len(MARKERS)]}


def plot_accuracy_vs_sparsity(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = group(rows, "test_accuracy")
    labels, sparsities, dense = layout(rows)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x = list(range(len(sparsities)))
    for i, lab in enumerate(labels):
        if lab in dense:
            m, sd, _ = _stats(value_at(acc, lab, 0.0, dense))
            ax.axhline(100 * m, color="k", ls=":", lw=1, label=f"{lab} (0 %)")
            continue
        pts = [(xi, _stats(acc[(lab, s)])) for xi, s in zip(x, sparsities) if acc.get((lab, s))]
        if pts:
            off = (i - len(labels) / 2) * 0.012  # spread error bars so they do not overlap
            ax.errorbar([p[0] + off for p in pts], [100 * p[1][0] for p in pts], yerr=[100 * p[1][1] for p in pts],
                        ms=4, capsize=2, lw=1, label=lab, **style(i))
    ax.set_xticks(x, [f"{100 * s:g} %" for s in sparsities])
    ax.set_xlabel("sparsity")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy_vs_compute(rows: list[dict], path: Path) -> None:
    """Accuracy against all training a method spent (search + final, model-epochs), one panel per sparsity.

    Total rather than search-only compute: equal-epoch controls spend theirs in the final training,
    and the search's share is the total minus the shared final recipe.
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc, cost = group(rows, "test_accuracy"), group(rows, "train_model_epochs")
    labels, sparsities, dense = layout(rows)
    fig, axes = plt.subplots(1, len(sparsities), figsize=(3.2 * len(sparsities), 3.6), squeeze=False)
    for ax, s in zip(axes[0], sparsities):
        for i, lab in enumerate(labels):
            vals = value_at(acc, lab, s, dense)
            if not vals:
                continue
            m, sd, _ = _stats(vals)
            c = statistics.fmean(value_at(cost, lab, s, dense))
            x = c * (1.0 + 0.015 * (i - len(labels) / 2))  # nudge equal-cost rows apart
            ax.errorbar([x], [100 * m], yerr=[100 * sd], ms=5, capsize=2, label=lab, ls="none", **style(i))
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{100 * s:g} % sparsity", fontsize=9)
        ax.set_xlabel("training model-epochs (search + final)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("test accuracy (%)")
    legend: dict = {}
    for ax in axes[0]:  # rows measured at only some sparsities still get a legend entry
        for h, n in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(n, h)
    order = [lab for lab in labels if lab in legend]
    fig.legend([legend[n] for n in order], order, fontsize=7, loc="lower center", ncol=min(9, len(order)))
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evolutionary_methods(spec: StudySpec) -> set[str]:
    """The registered methods (built-ins and the study's plugins) that declare themselves evolutionary searches."""
    from evo_pai.core.registry import METHOD
    from evo_pai.runs.components import load_components

    load_components(spec.base.get("plugins", []))
    return {e.name for e in METHOD if e.obj.evolutionary}


def write_report(root: Path, spec: StudySpec | None = None) -> Path:
    """report.md and the plots from results.csv; the comparisons and targets from the study file
    (`spec`, else the study.yaml `evo-pai study` keeps in the folder)."""
    rows = load_results(root)
    spec = spec if spec is not None else saved_study(root)
    compare = list(spec.compare) if spec else []
    checks = targets(rows, spec.targets, evolutionary_methods(spec)) if spec and spec.targets else []
    seeds = sorted({int(r["seed"]) for r in rows})
    parts = [
        f"# Study report: {root.name}", "",
        f"{len(rows)} finished cells, seeds {seeds}. Test accuracy (%) after the shared final training, "
        "mean ± std over seeds (n shown when fewer seeds finished); **bold** = best pruned method per column. "
        "Dense rows are unpruned (0 %) and repeated in every column as a reference.", "",
        accuracy_table(rows), "",
        "## Compute", "",
        "Search model-epochs / total training model-epochs (search + final) and, in brackets, the search's "
        "training FLOPs (dense-equivalent, 3 × forward per example)"
        + ("; then `train`: the whole training's FLOPs as run (search and final training at the kept weights' "
           "FLOPs: a narrower or sparser network trains cheaper)." if any(r.get("train_flops") for r in rows) else "."), "",
        compute_table(rows), "",
        "## Paired comparisons (same seed, same θ0)", "",
        "Mean ± std over seeds of the test-accuracy difference in points, and (seeds where a wins / seeds).", "",
        claims_table(rows, compare) if compare else "None declared: list them under `compare:` in the study file.", "",
        "## Targets", "",
        *(checks or ["None declared: see `targets:` in docs/results.md's 'Study files'."]), "",
    ]
    pred = predictiveness_section(root)
    if pred:
        parts += [pred, ""]
    parts += ["![accuracy vs sparsity](accuracy_vs_sparsity.png)", "", "![accuracy vs training compute](accuracy_vs_compute.png)", ""]
    write_atomic(root / "report.md", "\n".join(parts).encode())
    plot_accuracy_vs_sparsity(rows, root / "accuracy_vs_sparsity.png")
    plot_accuracy_vs_compute(rows, root / "accuracy_vs_compute.png")
    return root / "report.md"

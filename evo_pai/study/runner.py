"""Running a study: every missing cell (here or in spawned processes), then predictiveness, then the report.

Every cell is an ordinary run folder (cells/<label>-s<sparsity>-seed<seed>-<config hash>); a cell
whose summary.json exists is never recomputed, so a killed study continues where it stopped,
and a changed recipe gets new folders instead of silently reusing old numbers. `dense` does not
depend on the sparsity: it runs once per seed. After every cell results.csv is rewritten from the
finished cells; at the end the predictiveness cells run and the report is regenerated.
"""
from __future__ import annotations

import shutil
import traceback
from pathlib import Path
from typing import Any, Callable

from ..config import to_dict
from ..runs.folder import write_atomic
from .grid import Cell, StudySpec, grid, write_csv

CSV_FIELDS = [
    "label", "method", "target_sparsity", "seed", "sparsity", "test_accuracy", "val_accuracy",
    "search_model_epochs", "final_epochs", "extra_epochs", "train_model_epochs", "search_flops_dense",
    "search_flops_sparse", "inference_flops_sparse", "inference_flops_dense", "compute_saved_ratio",
    "search_seconds", "final_seconds", "wall_seconds", "cell",
]


_DATA_CACHE: dict[str, Any] = {}


def run_cell(cell: Cell, root: Path, threads: int) -> str | None:
    """Run one cell into its folder; returns an error line or None. Safe to call in a worker process."""
    import json

    import torch

    from ..data import load_data
    from ..runs.runner import run_experiment

    torch.set_num_threads(threads)
    out = root / "cells" / cell.dirname
    if (out / "summary.json").exists():
        return None
    if out.exists():
        shutil.rmtree(out)  # a cell killed half-way: start it again
    out.mkdir(parents=True)
    key = json.dumps(to_dict(cell.cfg)["data"], sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_data(cell.cfg.data)
    try:
        run_experiment(cell.cfg, out, None, _DATA_CACHE[key])
    except Exception as exc:  # one failing cell must not stop a long study; it is reported
        (out / "error.txt").write_text(traceback.format_exc())
        return f"{cell.dirname}: {type(exc).__name__}: {exc}"
    return None


def summary_row(cell: Cell, summary: dict) -> dict:
    flops = summary.get("search_flops") or {}
    # the replayed burst of final.init: continue is training too
    final = (float(summary["final_epochs"]) + float(summary.get("extra_epochs") or 0.0)
             + float(summary.get("final_replay_epochs") or 0.0))
    return {
        "label": cell.label, "method": summary["method"], "target_sparsity": cell.sparsity, "seed": cell.seed,
        "sparsity": summary["sparsity"], "test_accuracy": summary["test_accuracy"], "val_accuracy": summary["val_accuracy"],
        "search_model_epochs": summary["search_model_epochs"], "final_epochs": summary["final_epochs"],
        "extra_epochs": summary.get("extra_epochs") or 0.0,
        "train_model_epochs": summary["search_model_epochs"] + final,
        "search_flops_dense": flops.get("dense_equivalent"), "search_flops_sparse": flops.get("sparse"),
        "inference_flops_sparse": summary["flops"]["sparse"], "inference_flops_dense": summary["flops"]["dense"],
        "compute_saved_ratio": summary.get("compute_saved_ratio"), "search_seconds": summary["search_seconds"],
        "final_seconds": summary["final_seconds"], "wall_seconds": summary["wall_seconds"], "cell": cell.dirname,
    }


def collect(cells: list[Cell], root: Path) -> list[dict]:
    import json

    rows = []
    for cell in cells:
        path = root / "cells" / cell.dirname / "summary.json"
        if path.exists():
            rows.append(summary_row(cell, json.loads(path.read_text())))
    return rows


def run_study(spec: StudySpec, root: Path, jobs: int | None = None, say: Callable[[str], None] = print) -> dict:
    """Run every missing cell, then predictiveness, then the report. Returns counts."""
    from .predictiveness import predictiveness_jobs, run_predictiveness_group, write_predictiveness_csv
    from .report import write_report

    root.mkdir(parents=True, exist_ok=True)
    cells = grid(spec)
    jobs = jobs or spec.jobs
    todo = [c for c in cells if not (root / "cells" / c.dirname / "summary.json").exists()]
    say(f"study '{spec.name}': {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run ({jobs} job(s))")
    errors: list[str] = []

    def reporter(write):
        """A job's completion callback: report it, keep its error, rewrite the table with `write`."""
        def finished(name: str, err: str | None) -> None:
            if err:
                errors.append(err)
                say(f"  FAILED {err}")
            else:
                say(f"  done {name}")
            write()
        return finished

    def write_results() -> None:
        write_csv(root / "results.csv", collect(cells, root), CSV_FIELDS)

    groups = predictiveness_jobs(spec)
    _map(jobs, run_cell, [(c, root, spec.threads) for c in todo], [c.dirname for c in todo], reporter(write_results))
    write_results()
    if groups:
        say(f"predictiveness: {len(groups)} K-starts cells, every candidate trained with the final recipe")
        _map(jobs, run_predictiveness_group, [(g, root, spec.threads) for g in groups], [g.dirname for g in groups],
             reporter(lambda: write_predictiveness_csv(root)))
        write_predictiveness_csv(root)
    write_report(root)
    if errors:
        write_atomic(root / "errors.txt", ("\n".join(errors) + "\n").encode())
    elif (root / "errors.txt").exists():
        (root / "errors.txt").unlink()  # a resumed study that fixed its failures
    return {"cells": len(cells), "ran": len(todo), "errors": len(errors)}


def _map(jobs: int, fn: Callable, args: list[tuple], names: list[str], done: Callable[[str, str | None], None]) -> None:
    """Run fn(*a) for every a, in this process (jobs=1) or in `jobs` spawned processes."""
    if jobs <= 1:
        for a, name in zip(args, names):
            done(name, fn(*a))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(fn, *a): name for a, name in zip(args, names)}
        for fut in as_completed(futures):
            try:
                err = fut.result()
            except Exception as exc:  # a worker that died (killed, out of memory)
                err = f"{futures[fut]}: {type(exc).__name__}: {exc}"
            done(futures[fut], err)

"""Running a study: every missing cell (here or in spawned processes), then predictiveness, then the report.

Every cell is an ordinary run folder (cells/<label>-s<sparsity>-seed<seed>-<config hash>); a cell
whose summary.json exists is never recomputed, so a killed study continues where it stopped,
and a changed recipe gets new folders instead of silently reusing old numbers. `dense` does not
depend on the sparsity: it runs once per seed. After every cell results.csv is rewritten from the
finished cells; at the end the predictiveness cells run and the report is regenerated.
"""
from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from evo_pai.core.config import to_dict
from evo_pai.runs.folder import write_atomic
from evo_pai.study.grid import Cell, StudySpec, grid, write_csv

CSV_FIELDS = [
    "label", "method", "target_sparsity", "seed", "sparsity", "macs_removed", "test_accuracy", "val_accuracy",
    "search_model_epochs", "final_epochs", "extra_epochs", "train_model_epochs", "search_flops_dense",
    "search_flops_sparse", "train_flops", "inference_flops_sparse", "inference_flops_dense", "compute_saved_ratio",
    "search_seconds", "final_seconds", "wall_seconds", "cell",
]


_DATA_CACHE: dict[str, Any] = {}


def run_cell(cell: Cell, root: Path, threads: int) -> str | None:
    """Run one cell into its folder; returns an error line or None. Safe to call in a worker process."""
    import json

    import torch

    from evo_pai.data.datasets import load_data
    from evo_pai.runs.runner import run_experiment

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
        run_experiment(cell.cfg, out, None, _DATA_CACHE[key], threads=threads)
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
        "sparsity": summary["sparsity"], "macs_removed": (summary.get("structure") or {}).get("macs_removed"),
        "test_accuracy": summary["test_accuracy"], "val_accuracy": summary["val_accuracy"],
        "search_model_epochs": summary["search_model_epochs"], "final_epochs": summary["final_epochs"],
        "extra_epochs": summary.get("extra_epochs") or 0.0,
        "train_model_epochs": summary["search_model_epochs"] + final,
        "search_flops_dense": flops.get("dense_equivalent"), "search_flops_sparse": flops.get("sparse"),
        "train_flops": (flops.get("sparse") or 0.0) + summary["final_flops"] if "final_flops" in summary else None,
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


def preflight_study(spec: StudySpec) -> list[Cell]:
    """Every cell (and predictiveness group) checked as a run would be — names, parameters, the model
    on the meta device, the backend — before the study folder exists."""
    import json

    from evo_pai.data.checks import check_data
    from evo_pai.data.datasets import load_data
    from evo_pai.core.errors import EvoPaiError
    from evo_pai.runs.preflight import check_backend, check_config, check_model
    from evo_pai.study.predictiveness import predictiveness_jobs

    cells = grid(spec)
    checked: set[str] = set()
    for label, cfg in [(c.dirname, c.cfg) for c in cells] + [(g.dirname, g.cfg) for g in predictiveness_jobs(spec)]:
        raw = to_dict(cfg)
        key = json.dumps({k: raw[k] for k in ("plugins", "data", "model", "masks", "train", "search", "evaluation", "logging")},
                         sort_keys=True)
        if key in checked:
            continue
        checked.add(key)
        try:
            check_config(cfg)
            data_key = json.dumps(raw["data"], sort_keys=True)
            if data_key not in _DATA_CACHE:
                _DATA_CACHE.clear()
                _DATA_CACHE[data_key] = load_data(cfg.data)
                check_data(cfg.data.name, _DATA_CACHE[data_key], cfg.data.workers)  # once per dataset
            check_backend(cfg, _DATA_CACHE[data_key], check_model(cfg, _DATA_CACHE[data_key]))
        except EvoPaiError as exc:
            raise EvoPaiError(f"study '{spec.name}', cell {label}: {exc}") from None
    return cells


def save_study(spec: StudySpec, root: Path) -> None:
    """The study file as run, beside results.csv: `evo-pai report` reads its comparisons and targets."""
    import yaml

    from evo_pai.study.tables import STUDY_FILE

    write_atomic(root / STUDY_FILE, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True).encode())


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def run_study(spec: StudySpec, root: Path, jobs: int | None = None, say: Callable[[str], None] = print,
              select: Callable[[Cell], bool] | None = None) -> dict:
    """Run every missing cell (those `select` keeps: a slice of the grid, whose cells are the full grid's,
    so a later run without it only adds the rest), then predictiveness, then the report. Returns counts."""
    from evo_pai.runs.lock import FolderLock, check_unlocked
    from evo_pai.study.predictiveness import predictiveness_jobs

    cells = preflight_study(spec)  # nothing is created before every cell is known to be valid
    groups = predictiveness_jobs(spec)
    check_unlocked(root, "study")
    root.mkdir(parents=True, exist_ok=True)
    with FolderLock(root, "study"):
        save_study(spec, root)
        return _run_locked(spec, root, cells, groups, jobs or spec.jobs, say, select or (lambda cell: True))


def _run_locked(spec: StudySpec, root: Path, cells: list[Cell], groups: list, jobs: int, say: Callable[[str], None],
                select: Callable[[Cell], bool]) -> dict:
    from evo_pai.core.errors import EvoPaiError
    from evo_pai.study.predictiveness import run_predictiveness_group, write_predictiveness_csv
    from evo_pai.study.tables import write_report

    def log(line: str) -> None:
        say(f"[{_clock()}] {line}")

    missing = [c for c in cells if not (root / "cells" / c.dirname / "summary.json").exists()]
    todo = [c for c in missing if select(c)]
    left = f", {len(missing) - len(todo)} left out by the slice" if len(todo) < len(missing) else ""
    log(f"study '{spec.name}': {len(cells)} cells, {len(cells) - len(missing)} already done, {len(todo)} to run "
        f"({jobs} job(s)){left}")
    errors: list[str] = []

    def reporter(total: int, write):
        """A job's completion callback: report it with an ETA, keep its error, rewrite the table with `write`."""
        started, done = time.perf_counter(), [0]

        def finished(name: str, err: str | None) -> None:
            done[0] += 1
            elapsed = time.perf_counter() - started
            eta = f", ETA {_eta(elapsed / done[0] * (total - done[0]))}" if done[0] < total else ""
            if err:
                errors.append(err)
            log(f"  {'FAILED' if err else 'done'} {err or name} ({done[0]}/{total}{eta})")
            write()
        return finished

    def write_results() -> None:
        write_csv(root / "results.csv", collect(cells, root), CSV_FIELDS)

    _map(jobs, run_cell, [(c, root, spec.threads) for c in todo], [c.dirname for c in todo], reporter(len(todo), write_results))
    write_results()
    if groups and len(todo) == len(missing):  # predictiveness belongs to the whole grid, not a slice
        log(f"predictiveness: {len(groups)} K-starts cells, every candidate trained with the final recipe")
        _map(jobs, run_predictiveness_group, [(g, root, spec.threads) for g in groups], [g.dirname for g in groups],
             reporter(len(groups), lambda: write_predictiveness_csv(root)))
        write_predictiveness_csv(root)
    if errors:  # before the report, which cannot be written when every cell failed
        write_atomic(root / "errors.txt", ("\n".join(errors) + "\n").encode())
    elif (root / "errors.txt").exists():
        (root / "errors.txt").unlink()  # a resumed study that fixed its failures
    if not collect(cells, root):
        first = errors[0] if errors else "no cell finished"
        raise EvoPaiError(f"study '{spec.name}': every cell failed; the first: {first}; every cause is in "
                          f"{root / 'errors.txt'} and each cell's error.txt")
    write_report(root, spec)
    return {"cells": len(cells), "ran": len(todo), "errors": len(errors)}


def _quiet_worker() -> None:
    """Workers leave Ctrl-C to the parent, which stops them: one message, no traceback per process."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _map(jobs: int, fn: Callable, args: list[tuple], names: list[str], done: Callable[[str, str | None], None]) -> None:
    """Run fn(*a) for every a, in this process (jobs=1) or in `jobs` spawned processes."""
    if jobs <= 1:
        for a, name in zip(args, names):
            done(name, fn(*a))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_quiet_worker)
    try:
        futures = {pool.submit(fn, *a): name for a, name in zip(args, names)}
        for fut in as_completed(futures):
            try:
                err = fut.result()
            except Exception as exc:  # a worker that died (killed, out of memory)
                err = f"{futures[fut]}: {type(exc).__name__}: {exc}"
            done(futures[fut], err)
    except BaseException:  # Ctrl-C or a failing callback: stop the workers now, not after their cells
        for proc in list(getattr(pool, "_processes", {}).values()):  # no public API stops running workers
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

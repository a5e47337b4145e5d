"""`evo-pai study`: a grid of methods × sparsities × seeds with one shared recipe, resumable.

Every cell is an ordinary run folder (cells/<label>-s<sparsity>-seed<seed>-<config hash>); a cell
whose summary.json exists is never recomputed, so a killed study continues where it stopped,
and a changed recipe gets new folders instead of silently reusing old numbers. `dense` does not
depend on the sparsity: it runs once per seed. After every cell results.csv is rewritten from the
finished cells; at the end the predictiveness cells run and the report is regenerated.
"""
from __future__ import annotations

import copy
import csv
import io
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import Config, build_config, read_yaml, to_dict
from .errors import EvoPaiError
from .registry import METHOD, load_plugins
from .runs import config_hash, write_atomic

CSV_FIELDS = [
    "label", "method", "target_sparsity", "seed", "sparsity", "test_accuracy", "val_accuracy",
    "search_model_epochs", "final_epochs", "extra_epochs", "train_model_epochs", "search_flops_dense",
    "search_flops_sparse", "inference_flops_sparse", "inference_flops_dense", "compute_saved_ratio",
    "search_seconds", "final_seconds", "wall_seconds", "cell",
]
EVO_METHODS = ("kstarts", "kstarts_sh", "dissipating", "combined")  # evo-pai's searches, for the targets


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MethodSpec(_Spec):
    name: str  # the row label in tables
    method: str | None = None  # registered method; default: the label
    set: dict[str, Any] = {}  # dotted config keys for this row only, e.g. {search.params.extra_epochs: 9}
    sparsities: list[float] | None = None  # default: the study's
    seeds: list[int] | None = None


class PredictivenessSpec(_Spec):
    method: str = "kstarts"  # the label of the K-starts row whose recipe (population, burst) is used
    sparsities: list[float] = []
    seeds: list[int] = []
    fitnesses: list[str] | None = None  # default: every registered fitness


class StudySpec(_Spec):
    name: str = "study"
    base: dict[str, Any] = {}  # an evo-pai config: the recipe every cell shares
    sparsities: list[float] = Field(..., min_length=1)
    seeds: list[int] = Field(..., min_length=1)
    methods: list[str | MethodSpec] = Field(..., min_length=1)
    predictiveness: PredictivenessSpec | None = None
    jobs: int = Field(1, ge=1)  # cells run in parallel (processes)
    threads: int = Field(1, ge=1)  # torch threads per process


@dataclass(frozen=True)
class Cell:
    label: str
    sparsity: float
    seed: int
    cfg: Config

    @property
    def dirname(self) -> str:
        return f"{self.label}-s{self.sparsity:g}-seed{self.seed}-{config_hash(self.cfg)}"


def set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise EvoPaiError(f"study: set key '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def load_study(path: str | Path) -> StudySpec:
    raw = read_yaml(path)
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "study"
        msg = "unknown key; see 'Study files' in docs/results.md" if err["type"] == "extra_forbidden" else err["msg"]
        raise EvoPaiError(f"study config error: {loc}: {msg}") from None


def methods_of(spec: StudySpec) -> list[MethodSpec]:
    out = [MethodSpec(name=m) if isinstance(m, str) else m for m in spec.methods]
    labels = [m.name for m in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise EvoPaiError(f"study: methods: label '{dupes[0]}' appears twice; give each row its own name")
    return out


def cell_config(spec: StudySpec, m: MethodSpec, sparsity: float, seed: int) -> Config:
    raw = copy.deepcopy(spec.base)
    set_dotted(raw, "seed", seed)
    set_dotted(raw, "search.method", m.method or m.name)
    set_dotted(raw, "search.sparsity", sparsity)
    for key, value in m.set.items():
        set_dotted(raw, key, value)
    try:
        return build_config(raw)
    except EvoPaiError as exc:
        raise EvoPaiError(f"study row '{m.name}': {exc}") from None


def grid(spec: StudySpec) -> list[Cell]:
    """Seeds outermost: a study cut short still has every method at every sparsity for its first seeds."""
    load_plugins(spec.base.get("plugins", []))
    methods = methods_of(spec)
    for m in methods:
        if (m.method or m.name) not in METHOD:
            raise EvoPaiError(f"study row '{m.name}': unknown method '{m.method or m.name}'; choose one of {', '.join(METHOD.names())}")
    cells = []
    for seed in spec.seeds:
        for sparsity in spec.sparsities:
            for m in methods:
                if seed not in (m.seeds or spec.seeds) or sparsity not in (m.sparsities or spec.sparsities):
                    continue
                cfg = cell_config(spec, m, sparsity, seed)
                if cfg.search.method == "dense":
                    if sparsity != spec.sparsities[0] and not m.sparsities:
                        continue  # dense ignores the sparsity: once per seed
                    cfg = cell_config(spec, m, 0.0, seed)
                cells.append(Cell(m.name, cfg.search.sparsity, seed, cfg))
    return cells


# ------------------------------------------------------------------------------ running

_DATA_CACHE: dict[str, Any] = {}


def run_cell(cell: Cell, root: Path, threads: int) -> str | None:
    """Run one cell into its folder; returns an error line or None. Safe to call in a worker process."""
    import json

    import torch

    from .data import load_data
    from .runner import run_experiment

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
    final = float(summary["final_epochs"]) + float(summary.get("extra_epochs") or 0.0)
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


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue().encode())


def run_study(spec: StudySpec, root: Path, jobs: int | None = None, say: Callable[[str], None] = print) -> dict:
    """Run every missing cell, then predictiveness, then the report. Returns counts."""
    from .predictiveness import predictiveness_jobs, run_predictiveness_group, write_predictiveness_csv
    from .study_report import write_report

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

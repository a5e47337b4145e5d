"""`evo-pai study`: a grid of methods × sparsities × seeds with one shared recipe, resumable.

Every cell is an ordinary run folder (cells/<label>-s<sparsity>-seed<seed>-<config hash>); a cell
whose summary.json exists is never recomputed, so a killed study continues where it stopped,
and a changed recipe gets new folders instead of silently reusing old numbers. `dense` does not
depend on the sparsity: it runs once per seed. After every cell results.csv is rewritten from the
finished cells; at the end the predictiveness cells run and the report is regenerated.

This module is the study file (`StudySpec`) and its grid of cells; `study.runner` runs them.
"""
from __future__ import annotations

import copy
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evo_pai.core.config import Config, build_config, read_yaml, set_dotted
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import METHOD
from evo_pai.runs.components import load_components
from evo_pai.runs.folder import config_hash, write_atomic


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MethodSpec(_Spec):
    name: str  # the row label in tables
    method: str | None = None  # registered method; default: the label
    set: dict[str, Any] = {}  # dotted config keys for this row only, e.g. {search.params.extra_epochs: 9}
    sparsities: list[float] | None = None  # default: the study's
    seeds: list[int] | None = None


class PredictivenessSpec(_Spec):
    method: str  # the label of the K-starts row whose recipe (population, burst) is used
    sparsities: list[float] = []
    seeds: list[int] = []
    fitnesses: list[str] | None = None  # default: every registered fitness


class TargetsSpec(_Spec):
    """Targets the report checks (MET / MISSED); each names methods of the study's rows."""
    sparsities: list[float] = [0.95, 0.98]  # where T1 and T2 are checked
    baselines: list[str] = []  # T1: the best evolutionary row must match each of these methods within one std
    reference: str | None = None  # T2: matched within 0.3 pt at <= 1/5 of its training compute (e.g. imp)
    cheaper: tuple[str, str] | None = None  # T3: [a, b]: method a loses <= 0.3 pt to b at >= 2x less search compute


class StudySpec(_Spec):
    name: str = "study"
    base: dict[str, Any] = {}  # an evo-pai config: the recipe every cell shares
    sparsities: list[float] = Field(..., min_length=1)
    seeds: list[int] = Field(..., min_length=1)
    methods: list[str | MethodSpec] = Field(..., min_length=1)
    predictiveness: PredictivenessSpec | None = None
    compare: list[tuple[str, str, str]] = []  # [a, b, question]: the report's paired differences a − b (row labels)
    targets: TargetsSpec | None = None
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
    raw["seed"] = seed
    for key, value in {"search.method": m.method or m.name, "search.sparsity": sparsity, **m.set}.items():
        set_dotted(raw, key, value, f"study row '{m.name}': set key '{key}'")
    try:
        return build_config(raw)
    except EvoPaiError as exc:
        raise EvoPaiError(f"study row '{m.name}': {exc}") from None


def grid(spec: StudySpec) -> list[Cell]:
    """Seeds outermost: a study cut short still has every method at every sparsity for its first seeds."""
    load_components(spec.base.get("plugins", []))
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
                if not METHOD.get(cfg.search.method).sparse:
                    if sparsity != spec.sparsities[0] and not m.sparsities:
                        continue  # dense ignores the sparsity: once per seed
                    cfg = cell_config(spec, m, 0.0, seed)
                cells.append(Cell(m.name, cfg.search.sparsity, seed, cfg))
    return cells


def study_slice(spec: StudySpec, rows: list[str] | None, sparsities: list[float] | None):
    """The predicate of `evo-pai study --rows GLOB --sparsity S`: cells of those rows and sparsities (dense
    rows, stored at sparsity 0, go with any sparsity). Refuses a pattern or sparsity that selects nothing."""
    from fnmatch import fnmatchcase

    labels = [m.name for m in methods_of(spec)]
    for pattern in rows or []:
        if not any(fnmatchcase(x, pattern) for x in labels):
            raise EvoPaiError(f"--rows: '{pattern}' matches no row of study '{spec.name}'; its rows: {', '.join(labels)}")
    for s in sparsities or []:
        if s not in spec.sparsities:
            raise EvoPaiError(f"--sparsity: {s:g} is not in study '{spec.name}'s sparsities "
                              f"{', '.join(f'{x:g}' for x in spec.sparsities)}")

    def keep(cell: Cell) -> bool:
        return ((not rows or any(fnmatchcase(cell.label, p) for p in rows))
                and (not sparsities or cell.sparsity == 0.0 or cell.sparsity in sparsities))
    return keep


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue().encode())

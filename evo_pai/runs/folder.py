"""Run folders: naming, refusing to overwrite, atomic JSON writes, the generation log."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import yaml

from evo_pai.core.config import Config, to_dict
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.tensor_files import write_atomic  # noqa: F401  (the run layer's writer, re-exported)

RUNS_ROOT = Path("runs")


def config_hash(cfg: Config) -> str:
    """Of everything but `logging` and `train.threads` (where the log also goes and how many threads train
    change no result worth a new folder name)."""
    raw = {k: v for k, v in to_dict(cfg).items() if k != "logging"}
    raw["train"].pop("threads", None)
    raw["data"].pop("workers", None)  # loader processes change how fast batches come, not which
    return hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:8]


def default_run_dir(cfg: Config, root: Path = RUNS_ROOT) -> Path:
    """runs/<method>-<dataset>-<model>-s<sparsity>-seed<seed>-<hash>; a suffix if it is taken."""
    s = cfg.search
    base = root / f"{s.method}-{cfg.data.name}-{cfg.model.name}-s{s.sparsity:g}-seed{cfg.seed}-{config_hash(cfg)}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def prepare_run_dir(path: Path, overwrite: bool = False, create: bool = True) -> Path:
    if path.exists() and not path.is_dir():
        raise EvoPaiError(f"--out {path}: exists and is not a folder; choose another path")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise EvoPaiError(f"--out {path}: folder exists and is not empty; choose a new folder or pass --overwrite")
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvoPaiError(f"--out {path}: cannot create the run folder ({exc.strerror})") from exc
    return path


def remove_if_unused(path: Path) -> None:
    """Remove a run folder this run created and never wrote to (it failed or was stopped first)."""
    try:
        path.rmdir()  # only an empty folder goes
    except OSError:
        pass  # not empty, or already gone: the error that brought us here is the one to report


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (strict JSON has no inf/nan)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def append_line(path: Path, line: str) -> None:
    """Append one line whole or not at all: a write that fails half-way (ENOSPC) is cut back off."""
    data = line.encode()
    with open(path, "ab") as f:
        size = f.tell()
        try:
            f.write(data)
            f.flush()
        except BaseException as exc:
            try:
                f.truncate(size)
            except OSError:
                pass
            if isinstance(exc, OSError) and exc.filename is None:
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(clean(obj), indent=2, allow_nan=False) + "\n").encode())


def write_config(path: Path, cfg: Config) -> None:
    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())


class GenerationLog:
    """log.jsonl: one JSON object per generation, appended and flushed as it happens."""

    def __init__(self, path: Path | None, records: list[dict] | None = None):
        """A new log (the file is started afresh), or a resumed one holding `records`."""
        self.path = path
        self.records: list[dict] = list(records or [])
        self.sinks: list = []
        if path is not None:
            write_atomic(path, "".join(json.dumps(clean(r), allow_nan=False) + "\n" for r in self.records).encode())

    def __call__(self, record: dict) -> None:
        if self.path is not None:
            append_line(self.path, json.dumps(clean(record), allow_nan=False) + "\n")
        self.records.append(record)
        for sink in self.sinks:  # extra loggers (runs/loggers.py): TensorBoard, ...
            sink(record)

    @staticmethod
    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""The Python entry point: run a config (path, dict or Config) and get summary.json's content back."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Mapping

from evo_pai.core.config import Config, apply_overrides, build_config, read_yaml


def run(config: str | Path | Mapping | Config, out: str | Path | None = None, overrides: list[str] = (),
        overwrite: bool = False) -> dict:
    """Run one search + final training. `out=None` keeps nothing on disk.

    Checked as the CLI checks (runs/preflight.py) before `out` is created; `out` is locked for the run.
    """
    if isinstance(config, Config):
        cfg = build_config(apply_overrides(config.model_dump(mode="json"), list(overrides)))
    else:
        raw = read_yaml(config) if isinstance(config, (str, Path)) else dict(config)
        cfg = build_config(apply_overrides(raw, list(overrides)))
    return run_in_folder(cfg, Path(out) if out is not None else None, overwrite)


def run_in_folder(cfg: Config, run_dir: Path | None, overwrite: bool = False, progress=None) -> dict:
    """The one safe way into a run folder (the CLI's `run` and `evo_pai.run`): a taken or locked folder
    is refused before the data loads, the folder is made only after every check, held for the run,
    and removed again when the run fails before writing anything. `run_dir=None`: nothing on disk."""
    from evo_pai.runs.folder import prepare_run_dir, remove_if_unused
    from evo_pai.runs.lock import FolderLock, check_unlocked
    from evo_pai.runs.preflight import preflight
    from evo_pai.runs.runner import run_experiment

    if run_dir is not None:
        prepare_run_dir(run_dir, overwrite, create=False)
        check_unlocked(run_dir)
    data = preflight(cfg)
    created = run_dir is not None and not run_dir.exists()
    if run_dir is not None:
        prepare_run_dir(run_dir, overwrite)
    with FolderLock(run_dir) if run_dir is not None else nullcontext():
        try:
            return run_experiment(cfg, run_dir, progress, data=data)
        except BaseException:
            if created:
                remove_if_unused(run_dir)  # only while we hold it: never another run's new folder
            raise

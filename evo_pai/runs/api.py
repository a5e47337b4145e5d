"""The Python entry point: run a config (path, dict or Config) and get summary.json's content back."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..config import Config, apply_overrides, build_config, read_yaml
from .components import load_components


def run(config: str | Path | Mapping | Config, out: str | Path | None = None, overrides: list[str] = (),
        overwrite: bool = False) -> dict:
    """Run one search + final training. `out=None` keeps nothing on disk."""
    from .runner import run_experiment
    from .folder import prepare_run_dir

    if isinstance(config, Config):
        cfg = build_config(apply_overrides(config.model_dump(mode="json"), list(overrides)))
    else:
        raw = read_yaml(config) if isinstance(config, (str, Path)) else dict(config)
        cfg = build_config(apply_overrides(raw, list(overrides)))
    load_components(cfg.plugins)
    run_dir = prepare_run_dir(Path(out), overwrite) if out is not None else None
    return run_experiment(cfg, run_dir)

"""`evo_pai.export(run_or_result, model=..., format=...)`: `evo-pai export` from Python.

A run made by `evo_pai.search()` on a module names it `python:<Class>`, which no other process can
build: pass the module (or its factory) as `model=` and it is registered under that name for this
process (its weights are then replaced by the run's trained ones, in a copy). A SearchResult
remembers the module it was searched with.
"""
from __future__ import annotations

from pathlib import Path

from evo_pai.core.config import load_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import MODEL
from evo_pai.models.user_model import UserModel, is_user_name, not_rebuildable


def export(run, model=None, format: str = "compact", out: str | Path | None = None, member: int | None = None) -> dict:
    """Write one export of a run folder or SearchResult (compact, csr, torch-prune, npz, semi-structured,
    pruned);
    returns what `evo-pai export` prints: path, format, sparsity, the read-back check."""
    from evo_pai.runs.export import export as write_export

    if hasattr(run, "run_dir"):  # a SearchResult (which calls this module: no import back)
        run_dir, model = Path(run.run_dir), model if model is not None else run.model
    else:
        run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise EvoPaiError(f"{run_dir}: not a run folder (no config.yaml); pass a SearchResult or a run folder")
    name = load_config(run_dir / "config.yaml").model.name
    if is_user_name(name) and model is not None:
        MODEL.register(name, "the module handed to evo_pai.export()")(UserModel(model))
    elif is_user_name(name) and name not in MODEL:
        raise not_rebuildable(name, f"pass it: evo_pai.export('{run_dir}', model=<that module>, format='{format}')")
    return write_export(run_dir, format, member, Path(out) if out is not None else None)

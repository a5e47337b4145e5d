"""`evo_pai.search(model, train, ...)`: a search on the user's own module and data, from Python.

The module and data are registered in this process under `python:` names (models/user_model.py,
data/user_data.py) and the run is the ordinary one underneath (`run_in_folder`): same preflight, same
backends, same run folder. Nothing exits the interpreter; errors are `EvoPaiError` with the CLI's
line; Ctrl-C leaves the folder resumable (calling `search` again with the same `out` continues it)
and re-raises. Progress is a tqdm.auto bar (a widget in Jupyter, text on a terminal), nothing else.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Mapping

import torch

from evo_pai.core.config import Config, SearchConfig, apply_overrides, build_config, read_yaml, to_dict
from evo_pai.core.errors import EvoPaiError
from evo_pai.data.user_data import read_splits, register_user_data
from evo_pai.models.shapes import eval_mode
from evo_pai.models.user_model import register_user_model
from evo_pai.runs.components import load_components
from evo_pai.runs.progress import RunProgress, describe
from evo_pai.runs.search_result import SearchResult

DEFAULT_CONFIG = "quickstart"  # its search, training and final-training recipe; model and data are the user's


class TqdmProgress(RunProgress):
    """One tqdm.auto bar per stage: a widget in a notebook, a text bar on stderr elsewhere."""

    def __init__(self):
        self.bar, self.label, self.generations = None, "", None

    def phase(self, label: str, total: int | None, generations: int | None = None) -> None:
        import warnings

        from tqdm import TqdmWarning

        with warnings.catch_warnings():  # a notebook without ipywidgets: tqdm's text bar, not its warning too
            warnings.simplefilter("ignore", TqdmWarning)
            from tqdm.auto import tqdm

        self.close()
        self.label, self.generations = label, generations
        self.bar = tqdm(total=total, desc=label, leave=True, dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def generation(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(describe(record, self.generations, short=True))

    def epoch(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.total, self.bar.n = total, done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __exit__(self, *exc: Any) -> None:
        self.close()


def base_config(config: str | Path | Mapping | Config | None) -> dict:
    if config is None:
        raw = read_yaml(DEFAULT_CONFIG)
        return {k: v for k, v in raw.items() if k not in ("model", "data")}
    if isinstance(config, Config):
        return to_dict(config)
    return copy.deepcopy(dict(config)) if isinstance(config, Mapping) else read_yaml(config)


def output_classes(net: torch.nn.Module, x: torch.Tensor) -> int:
    """The width of the model's logits on two training examples (BatchNorm statistics untouched)."""
    probe, first = x[:2], next(iter(net.parameters()), None)
    if first is not None:  # a module already on a GPU, or in float64
        probe = probe.to(first.device, first.dtype) if probe.is_floating_point() else probe.to(first.device)
    try:
        with torch.no_grad(), eval_mode(net):
            out = net(probe)
    except Exception as exc:
        raise EvoPaiError(f"model: the module fails on train's inputs of shape {tuple(x.shape[1:])} "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); check the input shape") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EvoPaiError(f"model: returns {shape} for a batch of 2; evo-pai trains classifiers: return logits of shape "
                          "(batch, classes)")
    return int(out.shape[1])


def make_config(model, train, val, test, method: str, sparsity: float, config, overrides) -> tuple[Config, list[str]]:
    """The run's config: the base recipe, method= / sparsity=, a DataLoader's batch size, the overrides;
    its model and data are the user's, registered under python: names. Returns (config, notes)."""
    load_components()
    raw = base_config(config)
    raw["search"] = {**raw.get("search", {}), "method": method, "sparsity": sparsity}
    splits = read_splits(train, val, test)
    if splits[0].batch_size:
        raw["train"] = {**raw.get("train", {}), "batch_size": splits[0].batch_size}
    seed = int(apply_overrides(copy.deepcopy(raw), list(overrides)).get("seed", 0))
    model_section, net = register_user_model(model, seed)
    raw["model"] = {**{k: v for k, v in raw.get("model", {}).items() if k in ("init", "bias_init")}, **model_section}
    data_section = register_user_data(splits, output_classes(net, splits[0].x))
    raw["data"] = {**{k: v for k, v in raw.get("data", {}).items() if k not in ("name", "params", "root")}, **data_section}
    cfg = build_config(apply_overrides(raw, list(overrides)))
    notes = [n for s in splits if s is not None for n in s.notes]
    if test is None:
        notes.append("test: none given; the answer is scored on the validation data (summary: val_accuracy)")
    return cfg, notes


def existing_run(run_dir: Path, cfg: Config, overwrite: bool) -> str | None:
    """What `run_dir` holds of this very config (model and data fingerprints included): "interrupted"
    (resume it), "finished" (return it as it is), or None (a new run). Another config's run is refused."""
    from evo_pai.core.config import load_config
    from evo_pai.runs.checkpoint import search_hash

    if not overwrite and run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "config.yaml").is_file():
        raise EvoPaiError(f"out: '{run_dir}' exists and is not a run folder; choose a new folder or pass overwrite=True")
    if overwrite or not (run_dir / "config.yaml").is_file():
        return None
    same = search_hash(load_config(run_dir / "config.yaml")) == search_hash(cfg)
    if (run_dir / "summary.json").exists():
        if not same:
            raise EvoPaiError(f"out: '{run_dir}' holds a finished run; choose a new folder or pass overwrite=True")
        return "finished"
    if not same:
        raise EvoPaiError(f"out: '{run_dir}' holds an interrupted run of another config, model or data; pass the same "
                          "ones to resume it, or choose a new folder, or pass overwrite=True")
    return "interrupted"


def finished_result(run_dir: Path, notes: list[str], model) -> SearchResult:
    """The finished run in `run_dir` (same config, model and data) as a SearchResult, without training."""
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    note = (f"out: '{run_dir}' already held a finished run of this config, model and data: returned it without "
            "training (pass overwrite=True to train again)")
    return SearchResult(run_dir, summary, [*notes, note], model)


def resume_run(cfg: Config, run_dir: Path, progress: RunProgress) -> dict:
    """Continue an interrupted run in `run_dir` from its checkpoint (or from the start without one)."""
    from evo_pai.runs.checkpoint import FILENAME, load_checkpoint
    from evo_pai.runs.lock import FolderLock
    from evo_pai.runs.preflight import expected_shapes, preflight
    from evo_pai.runs.runner import run_experiment

    with FolderLock(run_dir):
        data = preflight(cfg)
        path = run_dir / FILENAME
        checkpoint = load_checkpoint(path, cfg, expected_shapes(cfg, data)) if path.exists() else None
        return run_experiment(cfg, run_dir, progress, data, resume=checkpoint)


def search(model, train, *, val=None, test=None, method: str = SearchConfig.model_fields["method"].default,
           sparsity: float = SearchConfig.model_fields["sparsity"].default,
           config: str | Path | Mapping | Config | None = None, overrides: list[str] | tuple[str, ...] = (),
           out: str | Path | None = None, overwrite: bool = False, progress: bool = True) -> SearchResult:
    """Search a sparse mask for `model` on `train` (docs/python.md).

    model: an nn.Module (its current weights are θ0) or a zero-argument function that builds one.
    train / val / test: (x, y) tensors, a map-style Dataset or a DataLoader; val defaults to a seeded split
    of train (data.val_fraction), test to the validation data (the summary then has no test_accuracy).
    config: a dict, a YAML path or a shipped config name (default: quickstart's recipe); method= and
    sparsity= then `overrides` ("search.population=16", as --set) are merged over it.
    out: the run folder (an interrupted one of the same inputs is resumed, a finished one returned as it
    is, without training); None: a temporary folder, removed with the result unless `.save(path)` keeps it.
    """
    from evo_pai.runs.api import run_in_folder
    from evo_pai.runs.folder import write_json

    cfg, notes = make_config(model, train, val, test, method, sparsity, config, overrides)
    run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="evo-pai-")) / "run"
    held = existing_run(run_dir, cfg, overwrite) if out is not None else None
    if held == "finished":  # a notebook cell run twice: the answer is already there
        return finished_result(run_dir, notes, model)
    resume = held == "interrupted"
    bar = TqdmProgress() if progress else RunProgress()
    try:
        with bar:
            summary = resume_run(cfg, run_dir, bar) if resume else run_in_folder(cfg, run_dir, overwrite, bar)
    except KeyboardInterrupt as exc:
        if (run_dir / "config.yaml").is_file():
            exc.add_note(f"evo-pai: the run folder '{run_dir}' is resumable: call evo_pai.search() with the same "
                         f"model, data and settings and out='{run_dir}'")
        raise
    except BaseException:
        if out is None:
            shutil.rmtree(run_dir.parent, ignore_errors=True)
        raise
    if test is None:  # the final "test" scores were taken on the validation data: not a test accuracy
        summary.update(test_accuracy=None, test_loss=None, test_data="none given: val_accuracy scores the answer")
        write_json(run_dir / "summary.json", summary)
    result = SearchResult(run_dir, summary, notes, model)
    if out is None:
        result._temporary = weakref.finalize(result, shutil.rmtree, str(run_dir.parent), True)
    return result

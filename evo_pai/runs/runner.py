"""One run end to end: config -> search -> final training -> run folder."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import Config
from ..data import DataSplits, load_data
from ..errors import EvoPaiError
from ..training.tasks import BurstTask, initial_model
from ..evaluation.base import make_evaluator
from ..search.experiment import Experiment, SearchOutcome
from ..search.nsga2_init import init_tasks
from ..individual import derive_seed
from .checkpoint import FILENAME as CHECKPOINT, Checkpoint, save_checkpoint
from ..training.cost import search_flops
from ..masks import MaskSet
from ..models import count_flops
from ..patterns import parse_pattern
from ..registry import BACKEND, METHOD
from .components import load_components
from .front_plot import plot_front
from .members import headline, member_rows, pick_members, train_members, write_members
from .report import plot_fitness
from .folder import GenerationLog, write_config, write_json

ProgressHook = Callable[[str, int | None], Callable[[int], None]]  # (label, total) -> advance


def seed_everything(seed: int) -> None:
    """DEAP's selection operators draw from Python's `random`; seed every RNG a search touches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def expected_search_tasks(cfg: Config) -> int | None:
    s = cfg.search
    return {"kstarts": s.population, "combined": s.population * s.generations, "dissipating": s.dg.epochs,
            "nsga2": s.population * s.generations + init_tasks(cfg),
            "dense": 0, "random": 0}.get(s.method)


def extra_epochs(cfg: Config) -> float:
    """search.params.extra_epochs: equal-epoch controls train the final mask this much longer."""
    value = cfg.search.params.get("extra_epochs", 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise EvoPaiError(f"search.params.extra_epochs: must be a number >= 0, got {value!r}")
    return float(value)


def final_training(exp: Experiment, outcome: SearchOutcome):
    cfg = exp.cfg
    seed = outcome.final_seed if outcome.final_seed is not None else derive_seed(cfg.seed, "final")
    task = BurstTask(outcome.mask, outcome.pre_epochs + cfg.final.epochs + extra_epochs(cfg), seed,
                     start=outcome.final_start, keep_state=True, test=True)
    return exp.run_task(task)


def preflight(cfg: Config) -> DataSplits:
    """Everything that can reject the input, done before a run folder exists: names, data, model."""
    load_components(cfg.plugins)
    method = METHOD.get(cfg.search.method)
    method_check = getattr(method, "preflight", None)
    if method_check:
        method_check(cfg)  # e.g. nsga2: objectives, density grid, mutation names
    pattern = parse_pattern(cfg.masks.pattern)
    if pattern and cfg.search.method not in ("dense", "nsga2") and 1.0 - cfg.search.sparsity > pattern[0] / pattern[1] + 1e-9:
        raise EvoPaiError(f"search.sparsity: masks.pattern {cfg.masks.pattern} keeps at most {pattern[0]} of every "
                          f"{pattern[1]} weights; use a sparsity >= {1 - pattern[0] / pattern[1]:g}")
    if cfg.final.members != "all" and not getattr(method, "multi_member", False):
        raise EvoPaiError(f"final.members: only a method with several answers (nsga2) picks members; "
                          f"'{cfg.search.method}' has one winner — remove final.members")
    backend_check = getattr(BACKEND.get(cfg.evaluation.backend), "preflight", None)
    if backend_check:
        backend_check(cfg)  # e.g. ray: is evaluation.address well formed and answering?
    data = load_data(cfg.data)
    initial_model(cfg, data)
    return data


def run_experiment(cfg: Config, out: Path | None, progress: ProgressHook | None = None,
                   data: DataSplits | None = None, resume: Checkpoint | None = None) -> dict:
    """Run the configured method and write the run folder; returns summary.json's content.

    With `resume` (a checkpoint read from `out`), the search continues where it was written.
    """
    t0 = time.perf_counter() - (float(resume.header["elapsed"]) if resume else 0.0)
    load_components(cfg.plugins)
    method = METHOD.get(cfg.search.method)
    seed_everything(cfg.seed)
    data = data if data is not None else load_data(cfg.data)
    log = GenerationLog(out / "log.jsonl" if out else None, resume.records if resume else None)
    if out:
        write_config(out / "config.yaml", cfg)
        if resume is None:  # a checkpoint left by an earlier run in an overwritten folder is not ours
            (out / CHECKPOINT).unlink(missing_ok=True)
    with make_evaluator(cfg, data) as evaluator:
        exp = Experiment(cfg, evaluator, data, log)
        exp.progress = progress("search", expected_search_tasks(cfg)) if progress else None
        if out:  # the search calls this after each completed generation
            exp.checkpoint = lambda state: save_checkpoint(out / CHECKPOINT, cfg, state, exp, log.records,
                                                           time.perf_counter() - t0)
        if resume:
            resume.restore(exp)  # RNG states, evaluator counters, exp.resume_state
            if exp.progress:
                exp.progress(resume.tasks_done)
        outcome = method(exp)
        if not isinstance(outcome, SearchOutcome):
            raise EvoPaiError(f"search.method '{cfg.search.method}' returned {type(outcome).__name__}, not a SearchOutcome")
        search_epochs, search_seconds = evaluator.epochs_spent, time.perf_counter() - t0
        flops = search_flops(exp.model, data.input_shape, data.n_train, search_epochs, dict(getattr(evaluator, "kept_epochs", {})))
        t1 = time.perf_counter()
        trained: dict = {}
        if outcome.members is not None:  # several answers: train the picked front members
            picks = len(pick_members(outcome.members, cfg.final.members))
            trained = train_members(exp, outcome, extra_epochs(cfg), progress("final training", picks) if progress else None)
            head = headline(outcome, trained, cfg.search.sparsity)
            outcome.mask, final = outcome.members[head].mask, trained[head]
            outcome.extra["headline_member"] = head
        else:
            advance = progress("final training", 1) if progress else None
            final = final_training(exp, outcome)
            if advance:
                advance(1)
        final_seconds = time.perf_counter() - t1
        backend, device = cfg.evaluation.backend, str(getattr(evaluator, "device_name", cfg.evaluation.device))
    summary = {
        "method": cfg.search.method,
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "target_sparsity": cfg.search.sparsity if cfg.search.method != "dense" else 0.0,
        "sparsity": outcome.mask.sparsity(),
        "test_accuracy": final.metrics.get("test_accuracy"),
        "test_loss": final.metrics.get("test_loss"),
        "val_accuracy": final.metrics.get("val_accuracy"),
        "search_model_epochs": search_epochs,
        "search_flops": flops,  # training FLOPs the search spent (see evo_pai/cost.py)
        "final_epochs": cfg.final.epochs,
        "extra_epochs": extra_epochs(cfg),
        "final_init": cfg.final.init,
        "search_seconds": search_seconds,
        "final_seconds": final_seconds,
        "wall_seconds": time.perf_counter() - t0,
        "seed": cfg.seed,
        "backend": backend,
        "device": device,
        "flops": count_flops(exp.model, data.input_shape, dict(outcome.mask)),
        "input_shape": list(data.input_shape),  # what `evo-pai export` rebuilds the model with
        "num_classes": data.num_classes,
        "dead_units": outcome.mask.dead_units(),
        "layer_sparsity": outcome.mask.layer_sparsity(),
        "cache_hits": evaluator.cache_hits,
        "fitness_failures": exp.fitness_failures,
        "generations_logged": len(log.records),
        **outcome.extra,
    }
    rows = None
    if outcome.members is not None:
        rows = member_rows(outcome, trained, list(cfg.search.nsga2.objectives[1:]))
        summary["members"] = rows
    if out:
        if rows is not None:
            write_members(out, outcome, trained, rows)
            plot_front(log.records, rows, out / "front.png", f"{cfg.search.method} on {cfg.data.name} ({cfg.model.name})")
        save_artifacts(out, outcome.mask, final.state, log.records, summary)
    return summary


def save_artifacts(out: Path, mask: MaskSet, state: dict | None, records: list[dict], summary: dict) -> None:
    from safetensors.torch import save_file

    mask.save(out / "mask.safetensors")
    summary["sparsity"] = MaskSet.load(out / "mask.safetensors").sparsity()  # measured from the file
    if state is not None:
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    if records:
        plot_fitness(records, out / "fitness.png", f"{summary['method']} on {summary['dataset']} ({summary['model']})")
    write_json(out / "summary.json", summary)

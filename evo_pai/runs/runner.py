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
from ..training.tasks import BurstTask
from ..evaluation.base import make_evaluator
from ..search.experiment import Experiment, SearchOutcome
from ..search.nsga2_init import init_tasks
from ..individual import derive_seed
from .checkpoint import FILENAME as CHECKPOINT, Checkpoint, save_checkpoint
from ..training.cost import search_flops
from ..masks import MaskSet
from ..models import count_flops
from ..registry import METHOD
from .components import load_components
from .loggers import open_loggers
from .preflight import extra_epochs, preflight  # noqa: F401  (preflight: the runner's public entry)
from .front_plot import plot_front
from .members import headline, member_rows, pick_members, train_members, write_members
from .report import plot_fitness
from .folder import GenerationLog, write_atomic, write_config, write_json

ProgressHook = Callable[[str, int | None], Callable[[int], None]]  # (label, total) -> advance


def seed_everything(seed: int) -> None:
    """DEAP's selection operators draw from Python's `random`; seed every RNG a search touches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def expected_search_tasks(cfg: Config) -> int | None:
    s = cfg.search
    return {"kstarts": s.population, "combined": s.population * s.generations, "dissipating": s.dg.epochs,
            "nsga2": s.population * s.generations + init_tasks(cfg), "dense": 0, "random": 0}.get(s.method)


def final_training(exp: Experiment, outcome: SearchOutcome):
    """(final result, epochs spent re-running the winner's burst for final.init: continue)."""
    cfg = exp.cfg
    seed = outcome.final_seed if outcome.final_seed is not None else derive_seed(cfg.seed, "final")
    start, opt, replayed = outcome.final_start, outcome.final_opt_state, 0.0
    if outcome.replay is not None:  # the winner's trained state was not kept: train its burst again
        res = exp.run_task(outcome.replay)
        start, opt, replayed = res.state, res.opt_state, res.epochs
    # Its own run: the learning-rate schedule spans the final epochs, whatever the search's was.
    task = BurstTask(outcome.mask, cfg.final.epochs + extra_epochs(cfg), seed, start=start, keep_state=True, test=True,
                     opt_state=opt if cfg.search.optimizer_state == "keep" else None)
    return exp.run_task(task), replayed


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
    with make_evaluator(cfg, data) as evaluator, open_loggers(cfg, out) as sinks:
        # Written only once the evaluator stands (a Ray that cannot start changes nothing in `out`).
        log = GenerationLog(out / "log.jsonl" if out else None, resume.records if resume else None)
        log.sinks = sinks
        if out:
            write_config(out / "config.yaml", cfg)
            if resume is None:  # a checkpoint or summary left by an earlier run in an overwritten folder is not ours
                (out / CHECKPOINT).unlink(missing_ok=True)
                (out / "summary.json").unlink(missing_ok=True)
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
            trained, replayed = train_members(exp, outcome, extra_epochs(cfg),
                                              progress("final training", picks) if progress else None)
            head = headline(outcome, trained, cfg.search.sparsity)
            outcome.mask, final = outcome.members[head].mask, trained[head]
            outcome.extra["headline_member"] = head
        else:
            advance = progress("final training", 1) if progress else None
            final, replayed = final_training(exp, outcome)
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
        "final_replay_epochs": replayed,  # final.init: continue re-ran the winner's burst: training too
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
    from safetensors.torch import save

    mask.save(out / "mask.safetensors")
    summary["sparsity"] = MaskSet.load(out / "mask.safetensors").sparsity()  # measured from the file
    if state is not None:  # bytes, then an atomic write: a full disk is an OSError naming the file
        write_atomic(out / "model.safetensors", save({k: v.contiguous() for k, v in state.items()}))
    if records:
        plot_fitness(records, out / "fitness.png", f"{summary['method']} on {summary['dataset']} ({summary['model']})")
    write_json(out / "summary.json", summary)

"""One run end to end: config -> search -> final training -> run folder."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evo_pai.core.config import Config
from evo_pai.data.datasets import DataSplits, load_data
from evo_pai.core.errors import EvoPaiError
from evo_pai.training.burst import BurstResult
from evo_pai.training.tasks import BurstTask, initial_model
from evo_pai.evaluation.base import make_evaluator
from evo_pai.search.channel_mode import structure_summary
from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.core.individual import derive_seed
from evo_pai.runs.checkpoint import FILENAME as CHECKPOINT, Checkpoint, save_checkpoint
from evo_pai.training.cost import search_flops
from evo_pai.training.threads import ThreadChoice, ThreadGovernor, choose_threads, torch_threads
from evo_pai.core.masks import MaskSet
from evo_pai.models.networks import count_flops
from evo_pai.models.prunable import masked_roles, roles_table
from evo_pai.core.registry import METHOD, Method
from evo_pai.runs.components import load_components
from evo_pai.runs.loggers import open_loggers
from evo_pai.runs.preflight import extra_epochs, preflight  # noqa: F401  (preflight: the runner's public entry)
from evo_pai.runs.front_plot import plot_front
from evo_pai.runs.members import headline, member_rows, pick_members, train_members, write_members
from evo_pai.runs.plots import plot_fitness, plot_hyperparams, plot_layers
from evo_pai.runs.folder import GenerationLog, write_atomic, write_config, write_json
from evo_pai.runs.progress import RunProgress

def seed_everything(seed: int) -> None:
    """DEAP's selection operators draw from Python's `random`; seed every RNG a search touches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def final_training(exp: Experiment, outcome: SearchOutcome, on_epoch=None):
    """(final result, epochs spent re-running the winner's burst for final.init: continue);
    `on_epoch(done, total)` hears the final training's epochs."""
    cfg = exp.cfg
    seed = outcome.final_seed if outcome.final_seed is not None else derive_seed(cfg.seed, "final")
    start, opt, replayed = outcome.final_start, outcome.final_opt_state, 0.0
    if outcome.replay is not None:  # the winner's trained state was not kept: train its burst again
        res = exp.run_task(outcome.replay)
        start, opt, replayed = res.state, res.opt_state, res.epochs
    # Its own run: the learning-rate schedule spans the final epochs, whatever the search's was.
    task = BurstTask(outcome.mask, cfg.final.epochs + extra_epochs(cfg), seed, start=start, keep_state=True, test=True,
                     opt_state=opt if cfg.search.optimizer_state == "keep" else None, dynamic=outcome.dynamic,
                     lr_scale=outcome.final_lr_scale, weight_decay=outcome.final_weight_decay)
    return exp.run_task(task, on_epoch), replayed


def thread_choice(cfg: Config, data: DataSplits, default: int | None = None) -> ThreadChoice:
    """train.threads, the caller's default, OMP_NUM_THREADS or auto (by the model's work per step)."""
    with torch.random.fork_rng(devices=[]):  # building a probe model must not move any RNG
        model = initial_model(cfg, data)
    ev = cfg.evaluation
    models = (ev.chunk_size or cfg.search.population) if ev.backend == "vectorized" else 1
    return choose_threads(cfg.train.threads, model, data.input_shape, cfg.train.batch_size, models, default)


def run_experiment(cfg: Config, out: Path | None, progress: RunProgress | None = None,
                   data: DataSplits | None = None, resume: Checkpoint | None = None,
                   threads: int | None = None) -> dict:
    """Run the configured method and write the run folder; returns summary.json's content.

    With `resume` (a checkpoint read from `out`), the search continues where it was written.
    `threads`: torch threads when train.threads is not set (a study's per-cell share); None: auto.
    """
    load_components(cfg.plugins)
    data = data if data is not None else load_data(cfg.data)
    choice = thread_choice(cfg, data, threads)
    with torch_threads(choice.threads):
        return _run(cfg, out, progress, data, resume, choice)


@dataclass
class Display:
    """The run's progress display and the thread governor, told of every finished task and epoch."""
    progress: RunProgress
    governor: ThreadGovernor

    def advance(self, n: int) -> None:
        self.progress.advance(n)
        self.governor.check()

    def epoch(self, done: int, total: int) -> None:
        self.progress.epoch(done, total)
        self.governor.check()


@dataclass
class FinalResult:
    result: BurstResult  # the headline answer's final training
    replayed: float  # epochs spent re-running bursts for final.init: continue
    trained: dict  # several answers: member index -> its final training
    seconds: float


def _run(cfg: Config, out: Path | None, progress: RunProgress | None, data: DataSplits,
         resume: Checkpoint | None, threads: ThreadChoice) -> dict:
    """The steps of a run, top to bottom: set up, search, search costs, final training, summary, artifacts."""
    t0 = time.perf_counter() - (float(resume.header["elapsed"]) if resume else 0.0)
    method = METHOD.get(cfg.search.method)
    seed_everything(cfg.seed)
    display = Display(progress if progress is not None else RunProgress(), ThreadGovernor(threads))
    with make_evaluator(cfg, data) as evaluator, open_loggers(cfg, out) as sinks:
        log = open_folder(cfg, out, resume, sinks)  # only once the evaluator stands: a Ray that cannot start changes nothing
        exp = set_up(cfg, method, evaluator, data, log, display, out, resume, t0)
        outcome = search(cfg, method, exp)
        costs = search_costs(exp, evaluator, data, t0)
        final = final_result(exp, outcome, display)
    summary = summarize(cfg, method, exp, evaluator, data, outcome, final, costs, threads, display, log, t0)
    if out:
        write_run(out, cfg, outcome, final, summary, log.records)
    return summary


def open_folder(cfg: Config, out: Path | None, resume: Checkpoint | None, sinks) -> GenerationLog:
    """The generation log (continued on resume) and config.yaml; a checkpoint or summary left by an
    earlier run in an overwritten folder is removed (it is not this run's)."""
    log = GenerationLog(out / "log.jsonl" if out else None, resume.records if resume else None)
    log.sinks = sinks
    if out:
        write_config(out / "config.yaml", cfg)
        if resume is None:
            (out / CHECKPOINT).unlink(missing_ok=True)
            (out / "summary.json").unlink(missing_ok=True)
    return log


def set_up(cfg: Config, method: Method, evaluator, data: DataSplits, log: GenerationLog, display: Display,
           out: Path | None, resume: Checkpoint | None, t0: float) -> Experiment:
    """The Experiment a method receives, wired to the log, the display (the method's declared plan) and
    the checkpoint; on resume, every RNG state and counter restored."""

    def logged(record: dict) -> None:  # every method logs each generation: the display follows the log
        log(record)
        display.progress.generation(record)

    exp = Experiment(cfg, evaluator, data, logged)
    tasks, generations = method.progress_plan(cfg)
    display.progress.phase("search", tasks, generations)
    exp.progress = display.advance
    if out:  # the search calls this after each completed generation
        exp.checkpoint = lambda state: save_checkpoint(out / CHECKPOINT, cfg, state, exp, log.records,
                                                       time.perf_counter() - t0)
    if resume:
        resume.restore(exp)  # RNG states, evaluator counters, exp.resume_state
        display.progress.advance(resume.tasks_done)
        if log.records:
            display.progress.generation(log.records[-1])
    return exp


def search(cfg: Config, method: Method, exp: Experiment) -> SearchOutcome:
    outcome = method(exp)
    if not isinstance(outcome, SearchOutcome):
        raise EvoPaiError(f"search.method '{cfg.search.method}' returned {type(outcome).__name__}, not a SearchOutcome")
    exp.progress = None  # what follows is not search work
    return outcome


def search_costs(exp: Experiment, evaluator, data: DataSplits, t0: float) -> dict:
    """Model-epochs, seconds and training FLOPs (training/cost.py) the search spent."""
    epochs = evaluator.epochs_spent
    return {"search_model_epochs": epochs, "search_seconds": time.perf_counter() - t0,
            "search_flops": search_flops(exp.model, data.input_shape, data.n_train, epochs,
                                         dict(getattr(evaluator, "kept_epochs", {})))}


def final_result(exp: Experiment, outcome: SearchOutcome, display: Display) -> FinalResult:
    """The final training: of the winner, or (several answers) of the picked members, the headline's
    mask then becoming `outcome.mask`."""
    cfg, t1 = exp.cfg, time.perf_counter()
    if outcome.members is not None:
        display.progress.phase("final training", len(pick_members(outcome.members, cfg.final.members)))
        trained, replayed = train_members(exp, outcome, extra_epochs(cfg), display.progress.advance)
        head = headline(outcome, trained, cfg.search.sparsity)
        outcome.mask, final = outcome.members[head].mask, trained[head]
        outcome.extra["headline_member"] = head
        return FinalResult(final, replayed, trained, time.perf_counter() - t1)
    epochs = math.ceil(cfg.final.epochs + extra_epochs(cfg))
    display.progress.phase("final training", epochs)
    heard: list[int] = []
    final, replayed = final_training(exp, outcome, lambda done, total: (heard.append(done), display.epoch(done, total)))
    if not heard:  # a backend that cannot report epochs (Ray actors): done at once
        display.progress.epoch(epochs, epochs)
    return FinalResult(final, replayed, {}, time.perf_counter() - t1)


def final_mask(outcome: SearchOutcome, final: FinalResult) -> MaskSet:
    return final.result.mask if final.result.mask is not None else outcome.mask  # dynamic training: its last mask


def summarize(cfg: Config, method: Method, exp: Experiment, evaluator, data: DataSplits, outcome: SearchOutcome,
              final: FinalResult, costs: dict, threads: ThreadChoice, display: Display, log: GenerationLog,
              t0: float) -> dict:
    """summary.json's content."""
    mask, res = final_mask(outcome, final), final.result
    flops = count_flops(exp.model, data.input_shape, dict(mask))
    summary = {
        "method": cfg.search.method,
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "target_sparsity": cfg.search.sparsity if method.sparse else 0.0,
        "sparsity": mask.sparsity(),
        "test_accuracy": res.metrics.get("test_accuracy"),
        "test_loss": res.metrics.get("test_loss"),
        "val_accuracy": res.metrics.get("val_accuracy"),
        "search_model_epochs": costs["search_model_epochs"],
        "search_flops": costs["search_flops"],  # training FLOPs the search spent (training/cost.py)
        "final_epochs": cfg.final.epochs,
        "extra_epochs": extra_epochs(cfg),
        "final_replay_epochs": final.replayed,  # final.init: continue re-ran the winner's burst: training too
        "final_init": cfg.final.init,
        "search_seconds": costs["search_seconds"],
        "final_seconds": final.seconds,
        "wall_seconds": time.perf_counter() - t0,
        "seed": cfg.seed,
        "backend": cfg.evaluation.backend,
        "device": str(getattr(evaluator, "device_name", cfg.evaluation.device)),
        # torch intra-op threads (training/threads.py); auto may lower them while other processes load the CPUs
        "threads": {"count": threads.threads, "reason": threads.reason, "adjusted": display.governor.changes},
        "flops": flops,
        # training FLOPs of the final run (forward + backward = 3 x the kept forward FLOPs per example):
        # with search_flops' sparse count, what a row's whole training cost (narrow networks train cheaper)
        "final_flops": 3.0 * flops["sparse"] * data.n_train
        * (cfg.final.epochs + extra_epochs(cfg) + final.replayed),
        "input_shape": list(data.input_shape),  # what `evo-pai export` rebuilds the model with
        "num_classes": data.num_classes,
        "dead_units": mask.dead_units(),
        "layer_sparsity": mask.layer_sparsity(),
        "parameters": roles_table(masked_roles(exp.model, cfg.masks)),  # every parameter: prunable or not, and why
        "cache_hits": evaluator.cache_hits,
        "fitness_failures": exp.fitness_failures,
        "generations_logged": len(log.records),
        **outcome.extra,
        **divergence(res, log.records),  # diverged: no accuracy reported as a result (overrides the above)
        **({"mask_updates": int(res.metrics["mask_updates"]), "mask_turnover": res.metrics["mask_turnover"]}
           if res.mask is not None else {}),
    }
    if outcome.members is not None:
        summary["members"] = member_rows(outcome, final.trained, list(cfg.search.nsga2.objectives[1:]))
    if exp.channels:  # masks.granularity: channel — what was removed, in MACs and widths
        summary["structure"] = structure_summary(exp.structure, mask)
    return summary


def divergence(res: BurstResult, records: list[dict]) -> dict:
    """`diverged`: the answer's final training went non-finite — where, and no accuracy reported as a result;
    `search_diverged`: bursts of the search that did (each had the worst fitness) and the first generation."""
    out: dict = {"diverged": not res.finite}
    if not res.finite:
        epoch = res.metrics.get("diverged_epoch")
        out.update(diverged_at={"stage": "final training", "epoch": None if epoch is None else int(epoch),
                                **({"error": res.metrics["error"]} if "error" in res.metrics else {})},
                   test_accuracy=None, test_loss=None, val_accuracy=None)
    hit = [r for r in records if r.get("diverged")]
    if hit:
        out["search_diverged"] = {"bursts": sum(r["diverged"] for r in hit), "first_generation": hit[0].get("generation")}
    return out


def write_run(out: Path, cfg: Config, outcome: SearchOutcome, final: FinalResult, summary: dict,
              records: list[dict]) -> None:
    """The run folder's artifacts: members and front (several answers), mask, model, plots, summary.json last."""
    if outcome.members is not None:
        write_members(out, outcome, final.trained, summary["members"])
        plot_front(records, summary["members"], out / "front.png", f"{cfg.search.method} on {cfg.data.name} ({cfg.model.name})",
                   summary.get("uniform_reference"))
    save_artifacts(out, final_mask(outcome, final), final.result.state, records, summary)


def save_artifacts(out: Path, mask: MaskSet, state: dict | None, records: list[dict], summary: dict) -> None:
    from safetensors.torch import save

    mask.save(out / "mask.safetensors")
    summary["sparsity"] = MaskSet.load(out / "mask.safetensors").sparsity()  # measured from the file
    if state is not None:  # bytes, then an atomic write: a full disk is an OSError naming the file
        write_atomic(out / "model.safetensors", save({k: v.contiguous() for k, v in state.items()}))
    title = f"{summary['method']} on {summary['dataset']} ({summary['model']})"
    if records:
        target = summary["target_sparsity"] or None  # an unpruned run has no target line
        plot_fitness(records, out / "fitness.png", title, target, summary.get("candidates"), summary.get("winner_index"))
    if any(r.get("hparams") for r in records):
        plot_hyperparams(records, out / "hyperparams.png", title)
    plot_layers(mask.counts(), mask.sizes(), out / "layers.png", f"final mask per layer: {title}")
    write_json(out / "summary.json", summary)

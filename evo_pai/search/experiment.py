"""Experiment: what every search method needs — θ0's shapes, masks, the evaluator, fitness, logging.

Search methods receive an `Experiment` and return a `SearchOutcome`; they never touch devices,
processes or files directly.
"""
from __future__ import annotations

import inspect
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from evo_pai.core.config import Config
from evo_pai.data.datasets import DataSplits
from evo_pai.core.errors import EvoPaiError, brief
from evo_pai.training.tasks import BurstTask, Evaluator, initial_model
from evo_pai.operators.fitness import WORST, score
from evo_pai.core.individual import Individual, derive_seed
from evo_pai.core.masks import MaskSet
from evo_pai.models.networks import masked_names, output_layer_name
from evo_pai.operators.variation import PruneStep
from evo_pai.core.patterns import parse_pattern
from evo_pai.models.units import links
from evo_pai.core.registry import MUTATION
from evo_pai.training.burst import BurstResult, steps_for
from evo_pai.training.carry import Carry
from evo_pai.training.optim import OptState
from evo_pai.search.mutation_check import check_mutation
from evo_pai.search import channel_mode
from evo_pai.core.registry import CROSSOVER
from evo_pai.training.drop_grow import DynamicSpec

Logger = Callable[[dict], None]


def level(ind: Individual) -> float:
    """Where a member sits on the search's sparsity axis: the fraction of MACs removed for channel masks
    (set when it is scored), of weights removed otherwise."""
    return ind.metrics.get("macs_removed", ind.mask.sparsity()) if ind.metrics else ind.mask.sparsity()


@dataclass
class SearchOutcome:
    """A method's answer: the mask to train, and where final training starts."""

    mask: MaskSet
    final_start: dict[str, torch.Tensor] | None = None  # None: rewind to θ0
    final_seed: int | None = None  # None: derived from the search seed
    final_opt_state: OptState | None = None  # optimizer state final training continues from
    # final.init: continue without a kept state: the winner's burst, re-run (counted as training)
    # to get its weights and optimizer state; final training continues from them.
    replay: BurstTask | None = None
    dynamic: DynamicSpec | None = None  # the final run updates the mask as it trains (rigl, set)
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific facts for summary.json
    # Several answers (nsga2's non-dominated front): the runner trains the picked members (final.members);
    # `mask` is then the headline member's, the one nearest search.sparsity.
    members: list[Individual] | None = None
    # The winner's own hyperparameters (genes) for the final training: train.lr x lr_scale, weight decay
    final_lr_scale: float = 1.0
    final_weight_decay: float | None = None  # None: train.weight_decay


def hyper(ind: Individual) -> dict:
    """The training hyperparameters an individual's genes set for its bursts (BurstTask fields)."""
    hp = ind.hparams or {}
    return {k: hp[k] for k in ("lr_scale", "weight_decay") if k in hp}


def mutation_params(cfg: Config, name: str) -> dict:
    """The keyword arguments mutation `name` gets from the config (DG's section for the built-ins)."""
    s = cfg.search
    base: dict = {}
    if name == "dissipating_gradients":
        base = {"tau": s.dg.tau, "mode": s.dg.mode, "scope": s.dg.scope, "max_step_fraction": s.dg.max_step_fraction}
    elif name == "magnitude":
        base = {"scope": s.dg.scope}
    return {**base, **s.mutation_params}


def check_mutation_params(name: str, params: dict, field: str) -> None:
    """Refuse parameters mutation `name` does not take, before it is called (also in preflight)."""
    fn = MUTATION.get(name)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(None, None, None, **params)
    except TypeError as exc:
        raise EvoPaiError(f"{field}: mutation '{name}' does not accept them: {exc}") from None


class Experiment:
    def __init__(self, cfg: Config, evaluator: Evaluator, data: DataSplits, log: Logger | None = None):
        self.cfg = cfg
        self.evaluator = evaluator
        self.data = data
        self.model = initial_model(cfg, data)
        self.theta0 = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        names = masked_names(self.model, cfg.masks)
        params = dict(self.model.named_parameters())
        self.shapes = {k: tuple(params[k].shape) for k in names}
        out = output_layer_name(self.model)
        self.output_layer = out if out in self.shapes else None
        self.pattern = parse_pattern(cfg.masks.pattern)
        self._links: list | None = None
        self._structure = None  # masks.granularity: channel — the model's channel groups, built once
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self._log = log or (lambda record: None)
        self.started = time.perf_counter()
        self.fitness_failures: list[dict] = []
        self.resume_state: dict | None = None  # set by the runner when resuming
        self.checkpoint: Callable[[dict], None] = lambda state: None
        self.progress: Callable[[int], None] | None = None  # tasks finished (the runner's search bar)

    # -- masks ------------------------------------------------------------------------
    @property
    def channels(self) -> bool:
        return self.cfg.masks.granularity == "channel"

    @property
    def structure(self):
        """The model's channel groups, proven against physical pruning (models/group_check.py)."""
        if self._structure is None:
            from evo_pai.models.group_check import channel_structure

            self._structure = channel_structure(self.model, self.data.input_shape, list(self.shapes), self.output_layer)
        return self._structure

    def random_mask(self, sparsity: float, seed: int) -> MaskSet:
        m = self.cfg.masks
        if self.channels:  # random widths at the MACs level, random channels
            return channel_mode.random_channel_mask(self.structure, sparsity, seed, m.macs_tolerance, m.min_channels,
                                                    self.output_layer)
        return MaskSet.random(
            self.shapes, sparsity, torch.Generator().manual_seed(seed), m.budget,
            self.output_layer, m.min_output_fan_in, m.allow_empty_layers, self.pattern,
        )

    def dense_mask(self) -> MaskSet:
        """All weights kept; carries masks.pattern, which every later pruning honours."""
        return MaskSet.dense(self.shapes, self.output_layer, self.pattern)

    def prune_step(self, sparsity: float, final: bool, target: float | None = None) -> PruneStep:
        """Where a mutation takes a mask; `target` defaults to search.sparsity (nsga2 moves to any level)."""
        m = self.cfg.masks
        target = self.cfg.search.sparsity if target is None else target
        return PruneStep(sparsity, target, final, m.budget, m.min_output_fan_in, m.allow_empty_layers)

    def mutate(self, ind: Individual, step: PruneStep, name: str | None = None, params: dict | None = None) -> MaskSet:
        """The one place mutations are called: every result is checked against `step` (mutation_check.py)."""
        name = name or self.cfg.search.mutation
        kwargs = self.mutation_params(name) if params is None else params
        field = ("search.mutation_params" if params is None else
                 "search.explore_params" if params is self.cfg.search.explore_params else f"mutation '{name}' parameters")
        check_mutation_params(name, kwargs, field)
        fn = MUTATION.get(name)
        if self.channels:
            kwargs = self._channel_params(fn, kwargs)
        try:
            child = fn(ind, step, self.generator, **kwargs)
        except EvoPaiError:
            raise
        except Exception as exc:  # a user's operator: name it, and where it failed
            raise EvoPaiError(f"mutation '{name}' raised {brief(exc)}; fix the operator") from exc
        if self.channels:
            return channel_mode.check_channel_result(name, self.structure, ind.mask, child, step,
                                                     self.cfg.masks.macs_tolerance)
        return check_mutation(name, ind.mask, child, step)

    def _channel_params(self, fn, params: dict) -> dict:
        m = self.cfg.masks
        return channel_mode.operator_params(fn, params, self.structure, self.theta0, m.macs_tolerance, m.min_channels)

    def swap(self, ind: Individual, sparsity: float) -> MaskSet:
        """A small random move at the same level: what makes a repeated mask new (random_swap of 5 % of
        the weights; for channel masks, widths resampled and repaired)."""
        step = self.prune_step(sparsity, True, sparsity)
        if self.channels:
            return self.mutate(ind, step, "width", {"prob": 0.5, "resample": 0.5, "criterion": "random"})
        return self.mutate(ind, step, "random_swap", {"fraction": 0.05})

    def crossover(self, a: Individual, b: Individual) -> tuple[Individual, Individual]:
        """search.crossover on two parents (structure-aware crossovers get the channel groups)."""
        name = self.cfg.search.crossover
        fn = CROSSOVER.get(name)
        kwargs = {"structure": self.structure} if self.channels and channel_mode.accepts(fn, "structure") else {}
        try:
            return fn(a, b, self.generator, **kwargs)
        except EvoPaiError:
            raise
        except Exception as exc:
            raise EvoPaiError(f"crossover '{name}' raised {brief(exc)}; fix the operator") from exc

    def mutation_params(self, name: str) -> dict:
        if name in ("neuron", "grow_alive"):  # structured: the model's unit chain (sequential models)
            return {"links": self.unit_links(), **mutation_params(self.cfg, name)}
        return mutation_params(self.cfg, name)

    def unit_links(self) -> list:
        if self._links is None:
            self._links = links(self.model)  # refuses a non-sequential model in one line
        return self._links

    # -- evaluation -------------------------------------------------------------------
    def task_seed(self, ind: Individual) -> int:
        return derive_seed(self.cfg.seed, ind.key)

    def steps(self, epochs: float) -> int:
        """Optimizer steps of a run of `epochs` epochs on this training set."""
        return steps_for(epochs, self.data.n_train, self.cfg.train.batch_size)

    def evaluate(self, population: list[Individual], epochs: float | None = None, progress=None,
                 inherit: bool = False, horizon: int | None = None, fitness: str | None = None,
                 costs: Callable[[Individual], tuple[float, ...]] | None = None) -> list[BurstResult]:
        """Burst-train every individual and set its fitness, traits and metrics.

        From θ0, or with `inherit` from each individual's `carry` (θ0 where it has none); then the
        trained state becomes its carry. `horizon`: the lineage's schedule length in steps.
        `fitness` / `costs`: as in `assign` (nsga2's objectives)."""
        epochs = self.cfg.search.burst_epochs if epochs is None else epochs
        tasks = [self.inherited_task(ind, epochs, horizon) if inherit
                 else BurstTask(ind.mask, epochs, self.task_seed(ind), **hyper(ind)) for ind in population]
        results = self.evaluator.evaluate(tasks, progress if progress is not None else self.progress)
        for ind, task, res in zip(population, tasks, results):
            self.assign(ind, res, fitness, costs)
            if inherit:
                ind.carry = None if res.state is None else Carry(res.state, res.opt_state, task.offset + res.steps)
        return results

    def inherited_task(self, ind: Individual, epochs: float, horizon: int | None) -> BurstTask:
        c, keep = ind.carry, self.cfg.search.optimizer_state == "keep"
        if c is None:
            return BurstTask(ind.mask, epochs, self.task_seed(ind), keep_state=True, horizon=horizon if keep else None,
                             **hyper(ind))
        return BurstTask(ind.mask, epochs, self.task_seed(ind), start=c.weights, keep_state=True,
                         opt_state=c.opt_state if keep else None, offset=c.steps if keep else 0,
                         horizon=horizon if keep else None, **hyper(ind))

    def assign(self, ind: Individual, res: BurstResult, fitness: str | None = None,
               costs: Callable[[Individual], tuple[float, ...]] | None = None) -> None:
        """Traits, metrics and fitness of the burst (search.fitness unless named), then any costs (nsga2)."""
        s = self.cfg.search
        name = fitness or s.fitness
        value, why = score(name, res, ind.mask, s.fitness_params if name == s.fitness else {})
        if why:
            self.fitness_failures.append({"individual": ind.key[:12], "reason": why})
        ind.traits = res.traits
        ind.metrics = dict(res.metrics)
        if self.channels:
            ind.metrics["macs_removed"] = 1.0 - self.structure.macs_of_mask(ind.mask) / self.structure.dense_macs
        ind.fitness.values = (value, *(costs(ind) if costs else ()))

    def run_task(self, task: BurstTask, on_epoch: Callable[[int, int], None] | None = None) -> BurstResult:
        """One training run (a DG epoch, an IMP round, the final training), counted on the search's
        progress; `on_epoch(done, total)` hears each epoch's end where the backend can tell."""
        self.evaluator.epoch_callback = on_epoch
        try:
            return self.evaluator.evaluate([task], self.progress)[0]
        finally:
            self.evaluator.epoch_callback = None

    # -- logging ----------------------------------------------------------------------
    def log_generation(self, generation: int, population: list[Individual], **extra: Any) -> dict:
        fits = [ind.fitness.values[0] for ind in population if ind.fitness.valid]
        finite = [f for f in fits if math.isfinite(f)]
        best = max(population, key=lambda i: i.fitness.values[0] if i.fitness.valid else WORST)
        record = {
            "generation": generation,
            "best_fitness": max(finite) if finite else None,
            "mean_fitness": statistics.fmean(finite) if finite else None,
            "std_fitness": statistics.pstdev(finite) if len(finite) > 1 else 0.0,
            "worst_count": len(fits) - len(finite),
            "sparsity": statistics.fmean(level(ind) for ind in population),
            "best_val_accuracy": best.metrics.get("val_accuracy"),
            "model_epochs": round(self.evaluator.epochs_spent, 4),
            "wall_seconds": round(time.perf_counter() - self.started, 3),
            **extra,
        }
        diverged = sum(1 for ind in population if ind.metrics and not ind.metrics.get("finite", 1.0))
        if diverged:  # trained to a non-finite loss or weights: the worst fitness (operators/fitness.score)
            record["diverged"] = diverged
        self._log(record)
        return record

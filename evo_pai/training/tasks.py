"""What a search asks for and who answers: `BurstTask`, the `Evaluator` interface with its result
cache, and θ0 (the shared initialisation every task starts from unless told otherwise).

Search code hands an evaluator a list of `BurstTask`s and gets `BurstResult`s back in the same
order; the backends in `evo_pai.evaluation` differ only in *where* the tasks train.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from evo_pai.core.config import Config
from evo_pai.data.datasets import DataSplits
from evo_pai.core.masks import MaskSet
from evo_pai.models.networks import build_model
from evo_pai.training.burst import BurstResult
from evo_pai.training.optim import OptState
from evo_pai.training.drop_grow import DynamicSpec

Progress = Callable[[int], None]  # called with the number of tasks just finished


@dataclass(frozen=True)
class BurstTask:
    """One training run: a mask, a budget in epochs, a seed, and where to start from.

    `start` / `opt_state`: the weights and optimizer state to start from (None: θ0 and a fresh
    optimizer); `offset`: steps the lineage already took (the batch stream and the learning-rate
    schedule continue from there); `horizon`: the lineage's schedule length in steps (None: this
    run's end). `keep_state` returns the final weights and optimizer state. `lr_scale` /
    `weight_decay`: this model's own hyperparameters (genes, search/lineages.py): train.lr x lr_scale
    and, unless None, this weight decay instead of train.weight_decay.
    """

    mask: MaskSet
    epochs: float
    seed: int
    start: dict[str, torch.Tensor] | None = None  # None = the shared initialisation θ0
    keep_state: bool = False
    test: bool = False
    opt_state: OptState | None = None  # None = a fresh optimizer
    offset: int = 0
    horizon: int | None = None

    dynamic: DynamicSpec | None = None  # update the mask while training (RigL / SET), else it stays fixed
    lr_scale: float = 1.0
    weight_decay: float | None = None  # None: train.weight_decay

    def hyper(self) -> tuple:
        """(lr_scale, weight_decay) when they differ from the recipe's, else (): part of the cache key."""
        return () if self.lr_scale == 1.0 and self.weight_decay is None else (float(self.lr_scale), self.weight_decay)

    def cache_key(self) -> tuple | None:
        if (self.start is not None or self.opt_state is not None or self.keep_state or self.test
                or self.dynamic is not None):
            return None  # not a pure function of (mask, θ0): never reuse
        if self.offset or self.horizon is not None:
            return (self.mask.hash(), float(self.epochs), int(self.seed), int(self.offset), self.horizon, *self.hyper())
        return (self.mask.hash(), float(self.epochs), int(self.seed), *self.hyper())


def dtype_of(cfg: Config) -> torch.dtype:
    return torch.float64 if cfg.train.dtype == "float64" else torch.float32


def initial_model(cfg: Config, data: DataSplits) -> torch.nn.Module:
    """The shared initialisation θ0: built from `cfg.seed` alone, identical in every process."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, data.input_shape, data.num_classes).to(dtype_of(cfg))


class Evaluator(ABC):
    """Runs tasks, returns results in task order, skips tasks whose result is cached."""

    def __init__(self, cfg: Config, cache_size: int = 64):
        self.cfg = cfg
        self.epochs_spent = 0.0  # model-epochs of training actually run
        self.kept_epochs: dict[str, float] = {}  # layer -> sum of kept weights x epochs (sparse FLOPs)
        self.tasks_run = 0
        self.cache_hits = 0
        self._cache: OrderedDict[tuple, BurstResult] = OrderedDict()
        self._cache_size = cache_size
        # (epochs done, epochs in all) during Experiment.run_task(..., on_epoch=): in-process backends
        # call it at epoch ends (the final training's progress); Ray actors cannot, and do not
        self.epoch_callback: Callable[[int, int], None] | None = None

    def evaluate(self, tasks: list[BurstTask], progress: Progress | None = None) -> list[BurstResult]:
        results: list[BurstResult | None] = [None] * len(tasks)
        todo: list[int] = []
        redo: dict[tuple, int] = {}  # hits on entries restored from a checkpoint without their tensors
        first_of: dict[tuple, int] = {}
        dupes: list[tuple[int, int]] = []
        for i, t in enumerate(tasks):
            key = t.cache_key()
            if key is not None and key in self._cache:
                results[i] = self._cache[key]
                self._cache.move_to_end(key)
                self.cache_hits += 1
                if results[i] is None:
                    if key in redo:
                        dupes.append((i, redo[key]))
                    else:
                        redo[key] = i
            elif key is not None and key in first_of:  # same mask twice in one batch
                dupes.append((i, first_of[key]))
                self.cache_hits += 1
            else:
                if key is not None:
                    first_of[key] = i
                todo.append(i)
        if progress and len(tasks) > len(todo):
            progress(len(tasks) - len(todo))
        # A resumed search re-trains these (pure functions of the key) but counts them as the hits
        # they were in the uninterrupted run, so the summaries of both runs agree.
        redone = self._run([tasks[i] for i in redo.values()], None) if redo else []
        for i, res in zip(redo.values(), redone):
            results[i] = res
            if "error" not in res.metrics:
                self._cache[tasks[i].cache_key()] = res
        for i, res in zip(todo, self._run([tasks[i] for i in todo], progress)):
            results[i] = res
            self.epochs_spent += res.epochs
            for k, c in tasks[i].mask.counts().items():
                self.kept_epochs[k] = self.kept_epochs.get(k, 0.0) + c * res.epochs
            self.tasks_run += 1
            key = tasks[i].cache_key()
            if key is not None and "error" not in res.metrics:  # a failed worker is not a result to reuse
                self._cache[key] = res
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        for i, j in dupes:
            results[i] = results[j]
        return results  # type: ignore[return-value]

    def cache_state(self) -> dict:
        """Counters and cache keys (LRU order) for a checkpoint; cached results are not saved."""
        return {"epochs_spent": self.epochs_spent, "tasks_run": self.tasks_run, "cache_hits": self.cache_hits,
                "kept_epochs": dict(getattr(self, "kept_epochs", {})), "keys": [list(k) for k in self._cache]}

    def restore_cache_state(self, state: dict) -> None:
        self.epochs_spent, self.tasks_run, self.cache_hits = state["epochs_spent"], state["tasks_run"], state["cache_hits"]
        self.kept_epochs = dict(state.get("kept_epochs", {}))
        self._cache = OrderedDict((tuple(k), None) for k in state["keys"])

    @abstractmethod
    def _run(self, tasks: list[BurstTask], progress: Progress | None) -> list[BurstResult]:
        """Train every task; return results in the same order."""

    def close(self) -> None:
        """Release workers and devices."""

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

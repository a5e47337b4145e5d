"""Adaptive BatchNorm (EagleEye, Li et al. 2020): a candidate's BatchNorm running statistics recomputed
on a few training batches, with no gradients, before it is evaluated.

`search.adaptive_bn_batches: N` (> 0) makes every burst also report `abn_val_loss` / `abn_val_accuracy`:
the trained network with every BatchNorm's running statistics reset and re-estimated as the
*cumulative* average (torch's `momentum=None`) over the first N training batches of the model's own
seeded order (data.batches.TrainBatches at offset 0, augmented as training is), then evaluated on the
validation split. Deterministic, so the sequential and the vectorized trainers (and Ray, which runs
them) agree.

The recalibrated statistics only feed those two metrics: the burst's result keeps the *trained*
statistics (its `state`, hence an individual's carry and the final network). The sequential path
recalibrates the model in place and copies the saved BatchNorm buffers back (`kept_statistics`: only
the buffers are copied, not the model); the vectorized path recalibrates a fresh copy of the stacked
(K, C) statistics (`recalibrate_stacked`) and never touches the trained ones.

During recalibration only the BatchNorm layers are in train mode; every other module is in eval mode
(Dropout off), so the statistics describe the network that is evaluated and the pass is a pure
function of (weights, seed, N).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from evo_pai.core.config import DataConfig, TrainConfig
from evo_pai.data.batches import TrainBatches
from evo_pai.data.datasets import DataSplits

_BATCH_NORM = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d, SyncBatchNorm
_STATS = ("running_mean", "running_var", "num_batches_tracked")


def batch_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every BatchNorm that keeps running statistics: what adaptive BN recomputes."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BATCH_NORM) and m.track_running_stats]


def has_running_stats(model: nn.Module) -> bool:
    return bool(batch_norms(model))


def recalibration_batches(data: DataSplits, hp: TrainConfig, seeds: Sequence[int], n: int, device: torch.device,
                          dtype: torch.dtype, data_cfg: DataConfig = DataConfig()) -> TrainBatches:
    """The first `n` training batches of each seed's order (offset 0), augmented as training is."""
    return TrainBatches(data, hp.batch_size, list(seeds), n, 0, device, dtype, data_cfg.augment, data_cfg.workers)


@contextmanager
def kept_statistics(model: nn.Module) -> Iterator[None]:
    """Copies every BatchNorm buffer on entry and back on exit (bit for bit): the model leaves with
    the running statistics it came with, whatever happened inside."""
    saved = [(b, b.clone()) for name, m in batch_norms(model) for s in _STATS
             if (b := getattr(m, s, None)) is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                forward: Callable | None = None) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them as the cumulative average over
    `batches` (TrainBatches of one model: x is (1, B, ...)): BatchNorm in train mode with momentum
    None, everything else in eval mode; the momenta and the model's mode restored after."""
    forward = forward or model
    norms = [m for _, m in batch_norms(model)]
    momenta, training = [m.momentum for m in norms], model.training
    model.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # torch then averages with factor 1 / num_batches_tracked
            m.train()
        for x, _ in batches:
            forward(x[0])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(training)


def _stacked_modules(forward) -> Mapping[str, nn.Module]:
    """The modules a StackedForward reads, through the bf16 autocast (`wrapped`) and compile (`eager`) wrappers."""
    inner = getattr(forward, "wrapped", forward)
    return getattr(inner, "eager", inner).modules


def _reset(name: str, t: torch.Tensor) -> torch.Tensor:
    # what nn.BatchNorm.reset_running_stats sets: mean 0, variance 1, no batches counted
    return torch.ones_like(t) if name.endswith("running_var") else torch.zeros_like(t)


@torch.no_grad()
def recalibrate_stacked(forward, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor],
                        batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`recalibrate` for K stacked models (training/stacked.StackedForward, one batch per model per
    step): new (K, C) statistics from reset ones, `buffers` untouched. The stacked BatchNorm passes each
    module's `momentum` to F.batch_norm (it refuses None), so step t runs with momentum 1/t — the factor
    torch computes for momentum None — and the momenta are restored after."""
    fresh = {n: _reset(n, b) for n, b in buffers.items()}
    norms = [m for m in _stacked_modules(forward).values() if isinstance(m, _BATCH_NORM)]
    momenta = [m.momentum for m in norms]
    try:
        for t, (x, _) in enumerate(batches, 1):
            for m in norms:
                m.momentum = 1.0 / float(t)
            forward(dict(params), x, fresh, True)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return fresh


def abn_metrics(loss: float, accuracy: float) -> dict[str, float]:
    return {"abn_val_loss": loss, "abn_val_accuracy": accuracy}

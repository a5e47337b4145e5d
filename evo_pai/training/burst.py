"""Masked training: one pure function of (mask, start weights, data, hyper-parameters, seed).

Sequential, vectorized and Ray backends all call into this module (or reproduce it exactly),
which is what makes them agree for the same seed and makes a search resumable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from evo_pai.core.config import DataConfig, TrainConfig
from evo_pai.data.batches import TrainBatches, batch_order, eval_batches  # noqa: F401  (batch_order: re-exported)
from evo_pai.data.datasets import DataSplits
from evo_pai.core.masks import MaskSet
from evo_pai.training.optim import OptState, constant_lr, load_state, lr_factor, make_optimizer, masked_state, set_lr, export_state
from evo_pai.training.precision import autocast_forward
from evo_pai.training.drop_grow import DynamicSpec, MaskUpdater
from evo_pai.training.adaptive_bn import abn_metrics, has_running_stats, kept_statistics, recalibrate, recalibration_batches
from evo_pai.training.draws import drawn, uses_draws

EVAL_BATCH = 2048
_EPS = 1e-12


@torch.no_grad()
def burst_traits(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                 grad_accum: dict[str, torch.Tensor], names: list[str]) -> tuple[dict, dict[str, float]]:
    """What a burst hands back for the mutations, float32 on the CPU: its weights (a copy), the relative
    change |w − w0| / |w0|, the accumulated |g|; and each layer's mean |w0| (`init_scale`). One model's
    tensors, or K models stacked along a leading dimension (the batched trainer) against one θ0."""
    ref = {n: reference[n].to(weights[n].device) for n in names}
    traits = {
        "weight": {n: weights[n].detach().to("cpu", torch.float32, copy=True) for n in names},
        "rel_change": {n: ((weights[n].detach() - ref[n]).abs() / (ref[n].abs() + _EPS)).to("cpu", torch.float32)
                       for n in names},
        "grad_accum": {n: grad_accum[n].to("cpu", torch.float32) for n in names},
    }
    return traits, {n: float(ref[n].abs().mean()) for n in names}

EpochCallback = Callable[[int, int], None]  # (epochs done, epochs in all): progress only, never numbers


def epoch_done(step: int, steps: int, per_epoch: int, on_epoch: EpochCallback | None) -> None:
    """After step `step` (0-based) of `steps`: tell `on_epoch` when an epoch (or the last part of one) ends."""
    if on_epoch is not None and ((step + 1) % per_epoch == 0 or step + 1 == steps):
        on_epoch(math.ceil((step + 1) / per_epoch), math.ceil(steps / per_epoch))


@dataclass
class BurstResult:
    """What a training run returns. Tensors are on CPU so results can cross process boundaries."""

    metrics: dict[str, float]
    # trait -> layer -> tensor: "weight" (w_t), "rel_change" (|w_t-w0|/|w0|), "grad_accum" (sum |g|)
    traits: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    init_scale: dict[str, float] = field(default_factory=dict)  # mean |w0| per layer
    state: dict[str, torch.Tensor] | None = None  # full state_dict, when asked for
    epochs: float = 0.0  # model-epochs of training this run cost
    opt_state: OptState | None = None  # the optimizer's final state (by parameter name), with `state`
    steps: int = 0  # optimizer steps this run took
    mask: MaskSet | None = None  # the mask at the end, when the task updated it (dynamic sparse training)

    @property
    def finite(self) -> bool:
        return bool(self.metrics.get("finite", 1.0))


def diverged_epochs(marks: list[torch.Tensor]) -> list[int]:
    """Per model, the first epoch (1-based) at whose end the summed training loss was non-finite (`marks`:
    the sum after each epoch, one model's scalar or K models'); the last epoch where only the weights are."""
    bad = ~torch.isfinite(torch.stack(marks).reshape(len(marks), -1))  # (epochs, models)
    return [int(col.nonzero()[0]) + 1 if bool(col.any()) else len(marks) for col in bad.T]


def steps_for(epochs: float, n_train: int, batch_size: int) -> int:
    return max(1, int(round(epochs * math.ceil(n_train / batch_size))))


def burst_steps(epochs: float, n_train: int, batch_size: int) -> int:
    """Steps a burst of `epochs` takes: none for 0 epochs (the start weights only evaluated:
    search.burst_epochs 0, adaptive BN without a burst), else `steps_for`."""
    return 0 if epochs == 0 else steps_for(epochs, n_train, batch_size)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], forward=None) -> dict[str, float]:
    """Mean loss and accuracy over (x, y) batches (data.batches.eval_batches); sums stay on the device
    (float64), read once at the end."""
    forward = forward or model
    model.eval()
    p = next(model.parameters())
    loss = torch.zeros((), dtype=torch.float64, device=p.device)
    correct = torch.zeros((), dtype=torch.long, device=p.device)
    n = 0
    for x, y in batches:
        out = forward(x)
        loss += F.cross_entropy(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    model.train()
    n = max(1, n)
    return {"loss": float(loss) / n, "accuracy": int(correct) / n}


def adaptive_bn(model: nn.Module, forward, data: DataSplits, hp: TrainConfig, seed: int, n: int,
                data_cfg: DataConfig, val: dict[str, float]) -> dict[str, float]:
    """Validation after adaptive BN (training/adaptive_bn.py); the model keeps its trained statistics.
    Without BatchNorm statistics there is nothing to recalibrate: the plain validation numbers."""
    if not has_running_stats(model):
        return abn_metrics(val["loss"], val["accuracy"])
    p = next(model.parameters())
    with kept_statistics(model):
        recalibrate(model, recalibration_batches(data, hp, [seed], n, p.device, p.dtype, data_cfg), forward)
        out = evaluate(model, eval_batches(data, "val", EVAL_BATCH, p.device, p.dtype, data_cfg.workers), forward)
    return abn_metrics(out["loss"], out["accuracy"])


def train_masked(
    model: nn.Module,
    start: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    mask: MaskSet,
    data: DataSplits,
    hp: TrainConfig,
    epochs: float,
    seed: int,
    keep_state: bool = False,
    test: bool = False,
    opt_state: OptState | None = None,
    offset: int = 0,
    horizon: int | None = None,
    dynamic: DynamicSpec | None = None,
    on_epoch: EpochCallback | None = None,
    data_cfg: DataConfig = DataConfig(),
    abn_batches: int = 0,
) -> BurstResult:
    """Train `model` from `start` (and `opt_state`) with `mask` held fixed; traits are measured
    against `reference` (θ0).

    `data` must already be on the model's device. Masked weights, their gradients and their
    optimizer state are exactly zero throughout; gradient accumulation records the *unmasked*
    gradient so pruned weights also get a score (useful for regrowth). With `dynamic`, the mask is
    updated every ΔT steps (RigL / SET, training/dynamic.py) and the result carries the last mask. `offset` is the number of
    steps the lineage has already taken (the batch stream and the learning-rate schedule continue
    from there); `horizon` the length of the lineage's schedule (None: this run's end). `data_cfg` gives the
    augmentation and the loader workers (data.batches.TrainBatches: one batch source for every trainer).
    `abn_batches` > 0: also `abn_val_loss` / `abn_val_accuracy` (training/adaptive_bn.py); 0 epochs: no step.
    """
    device = next(model.parameters()).device
    model.load_state_dict(start)
    model.train()
    params = dict(model.named_parameters())
    masks = {k: mask[k].to(device) for k in mask}
    with torch.no_grad():
        for k, m in masks.items():
            params[k].mul_(m)
    opt = make_optimizer(model.parameters(), hp)
    load_state(opt, params, masked_state(opt_state, masks) if opt_state else None)
    grad_accum = {k: torch.zeros_like(params[k]) for k in masks}
    forward = autocast_forward(model, hp.precision, device, next(model.parameters()).dtype)
    # dropout / attention: masks from (seed, lineage step), as the vectorized trainer draws them (training/draws.py)
    draws = uses_draws(model, data.input_shape)
    steps = burst_steps(epochs, data.n_train, hp.batch_size)
    per_epoch, scheduled = math.ceil(data.n_train / hp.batch_size), not constant_lr(hp)
    horizon = offset + steps if horizon is None else horizon
    # In the parameters' dtype: a float32 sum would cap a float64 run's train_loss at ~1e-8 precision.
    loss_sum, finite = torch.zeros((), device=device, dtype=next(model.parameters()).dtype), True
    marks: list[torch.Tensor] = []  # loss_sum at each epoch's end: where a diverged run went non-finite
    updater = None if dynamic is None else MaskUpdater(dynamic, masks, params, opt, steps, per_epoch, seed)
    dtype = next(model.parameters()).dtype
    batches = TrainBatches(data, hp.batch_size, [seed], steps, offset, device, dtype, data_cfg.augment, data_cfg.workers)
    for i, (x, y) in enumerate(batches):
        t = i + 1  # the mask updater counts this run's steps from 1
        if scheduled:
            set_lr(opt, hp.lr * lr_factor(hp, offset + i, horizon, per_epoch))
        out = (drawn(forward, seed, offset + i) if draws else forward)(x[0])
        loss = F.cross_entropy(out, y, label_smoothing=hp.label_smoothing)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        update = updater is not None and updater.due(t)
        if update:  # reads the dense gradient before it is masked; replaces `masks`' entries
            updater.update(t)
        for k, m in masks.items():
            g = params[k].grad
            grad_accum[k].add_(g.abs())
            g.mul_(m)
        if not update:  # RigL's Algorithm 1: an update step takes no optimizer step
            if hp.grad_clip_norm is not None:  # the masked gradient, the one the step uses
                torch.nn.utils.clip_grad_norm_(params.values(), hp.grad_clip_norm)
            opt.step()
        # No re-masking after the step: a masked weight is 0 with zero gradient and zero optimizer
        # state, so Adam/SGD (with or without weight decay) leave it exactly 0. Re-masking every
        # step changed no bit and cost 5-7 % of a LeNet burst (measured).
        loss_sum += loss.detach()
        if (i + 1) % per_epoch == 0 or i + 1 == steps:
            marks.append(loss_sum.clone())  # no sync: read only if the run diverged
        epoch_done(i, steps, per_epoch, on_epoch)
    train_loss = float(loss_sum) / steps if steps else None  # 0 steps: no training loss to report
    finite = (train_loss is None or math.isfinite(train_loss)) and all(bool(torch.isfinite(p).all()) for p in params.values())
    forward = drawn(forward, None) if draws else forward
    val = evaluate(model, eval_batches(data, "val", EVAL_BATCH, device, dtype, data_cfg.workers), forward)
    metrics = {**({} if train_loss is None else {"train_loss": train_loss}), "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "finite": float(finite)}
    if not finite:
        metrics["diverged_epoch"] = float(diverged_epochs(marks)[0]) if marks else 0.0  # 0: before any step
    if abn_batches:
        metrics.update(adaptive_bn(model, forward, data, hp, seed, abn_batches, data_cfg, val))
    if test:
        t = evaluate(model, eval_batches(data, "test", EVAL_BATCH, device, dtype, data_cfg.workers), forward)
        metrics.update(test_loss=t["loss"], test_accuracy=t["accuracy"])
    if updater is not None:
        metrics.update(mask_updates=float(updater.updates), mask_turnover=updater.turnover())
    traits, scale = burst_traits(params, reference, grad_accum, list(masks))
    return BurstResult(
        metrics=metrics,
        traits=traits,
        init_scale=scale,
        state={k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()} if keep_state else None,
        epochs=steps / per_epoch,
        opt_state=export_state(opt, params) if keep_state else None,
        steps=steps,
        mask=None if updater is None else MaskSet(masks, mask.output_layer),
    )

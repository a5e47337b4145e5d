"""`train_masked` for K models at once: same results per model, one pass for the population.

Every model keeps its own start weights, mask and seed (hence its own batch order); the models
share the architecture, the data, the hyper-parameters and the number of steps. One batched
forward/backward and one optimizer step per training step serve all K. The optimizers are
torch's own, run on the stacked tensors: Adam and SGD update each element from that element's
own gradient and state only, and every model has taken the same number of steps, so a stacked
optimizer is K independent ones (up to float rounding of the fused kernel).
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evo_pai.core.config import DataConfig, TrainConfig
from evo_pai.data.datasets import DataSplits
from evo_pai.core.masks import MaskSet
from evo_pai.models.networks import probe_forward
from evo_pai.training.compiled import Update, update_eager
from evo_pai.training.precision import autocast_forward
from evo_pai.training.stacked import StackedForward
from evo_pai.data.batches import TrainBatches, eval_batches
from evo_pai.training.burst import BurstResult, burst_steps, burst_traits, diverged_epochs, EpochCallback, epoch_done
from evo_pai.training.optim import clip_stacked_  # train.grad_clip_norm
from evo_pai.training.adaptive_bn import abn_metrics, recalibrate_stacked, recalibration_batches
from evo_pai.training.optim import (OptState, constant_lr, export_state, load_state, lr_factor, make_optimizer,
                                   make_stacked_optimizer, masked_state, per_model_step, set_lr, stack_states, unstack_state)


def eval_rows(hp: TrainConfig) -> int:
    # Evaluation keeps no graph: 3x the training batch is about the memory of a training step.
    return 3 * hp.batch_size


@torch.no_grad()
def evaluate_batched(forward: StackedForward, params: dict[str, torch.Tensor],
                     batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     buffers: dict[str, torch.Tensor] | None = None) -> tuple[list[float], list[float]]:
    """Per-model (mean loss, accuracy) on one shared split's (x, y) batches (data.batches.eval_batches);
    BatchNorm from its running statistics (`model.eval()`)."""
    p0 = next(iter(params.values()))
    k = p0.shape[0]
    loss = torch.zeros(k, dtype=torch.float64, device=p0.device)
    correct = torch.zeros(k, dtype=torch.long, device=p0.device)
    n = 0
    for xb, yb in batches:
        out = forward(params, xb.expand(k, *xb.shape), buffers, False)
        loss += F.cross_entropy(out.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1).sum(1).double()
        correct += (out.argmax(-1) == yb).sum(1)
        n += len(yb)
    n = max(1, n)
    return (loss / n).tolist(), (correct.double() / n).tolist()


def train_batched(
    model: nn.Module,
    forward: StackedForward,
    starts: Sequence[Mapping[str, torch.Tensor]],
    reference: Mapping[str, torch.Tensor],
    masks: Sequence[MaskSet],
    data: DataSplits,
    hp: TrainConfig,
    epochs: float,
    seeds: Sequence[int],
    keep_state: Sequence[bool],
    test: Sequence[bool],
    update: Update = update_eager,
    opt_states: Sequence[OptState | None] | None = None,
    offset: int = 0,
    horizon: int | None = None,
    on_epoch: EpochCallback | None = None,
    data_cfg: DataConfig = DataConfig(),
    lr_scales: Sequence[float] | None = None,
    weight_decays: Sequence[float | None] | None = None,
    abn_batches: int = 0,
) -> list[BurstResult]:
    """`train_masked` for every (start, opt_state, mask, seed); `model` only supplies names, dtype and
    device. `update` does grad_accum += |g| and g *= keep (training/compiled.py: eager or compiled).
    The models share `offset` and `horizon` (one learning rate per step) and, for Adam, the
    optimizer step count of their states (one bias correction): the caller groups them so.
    `lr_scales` / `weight_decays`: each model's own (hyperparameter genes; None: the recipe's); when any
    differs, the step is `per_model_step` instead of torch's fused kernel. `abn_batches`: as in `train_masked`
    (all K models recalibrated at once, `adaptive_bn_batched`)."""
    k = len(masks)
    device = next(model.parameters()).device
    names = [n for n, _ in model.named_parameters()]
    masked = list(masks[0])
    params = {n: torch.stack([s[n].to(device) for s in starts]).requires_grad_() for n in names}
    # BatchNorm running statistics: per model, stacked like the weights, updated in place by the forward
    # (in the model's own dtypes, as load_state_dict would copy them: num_batches_tracked stays an integer)
    own = dict(model.named_buffers())
    buffers = {n: torch.stack([s[n].to(device, own[n].dtype) for s in starts]) for n in getattr(forward, "buffer_names", ())}
    dtype = params[names[0]].dtype
    draw_for = getattr(forward, "draw_for", None)  # vmap's forward: each model's dropout masks (training/draws.py)
    forward = autocast_forward(forward, hp.precision, device, dtype)  # train.precision bf16
    # 0/1 in the parameters' dtype: x * 1.0 == x * True exactly, and a same-dtype multiply is a
    # vectorized kernel (a bool operand measured ~5x slower).
    keep = {n: torch.stack([m[n] for m in masks]).to(device, dtype) for n in masked}
    with torch.no_grad():
        for n in masked:
            params[n].mul_(keep[n])
    scales = [1.0] * k if lr_scales is None else [float(x) for x in lr_scales]
    decays = [hp.weight_decay if w is None else float(w) for w in (weight_decays or [None] * k)]
    own_hp = any(x != 1.0 for x in scales) or any(w != hp.weight_decay for w in decays)
    # per model: the optimizer only holds the state; per_model_step does the update
    opt = (make_optimizer if own_hp else make_stacked_optimizer)(list(params.values()), hp)
    wds = torch.tensor(decays, dtype=torch.float64)
    stacked = stack_states(list(opt_states or [None] * k), {n: starts[0][n].shape for n in names})
    load_state(opt, params, masked_state(stacked, keep) if stacked else None)
    grad_accum = {n: torch.zeros_like(params[n]) for n in masked}
    tmp = {n: torch.empty_like(params[n]) for n in masked}  # |g|, reused: no fresh pages every step
    steps = burst_steps(epochs, data.n_train, hp.batch_size)
    # step -> the K models' batches side by side (K batches of the same size B), as train_masked draws each
    batches = TrainBatches(data, hp.batch_size, seeds, steps, offset, device, dtype, data_cfg.augment, data_cfg.workers)
    per_epoch, scheduled = math.ceil(data.n_train / hp.batch_size), not constant_lr(hp)
    horizon = offset + steps if horizon is None else horizon
    loss_sum = torch.zeros(k, dtype=dtype, device=device)
    marks: list[torch.Tensor] = []
    for step, (x, y) in enumerate(batches):
        factor = lr_factor(hp, offset + step, horizon, per_epoch) if scheduled else None
        if scheduled:
            set_lr(opt, hp.lr * factor)
        if draw_for is not None:
            draw_for(seeds, offset + step)
        out = forward(params, x, buffers)
        losses = F.cross_entropy(out.flatten(0, 1), y, reduction="none",
                                 label_smoothing=hp.label_smoothing).view(k, x.shape[1]).mean(1)
        # set_to_none: backward then writes the gradient instead of adding it to zeros (same values,
        # two fewer passes over K models' gradients).
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # d(sum)/d(loss_k) = 1: each model gets exactly its own gradient
        with torch.no_grad():
            update([params[n].grad for n in masked], [grad_accum[n] for n in masked], [keep[n] for n in masked],
                   [tmp[n] for n in masked])
            if hp.grad_clip_norm is not None:  # per model, on the masked gradients (as train_masked)
                clip_stacked_([p.grad for p in params.values()], hp.grad_clip_norm)
        if own_hp:  # model k's lr as train_masked computes it: (train.lr x scale) x schedule factor
            per_model_step(opt, torch.tensor([hp.lr * s * factor if scheduled else hp.lr * s for s in scales],
                                             dtype=torch.float64), wds)
        else:
            opt.step()
        # No re-masking after the step: a masked weight is 0 with zero gradient and zero optimizer
        # state, so Adam/SGD (with or without weight decay) leave it exactly 0, as train_masked does.
        loss_sum += losses.detach()
        if (step + 1) % per_epoch == 0 or step + 1 == steps:
            marks.append(loss_sum.clone())  # as train_masked: where a diverged model went non-finite
        epoch_done(step, steps, per_epoch, on_epoch)
    final_opt = export_state(opt, params) if any(keep_state) else None
    out = _results(model, forward, params, buffers, grad_accum, starts, reference, data, loss_sum, steps, hp,
                   keep_state, test, final_opt, data_cfg.workers, marks)
    if abn_batches:
        for res, extra in zip(out, adaptive_bn_batched(forward, params, buffers, data, hp, seeds, abn_batches, data_cfg, out)):
            res.metrics.update(extra)
    return out


def adaptive_bn_batched(forward, params, buffers, data, hp, seeds, n, data_cfg, results) -> list[dict[str, float]]:
    """`burst.adaptive_bn` for the K models: their statistics recalibrated together on a copy
    (training/adaptive_bn.recalibrate_stacked), each on its own seed's first `n` batches."""
    if not buffers:  # no BatchNorm statistics: the plain validation numbers
        return [abn_metrics(r.metrics["val_loss"], r.metrics["val_accuracy"]) for r in results]
    params = {name: p.detach() for name, p in params.items()}
    p0 = next(iter(params.values()))
    fresh = recalibrate_stacked(forward, params, buffers,
                                recalibration_batches(data, hp, seeds, n, p0.device, p0.dtype, data_cfg))
    loss, acc = evaluate_batched(forward, params, eval_batches(data, "val", eval_rows(hp), p0.device, p0.dtype,
                                                               data_cfg.workers), fresh)
    return [abn_metrics(lo, a) for lo, a in zip(loss, acc)]


def _results(model, forward, params, buffers, grad_accum, starts, reference, data, loss_sum, steps, hp, keep_state,
             test, final_opt, workers, marks):
    k = loss_sum.shape[0]
    params = {n: p.detach() for n, p in params.items()}
    trained = {**params, **buffers}
    train_loss = (loss_sum.double() / steps).tolist() if steps else [None] * k  # 0 steps: none to report
    finite_params = torch.stack([torch.isfinite(p.flatten(1)).all(1) for p in params.values()]).all(0).tolist()
    rows, p0 = eval_rows(hp), next(iter(params.values()))
    val_loss, val_acc = evaluate_batched(forward, params, eval_batches(data, "val", rows, p0.device, p0.dtype, workers),
                                         buffers)
    test_metrics = (evaluate_batched(forward, params, eval_batches(data, "test", rows, p0.device, p0.dtype, workers),
                                     buffers) if any(test) else None)
    masked = list(grad_accum)
    stacked, scale = burst_traits(params, reference, grad_accum, masked)
    state_keys = list(model.state_dict())
    epochs = steps / math.ceil(data.n_train / hp.batch_size)
    out = []
    for i in range(k):
        finite = (train_loss[i] is None or math.isfinite(train_loss[i])) and finite_params[i]
        metrics = {**({} if train_loss[i] is None else {"train_loss": train_loss[i]}), "val_loss": val_loss[i],
                   "val_accuracy": val_acc[i], "finite": float(finite)}
        if not finite:
            metrics["diverged_epoch"] = float(diverged_epochs(marks)[i]) if marks else 0.0  # 0: before any step
        if test[i]:
            metrics.update(test_loss=test_metrics[0][i], test_accuracy=test_metrics[1][i])
        out.append(BurstResult(
            metrics=metrics,
            traits={trait: {n: _own(per_layer[n][i]) for n in masked} for trait, per_layer in stacked.items()},
            init_scale=dict(scale),
            state={n: _own((trained[n][i] if n in trained else starts[i][n]).to("cpu")) for n in state_keys}
            if keep_state[i] else None,
            epochs=epochs,
            opt_state=unstack_state(final_opt, i) if keep_state[i] else None,
            steps=steps,
        ))
    return out


def _own(t: torch.Tensor) -> torch.Tensor:
    # A contiguous copy: a slice would drag the whole stacked storage along when pickled.
    return t.clone(memory_format=torch.contiguous_format)


def bytes_per_model(model: nn.Module, input_shape: Sequence[int], hp: TrainConfig, masked: Sequence[str]) -> int:
    """Upper estimate of the memory one more model adds to a batched burst, in bytes."""
    p0 = next(model.parameters())
    elem = p0.element_size()
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    n_params, n_masked = sum(sizes.values()), sum(sizes[n] for n in masked)
    opt_states = 2 if hp.optimizer in ("adam", "adamw") else (1 if hp.momentum > 0 else 0)
    # weights, grads, optimizer state, stacked start; per masked weight: keep-mask, grad_accum,
    # |g| buffer; then the float32 traits (weight, rel_change, grad_accum) handed back.
    state = elem * (n_params * (3 + opt_states) + 3 * n_masked) + 4 * 3 * n_masked
    act = _activation_elements(model, input_shape)
    train = elem * hp.batch_size * act * 3  # outputs kept for backward, their grads, layout copies
    evaluation = elem * eval_rows(hp) * act * 2  # outputs and layout copies, no graph
    return state + max(train, evaluation)


def _activation_elements(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Elements of the input and of every leaf module's output, for one example."""
    total = [math.prod(input_shape)]
    probe_forward(model, input_shape, {m: lambda _m, _i, o: total.append(o.numel())
                                       for m in model.modules() if not list(m.children())})
    return sum(total)

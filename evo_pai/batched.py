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
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import DataSplits
from .masks import MaskSet
from .stacked import StackedForward
from .training import _EPS, BurstResult, batch_order, steps_for

EVAL_ROWS = 3 * 128  # eval chunk per model: about the memory of a training step's activations


def make_stacked_optimizer(params, hp: TrainConfig) -> torch.optim.Optimizer:
    # fused: one pass over the stacked tensors instead of ~7 elementwise kernels (measured
    # 1.5x -> 2.4x on K=16 LeNet-300-100); same update math as make_optimizer.
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)


@torch.no_grad()
def evaluate_batched(forward: StackedForward, params: dict[str, torch.Tensor], x: torch.Tensor,
                     y: torch.Tensor, rows: int = EVAL_ROWS) -> tuple[list[float], list[float]]:
    """Per-model (mean loss, accuracy) on one shared split."""
    k = next(iter(params.values())).shape[0]
    loss = torch.zeros(k, dtype=torch.float64, device=x.device)
    correct = torch.zeros(k, dtype=torch.long, device=x.device)
    for i in range(0, len(x), rows):
        xb, yb = x[i : i + rows], y[i : i + rows]
        out = forward(params, xb.expand(k, *xb.shape))
        loss += F.cross_entropy(out.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1).sum(1).double()
        correct += (out.argmax(-1) == yb).sum(1)
    n = max(1, len(x))
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
) -> list[BurstResult]:
    """`train_masked` for every (start, mask, seed); `model` only supplies names, dtype and device."""
    k = len(masks)
    device = next(model.parameters()).device
    names = [n for n, _ in model.named_parameters()]
    masked = list(masks[0])
    params = {n: torch.stack([s[n].to(device) for s in starts]).requires_grad_() for n in names}
    dtype = params[names[0]].dtype
    keep = {n: torch.stack([m[n] for m in masks]).to(device, dtype) for n in masked}
    with torch.no_grad():
        for n in masked:
            params[n].mul_(keep[n])
    opt = make_stacked_optimizer(list(params.values()), hp)
    grad_accum = {n: torch.zeros_like(params[n]) for n in masked}
    steps = steps_for(epochs, data.n_train, hp.batch_size)
    orders = [batch_order(data.n_train, steps, hp.batch_size, torch.Generator().manual_seed(s)) for s in seeds]
    loss_sum = torch.zeros(k, dtype=dtype, device=device)
    for step in range(steps):
        idx = torch.stack([o[step] for o in orders]).to(device)  # (K, B): same B for every model
        out = forward(params, data.train_x[idx])
        b = idx.shape[1]
        losses = F.cross_entropy(out.flatten(0, 1), data.train_y[idx].flatten(), reduction="none").view(k, b).mean(1)
        opt.zero_grad(set_to_none=False)
        losses.sum().backward()  # d(sum)/d(loss_k) = 1: each model gets exactly its own gradient
        with torch.no_grad():
            for n in masked:
                g = params[n].grad
                grad_accum[n].add_(g.abs())
                g.mul_(keep[n])
        opt.step()
        # No re-masking after the step: a masked weight is 0 with zero gradient and zero optimizer
        # state, so Adam/SGD (with or without weight decay) leave it exactly 0, as train_masked does.
        loss_sum += losses.detach()
    return _results(model, forward, params, grad_accum, reference, data, loss_sum, steps, hp, keep_state, test)


def _results(model, forward, params, grad_accum, reference, data, loss_sum, steps, hp, keep_state, test):
    k = loss_sum.shape[0]
    params = {n: p.detach() for n, p in params.items()}
    train_loss = (loss_sum.double() / steps).tolist()
    finite_params = torch.stack([torch.isfinite(p.flatten(1)).all(1) for p in params.values()]).all(0).tolist()
    val_loss, val_acc = evaluate_batched(forward, params, data.val_x, data.val_y)
    test_metrics = evaluate_batched(forward, params, data.test_x, data.test_y) if any(test) else None
    masked = list(grad_accum)
    device = next(iter(params.values())).device
    ref = {n: reference[n].to(device) for n in masked}
    scale = {n: float(ref[n].abs().mean()) for n in masked}
    rel = {n: ((params[n] - ref[n]).abs() / (ref[n].abs() + _EPS)).to("cpu", torch.float32) for n in masked}
    weight = {n: params[n].to("cpu", torch.float32) for n in masked}
    accum = {n: grad_accum[n].to("cpu", torch.float32) for n in masked}
    state_keys = list(model.state_dict())
    epochs = steps / math.ceil(data.n_train / hp.batch_size)
    out = []
    for i in range(k):
        finite = math.isfinite(train_loss[i]) and finite_params[i]
        metrics = {"train_loss": train_loss[i], "val_loss": val_loss[i], "val_accuracy": val_acc[i],
                   "finite": float(finite)}
        if test[i]:
            metrics.update(test_loss=test_metrics[0][i], test_accuracy=test_metrics[1][i])
        # .clone(): a slice would drag the whole stacked storage along when pickled
        out.append(BurstResult(
            metrics=metrics,
            traits={"weight": {n: weight[n][i].clone() for n in masked},
                    "rel_change": {n: rel[n][i].clone() for n in masked},
                    "grad_accum": {n: accum[n][i].clone() for n in masked}},
            init_scale=dict(scale),
            state={n: params[n][i].to("cpu").clone() for n in state_keys} if keep_state[i] else None,
            epochs=epochs,
        ))
    return out

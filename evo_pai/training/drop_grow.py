"""Dynamic sparse training: the mask changes during training, its per-layer density never does.

RigL (Evci et al. 2020) and SET (Mocanu et al. 2018), after google-research/rigl
(`sparse_optimizers_base.py`, `rigl_tf2/mask_updaters.py`): every ΔT steps until T_end, each
layer drops the fraction f_t = f·(1 + cos(π t / T_end)) / 2 of its kept weights with the smallest
|w| and regrows as many among the positions that are not kept after the drop (a just-dropped
weight may come straight back, as in the reference) — RigL the largest |g| of the current batch's
dense gradient, SET uniformly at random. A regrown weight that was pruned before the update starts
at 0 with zero optimizer state; a dropped one becomes 0 with zero optimizer state, so it stays 0.
On an update step the batch's gradient only chooses the regrown weights: no optimizer step is
taken (RigL's Algorithm 1).

The rules are pure functions of tensors (tested on hand-made cases); `MaskUpdater` is the per-step
hook `train_masked` calls, so every backend that trains one model at a time runs it unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, MutableMapping

import torch

from evo_pai.core.individual import derive_seed

Grow = Literal["gradient", "random"]


@dataclass(frozen=True)
class DynamicSpec:
    """What a task needs to update its mask while it trains (carried on the BurstTask)."""

    grow: Grow  # "gradient" = RigL, "random" = SET
    drop_fraction: float = 0.3  # f: the share of each layer's kept weights replaced at the first update
    interval_epochs: float = 0.25  # ΔT, in epochs of this task's data (rounded to whole steps, at least 1)
    end_fraction: float = 0.75  # T_end = this share of the task's steps; no update from T_end on
    anneal: Literal["cosine", "constant"] = "cosine"
    output_layer: str | None = None  # its rows keep at least `min_output_fan_in` weights
    min_output_fan_in: int = 1


def interval_steps(spec: DynamicSpec, steps_per_epoch: int) -> int:
    return max(1, int(round(spec.interval_epochs * steps_per_epoch)))


def end_step(spec: DynamicSpec, total_steps: int) -> int:
    return int(spec.end_fraction * total_steps)


def is_update_step(t: int, interval: int, t_end: int) -> bool:
    """Steps are counted from 1 (the t-th batch): updates at ΔT, 2ΔT, ... strictly before T_end."""
    return t % interval == 0 and t < t_end


def drop_fraction_at(spec: DynamicSpec, t: int, t_end: int) -> float:
    if spec.anneal == "constant":
        return spec.drop_fraction
    return spec.drop_fraction * 0.5 * (1.0 + math.cos(math.pi * min(t, t_end) / max(1, t_end)))


def protected_fan_in(mask: torch.Tensor, weight: torch.Tensor, min_fan_in: int) -> torch.Tensor:
    """The `min_fan_in` largest-|w| kept weights of every row: a class never loses its last inputs."""
    m = mask.reshape(mask.shape[0], -1)
    k = min(min_fan_in, m.shape[1])
    out = torch.zeros_like(m)
    if k <= 0:
        return out.reshape(mask.shape)
    score = weight.detach().abs().reshape(m.shape).to(torch.float64).masked_fill(~m, -1.0)
    top = torch.topk(score, k, dim=1).indices
    out.scatter_(1, top, True)
    return (out & m).reshape(mask.shape)


def drop_and_grow(mask: torch.Tensor, drop_score: torch.Tensor, grow_score: torch.Tensor, n: int,
                  protected: torch.Tensor | None = None) -> torch.Tensor:
    """The new mask: the n kept weights of smallest `drop_score` out, the n best `grow_score` among
    the positions not kept after the drop in. Ties go to the lower index (stable sorts); the count
    is exact: the result keeps as many weights as `mask`."""
    flat = mask.reshape(-1)
    drop = drop_score.detach().reshape(-1).to(torch.float64).masked_fill(~flat, math.inf)
    if protected is not None:
        drop = drop.masked_fill(protected.reshape(-1), math.inf)
    n = min(int(n), int(torch.isfinite(drop).sum()))
    if n <= 0:
        return mask.clone()
    after = flat.clone()
    after[torch.sort(drop, stable=True).indices[:n]] = False
    grow = grow_score.detach().reshape(-1).to(after.device, torch.float64).masked_fill(after, -math.inf)
    new = after.clone()
    new[torch.sort(grow, descending=True, stable=True).indices[:n]] = True
    return new.reshape(mask.shape)


def reset_positions(param: torch.Tensor, opt: torch.optim.Optimizer, where: torch.Tensor) -> None:
    """Zero a parameter and its optimizer state (momentum, Adam moments) at `where`."""
    with torch.no_grad():
        param.masked_fill_(where, 0.0)
        for value in opt.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.masked_fill_(where, 0)


class MaskUpdater:
    """The per-step hook: `due(t)` says whether step t updates; `update(t)` does it in place."""

    def __init__(self, spec: DynamicSpec, masks: MutableMapping[str, torch.Tensor],
                 params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer, total_steps: int,
                 steps_per_epoch: int, seed: int):
        self.spec, self.masks, self.params, self.opt = spec, masks, params, opt
        self.interval = interval_steps(spec, steps_per_epoch)
        self.t_end = end_step(spec, total_steps)
        self.initial = {k: v.clone() for k, v in masks.items()}
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "set-grow"))
        self.updates = 0

    def due(self, t: int) -> bool:
        return is_update_step(t, self.interval, self.t_end)

    def update(self, t: int) -> None:
        """Drop by |w|, grow by the dense |g| already in `.grad` (RigL) or at random (SET)."""
        fraction = drop_fraction_at(self.spec, t, self.t_end)
        for k, old in list(self.masks.items()):
            p = self.params[k]
            n = int(int(old.sum()) * fraction)  # truncation, as the reference's int cast
            if n == 0:
                continue
            if self.spec.grow == "gradient":
                grow = p.grad.detach().abs()
            else:
                grow = torch.rand(p.shape, generator=self.generator, dtype=torch.float64)
            keep = None
            if k == self.spec.output_layer and self.spec.min_output_fan_in > 0 and old.dim() >= 2:
                keep = protected_fan_in(old, p, self.spec.min_output_fan_in)
            new = drop_and_grow(old, p.detach().abs(), grow, n, keep)
            reset_positions(p, self.opt, old ^ new)  # grown from pruned and dropped: 0, no state
            self.masks[k] = new
        self.updates += 1

    def turnover(self) -> float:
        """Share of the initially kept weights that are not kept at the end."""
        kept = sum(int(v.sum()) for v in self.initial.values())
        gone = sum(int((v & ~self.masks[k].to(v.device)).sum()) for k, v in self.initial.items())
        return gone / kept if kept else 0.0

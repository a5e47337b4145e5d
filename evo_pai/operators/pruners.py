"""Pruning-at-initialization baselines: each a scorer registered by name in PRUNER.

A scorer only *scores* weights (higher = keep): fn(ctx: ScoreContext, mask: MaskSet, **params)
-> {param name: score tensor}. `prune()` turns scores into a mask with `MaskSet.from_scores`
under the configured layer budget (erk / uniform per layer, or one global ranking), so every
pruner shares the same invariants: exact counts, no empty layer unless allowed, every output
class keeps an input. A scorer marked `iterative` (SynFlow) is called repeatedly on an
exponential sparsity schedule, never regrowing what an earlier round removed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.core.registry import PRUNER, register_pruner

Scores = dict[str, torch.Tensor]


@dataclass
class ScoreContext:
    """What a scorer may look at: the network at θ0, its prunable weights, a scoring batch."""

    model: nn.Module  # holds θ0; scorers must leave its weights as they found them
    names: list[str]  # prunable parameter names, in module order
    x: torch.Tensor  # scoring examples (on the model's device and dtype)
    y: torch.Tensor
    generator: torch.Generator

    def params(self) -> dict[str, nn.Parameter]:
        p = dict(self.model.named_parameters())
        return {k: p[k] for k in self.names}


def _masked_model(ctx: ScoreContext, mask: MaskSet) -> dict[str, torch.Tensor]:
    """Zero the masked weights in place; returns the originals so the caller can restore them."""
    saved = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    with torch.no_grad():
        for k, p in ctx.params().items():
            p.mul_(mask[k].to(p.device, p.dtype))
    return saved


def _batches(ctx: ScoreContext, batch_size: int):
    for i in range(0, len(ctx.y), batch_size):
        yield ctx.x[i : i + batch_size], ctx.y[i : i + batch_size]


@register_pruner("random", "uniformly random scores (the 'random pruning' reference)")
def random_scores(ctx: ScoreContext, mask: MaskSet) -> Scores:
    return {k: torch.rand(tuple(p.shape), generator=ctx.generator, dtype=torch.float64) for k, p in ctx.params().items()}


@register_pruner("magnitude", "|θ0|: keep the largest initial weights")
def magnitude_scores(ctx: ScoreContext, mask: MaskSet) -> Scores:
    return {k: p.detach().abs().to("cpu", torch.float64) for k, p in ctx.params().items()}


@register_pruner("snip", "SNIP (Lee et al. 2019): |g ⊙ θ0|, connection sensitivity on a batch")
def snip_scores(ctx: ScoreContext, mask: MaskSet, batch_size: int = 256) -> Scores:
    saved = _masked_model(ctx, mask)
    params = ctx.params()
    grads = {k: torch.zeros_like(p) for k, p in params.items()}
    try:
        for x, y in _batches(ctx, batch_size):
            loss = F.cross_entropy(ctx.model(x), y, reduction="sum") / len(ctx.y)
            for k, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
                grads[k] += g
        return {k: (grads[k] * params[k].detach()).abs().to("cpu", torch.float64) for k in params}
    finally:
        ctx.model.load_state_dict(saved)


@register_pruner("grasp", "GraSP (Wang et al. 2020): θ0 ⊙ Hg, keep weights whose removal least hurts gradient flow")
def grasp_scores(ctx: ScoreContext, mask: MaskSet, batch_size: int = 256, temperature: float = 200.0) -> Scores:
    # GraSP's S(-θ) = -θ ⊙ Hg removes the *largest* values; keeping the largest θ ⊙ Hg is the same rule.
    saved = _masked_model(ctx, mask)
    params = ctx.params()
    plist = list(params.values())
    try:
        g0 = [torch.zeros_like(p) for p in plist]  # first pass: the gradient, without a graph
        for x, y in _batches(ctx, batch_size):
            loss = F.cross_entropy(ctx.model(x) / temperature, y, reduction="sum") / len(ctx.y)
            for acc, g in zip(g0, torch.autograd.grad(loss, plist)):
                acc += g
        hg = [torch.zeros_like(p) for p in plist]  # second pass: H g = d(g · stop_grad(g)) / dθ
        for x, y in _batches(ctx, batch_size):
            loss = F.cross_entropy(ctx.model(x) / temperature, y, reduction="sum") / len(ctx.y)
            g = torch.autograd.grad(loss, plist, create_graph=True)
            z = sum((gi * g0i).sum() for gi, g0i in zip(g, g0))
            for acc, h in zip(hg, torch.autograd.grad(z, plist)):
                acc += h
        return {k: (h * p.detach()).to("cpu", torch.float64) for (k, p), h in zip(params.items(), hg)}
    finally:
        ctx.model.load_state_dict(saved)


def synflow_scores(ctx: ScoreContext, mask: MaskSet) -> Scores:
    """SynFlow (Tanaka et al. 2020): |θ ⊙ dR/dθ| with R = 1ᵀ(∏|W_l|)1, data-free.

    Computed in float64 on a copy whose weights are |θ| (masked), biases zero and
    BatchNorm in eval mode, on one all-ones input: the path-norm of every weight.
    """
    net = _linearized_copy(ctx.model)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for k in ctx.names:
            params[k].mul_(mask[k].to(params[k].device, params[k].dtype))
    x = torch.ones((1, *ctx.x.shape[1:]), dtype=torch.float64, device=ctx.x.device)
    r = net(x).sum()
    plist = [params[k] for k in ctx.names]
    grads = torch.autograd.grad(r, plist)
    return {k: (g * p.detach()).abs().to("cpu", torch.float64) for k, p, g in zip(ctx.names, plist, grads)}


synflow_scores.iterative = True  # type: ignore[attr-defined]
register_pruner("synflow", "SynFlow (Tanaka et al. 2020): iterative path-norm scores, exponential schedule")(synflow_scores)


def _linearized_copy(model: nn.Module) -> nn.Module:
    import copy

    net = copy.deepcopy(model).to(torch.float64).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                p.abs_()
        for m in net.modules():  # BatchNorm: identity-like, so only weights carry the flow
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return net


def exponential_schedule(sparsity: float, iterations: int) -> list[float]:
    """SynFlow's schedule: density (1-s)^(k/n) after round k of n."""
    return [1.0 - (1.0 - sparsity) ** ((k + 1) / iterations) for k in range(iterations)]


def prune(
    name: str,
    ctx: ScoreContext,
    shapes_mask: MaskSet,
    sparsity: float,
    budget: str = "erk",
    min_output_fan_in: int = 1,
    allow_empty_layers: bool = False,
    params: dict | None = None,
) -> MaskSet:
    """Score with pruner `name` and keep the best weights at `sparsity` (starting from `shapes_mask`)."""
    scorer: Callable = PRUNER.get(name)
    params = dict(params or {})
    iterations = int(params.pop("iterations", 100)) if getattr(scorer, "iterative", False) else 1
    if iterations < 1:
        raise EvoPaiError(f"search.params.iterations: must be at least 1, got {iterations}")
    out = shapes_mask.output_layer
    mask = shapes_mask
    schedule = exponential_schedule(sparsity, iterations) if iterations > 1 else [sparsity]
    for s in schedule:
        try:
            scores = scorer(ctx, mask, **params)
        except TypeError as exc:
            raise EvoPaiError(f"pruner '{name}' does not accept the configured search.params: {exc}") from exc
        # Pruned weights score -inf: an iterative pruner never brings back what it removed.
        scores = {k: torch.nan_to_num(v, nan=float("-inf")).masked_fill(~mask[k], float("-inf")) for k, v in scores.items()}
        mask = MaskSet.from_scores(scores, s, budget, out, min_output_fan_in, allow_empty_layers,
                                   pattern=shapes_mask.pattern)
    return mask

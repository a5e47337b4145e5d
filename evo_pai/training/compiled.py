"""`evaluation.compile: true`: the vectorized trainer's step through torch.compile (off by default).

Two pieces of a training step are compiled: the stacked forward (its backward comes with it via
AOTAutograd) and the masked-gradient update (|g| accumulation + gradient masking, three elementwise
passes per layer in eager mode, one fused kernel compiled). Evaluation (no gradient, inputs shared
by every model) stays eager: it runs once per burst and would only add graphs to compile.

The first burst of every new shape (population chunk K, batch size B, the last partial batch of an
epoch) pays the compilation; torch.compile recompiles with dynamic shapes after the second. On CPU
inductor needs a C++ compiler; on CUDA it needs Triton (shipped with torch's CUDA wheels).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from evo_pai.training.stacked import StackedForward

Update = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[torch.Tensor]], None]


def update_eager(grads, accums, keeps, scratch) -> None:
    """grad_accum += |g|; g *= keep. `scratch` holds |g| (no fresh memory every step)."""
    for g, acc, keep, tmp in zip(grads, accums, keeps, scratch):
        acc.add_(torch.abs(g, out=tmp))
        g.mul_(keep)


def _update_fusable(grads, accums, keeps, scratch) -> None:
    # The same arithmetic without `out=`: inductor fuses abs, add and mul into one pass per layer.
    for g, acc, keep in zip(grads, accums, keeps):
        acc.add_(g.abs())
        g.mul_(keep)


class CompiledForward:
    """A StackedForward whose training calls go through torch.compile; evaluation calls stay eager."""

    def __init__(self, forward: StackedForward):
        self.eager = forward
        self.conv_mode = forward.conv_mode
        self._compiled = torch.compile(forward.__call__)

        self.buffer_names = forward.buffer_names
        self.draw_for = forward.draw_for  # dropout masks are drawn in Python: a graph break, not an input

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, buffers=None, training: bool = True) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self._compiled(params, x, buffers, training)
        return self.eager(params, x, buffers, training)


def compiled_update() -> Update:
    return torch.compile(_update_fusable)

"""The alternative the vectorized backend was measured against: torch.func.vmap over functional_call.

Same interface as evo_pai.training.stacked.StackedForward, so `train_batched` runs unchanged with it and
the benchmark compares the two forward/backward mechanisms and nothing else.
"""
from __future__ import annotations

import torch
from torch.func import functional_call, vmap


class VmapForward:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._f = vmap(lambda p, x: functional_call(model, p, (x,)))

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if x.stride(0) == 0:  # evaluation: the same inputs for every model
            return vmap(lambda p: functional_call(self.model, p, (x[0],)))(params)
        return self._f(params, x)

"""The alternative the vectorized backend was measured against: torch.func.vmap over functional_call.

Same interface as evo_pai.stacked.StackedForward, so `train_batched` runs unchanged with it and
the benchmark compares the two forward/backward mechanisms and nothing else.
"""
from __future__ import annotations

import torch
from torch.func import functional_call, vmap


class VmapForward:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.transposed: set[str] = set()
        self._f = vmap(lambda p, x: functional_call(model, p, (x,)))

    def stack(self, name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(tensors)

    def natural(self, name: str, stacked: torch.Tensor) -> torch.Tensor:
        return stacked

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if x.stride(0) == 0:  # evaluation: the same inputs for every model
            return vmap(lambda p: functional_call(self.model, p, (x[0],)))(params)
        return self._f(params, x)

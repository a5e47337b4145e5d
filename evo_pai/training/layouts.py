"""Activations of K models in the hand-batched forward (training/stacked.py), and the functions and tensor
methods it replays on them, dropout with each model's own masks included.

Activations travel in one of three layouts, converted only where needed:
  "kb":   (K, B, ...)                   what bmm and the loss want
  "ch":   (B, K*C, H, W), channels_last  what a grouped convolution and pooling want
  "list": K tensors (B, C, H, W)         model by model, for large convolutions
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from evo_pai.core.errors import EvoPaiError
from evo_pai.training.draws import noise_stack


@dataclass
class Act:
    t: torch.Tensor | list[torch.Tensor]
    layout: str  # "kb", "ch" or "list"
    k: int

    def kb(self) -> torch.Tensor:
        if self.layout == "kb":
            return self.t
        if self.layout == "list":
            return torch.stack(self.t)
        b, kc = self.t.shape[:2]
        return self.t.view(b, self.k, kc // self.k, *self.t.shape[2:]).transpose(0, 1)

    def ch(self) -> torch.Tensor:
        if self.layout == "ch":
            return self.t
        if self.layout == "list":
            return torch.cat(self.t, 1).contiguous(memory_format=torch.channels_last)
        k, b, c, h, w = self.t.shape
        # channels_last: oneDNN's grouped convolution runs ~1.3x faster in NHWC than in NCHW (measured)
        return self.t.permute(1, 3, 4, 0, 2).contiguous().view(b, h, w, k * c).permute(0, 3, 1, 2)

    def parts(self) -> list[torch.Tensor]:
        if self.layout == "list":
            return self.t
        if self.layout == "kb":
            return list(self.t.unbind(0))
        b, kc = self.t.shape[:2]
        return list(self.t.view(b, self.k, kc // self.k, *self.t.shape[2:]).unbind(1))

    def map(self, fn) -> "Act":
        """Apply a per-example, per-channel function."""
        if self.layout == "list":
            return Act([fn(x) for x in self.t], "list", self.k)
        if self.layout == "ch":
            return Act(fn(self.t), "ch", self.k)
        return Act(fn(self.t.flatten(0, 1)).unflatten(0, (self.k, -1)), "kb", self.k)


def _getitem(a, index):
    """Spatial slicing of images (`x[:, :, ::2, ::2]`): every model sliced alike."""
    if not isinstance(a, Act):
        return operator.getitem(a, index)
    index = index if isinstance(index, tuple) else (index,)
    if len(index) < 2 or any(i != slice(None) for i in index[:2]):
        raise EvoPaiError("vectorized backend: only slicing past the batch and channel dims can be batched")
    if a.layout == "list":
        return Act([x[index] for x in a.t], "list", a.k)
    if a.layout == "ch":
        return Act(a.t[index], "ch", a.k)
    return Act(a.t[(slice(None), *index)], "kb", a.k)


def _pad(a: Act, pad, mode: str = "constant", value: float | None = None) -> Act:
    """F.pad on the last dims (zero channels in a ResNet's option-A shortcut): per model."""
    if mode != "constant":
        raise EvoPaiError(f"vectorized backend: F.pad mode '{mode}' cannot be batched (constant only)")
    if a.layout == "list":
        return Act([F.pad(x, pad, mode, value) for x in a.t], "list", a.k)
    return Act(F.pad(a.kb(), pad, mode, value), "kb", a.k)


def _per_example(fn):
    """A function acting on each example and channel alone (pooling): any layout, unchanged."""
    def apply(a: Act, *args, **kwargs) -> Act:
        return a.map(lambda t: fn(t, *args, **kwargs))
    return apply


def _flatten(a: Act, start: int = 0, end: int = -1) -> Act:
    if a.layout == "list":  # per-model tensors keep their own dims
        return Act([x.flatten(start, end) for x in a.t], "list", a.k)
    start = start + 1 if start >= 0 else start
    end = end + 1 if end >= 0 else end
    return Act(a.kb().flatten(start, end), "kb", a.k)


def _relu(a: Act, inplace: bool = False) -> Act:
    return a.map(F.relu)


def _add(a, b):
    if not (isinstance(a, Act) and isinstance(b, Act)):
        raise EvoPaiError("vectorized backend: only activation + activation additions can be batched")
    if a.layout == b.layout == "list":
        return Act([x + y for x, y in zip(a.t, b.t)], "list", a.k)
    if a.layout == b.layout:
        return Act(a.t + b.t, a.layout, a.k)
    return Act(a.kb() + b.kb(), "kb", a.k)


def _mean(a: Act, dim, keepdim: bool = False, *, dtype=None) -> Act:
    """`h.mean((2, 3))` (global average pooling as user code writes it): each model's own dims, shifted past K."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if a.layout == "list":
        return Act([x.mean(dims, keepdim=keepdim, dtype=dtype) for x in a.t], "list", a.k)
    return Act(a.kb().mean(tuple(d + 1 for d in dims), keepdim=keepdim, dtype=dtype), "kb", a.k)


def mean_dims_ok(args: tuple, kwargs: dict) -> bool:
    """Whether a traced `mean` can be batched here: dims given, none of them the batch dim or negative."""
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    dims = (dim,) if isinstance(dim, int) else dim
    return isinstance(dims, (tuple, list)) and len(dims) > 0 and all(isinstance(d, int) and d >= 1 for d in dims)


def dropout(a: Act, p: float, batched_dims: int | None, gens: Sequence) -> Act:
    """Dropout (`batched_dims` None) or channel dropout (Dropout2d: 4) of K models, model i's keep-mask drawn
    from `gens[i]` exactly as training/draws.Draws draws it for that model trained alone."""
    h = a.kb()
    per = h.shape[1:]
    if batched_dims is None:
        shape = tuple(per)
    else:
        lead = 2 if len(per) == batched_dims else 1
        shape = (*per[:lead], *[1] * (len(per) - lead))
    if p >= 1:
        return Act(h * torch.zeros(shape, dtype=h.dtype, device=h.device), "kb", a.k)
    m = noise_stack(shape, p, h.dtype, gens).to(h.device)
    return Act(h * m, "kb", a.k)


FUNCTIONS = {torch.flatten: _flatten, F.relu: _relu, torch.relu: _relu, operator.add: _add, torch.mean: _mean,
              operator.getitem: _getitem, F.pad: _pad,
              **{f: _per_example(f) for f in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d,
                                               F.max_pool2d)}}
METHODS = {"flatten": torch.flatten, "relu": torch.relu, "mean": torch.mean}

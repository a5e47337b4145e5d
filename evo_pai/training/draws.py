"""Dropout drawn from each model's own generator, the same in the sequential and the vectorized trainer.

torch's dropout draws from the global generator; K models in one `torch.func.vmap` pass cannot use it
in the order K separate runs would. Under `Draws` (a TorchFunctionMode) every dropout of a forward —
`F.dropout`, `F.dropout1d/2d/3d`, `torch.dropout`, and the attention dropout inside
`scaled_dot_product_attention` (what `nn.MultiheadAttention` and `nn.TransformerEncoderLayer` call) —
takes its keep-mask from a `source` instead:

- `train_masked` (one model): a CPU generator seeded by (task seed, lineage step) — `step_generator` —
  drawn as the forward asks (`Lazy`);
- the vectorized trainer: the same generator for each of the K models, drawn before the step in the
  same order and shapes (recorded once per input shape by `Record`) and handed to vmap stacked (`Given`).

So model k's masks are a function of its seed and the lineage's step, whichever backend trains it: the two
trainers agree bit for bit, and a resumed or continued lineage draws what the uninterrupted one drew.
Attention runs as its math definition (softmax(Q Kᵀ · scale + mask) V) in both trainers, which vmap
batches (the fused CPU kernel has no batching rule). Other random operations are left to torch: the
sequential trainer draws them from the global generator; vmap refuses them (training/vmapped.py).
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from evo_pai.core.errors import EvoPaiError
from evo_pai.data.augment import step_seed
from evo_pai.models.shapes import eval_mode

_DROPOUT_STREAM = 0xD80_0F7  # keeps these draws apart from the batch order and augmentation of the same seed
_FEATURE_DIMS = {F.dropout1d: 3, F.dropout2d: 4, F.dropout3d: 5}  # batched input dims of channel dropout


def step_generator(seed: int, step: int) -> np.random.Generator:
    """The generator of a model's dropout masks at one step of its lineage. numpy's PCG64: its float32
    uniforms measured 4.3x faster than torch's CPU `bernoulli_` (3.5 vs 15 ms for a transformer's 2.6M
    draws per model and step), and the draws cost every trainer as much as a small model's step."""
    return np.random.Generator(np.random.PCG64(step_seed(seed, step, _DROPOUT_STREAM)))


_NUMPY = {torch.float64: np.float64, torch.float32: np.float32}


def noise_stack(shape: Sequence[int], p: float, dtype: torch.dtype, gens: Sequence[np.random.Generator]) -> torch.Tensor:
    """(len(gens), *shape) on the CPU: model i's keep-mask / (1 − p), kept where a uniform from gens[i] is ≥ p —
    what its input is multiplied by. Written in place model by model: no stacking copy, no extra pass."""
    shape = tuple(shape)
    out = np.empty((len(gens), *shape), dtype=_NUMPY.get(dtype, np.float32))
    scale = 1.0 / (1.0 - p)
    for o, gen in zip(out, gens):
        np.multiply(gen.random(shape, dtype=np.float32) >= p, scale, out=o)
    t = torch.from_numpy(out)
    return t if t.dtype == dtype else t.to(dtype)


def noise(shape: Sequence[int], p: float, dtype: torch.dtype, gen: np.random.Generator) -> torch.Tensor:
    """One model's multiplier (noise_stack of one)."""
    return noise_stack(shape, p, dtype, [gen])[0]


class Lazy:
    """One model's masks, drawn from `gen` in the order the forward asks for them."""

    def __init__(self, gen: np.random.Generator):
        self.gen = gen

    def __call__(self, shape, p, like: torch.Tensor) -> torch.Tensor:
        return noise(shape, p, like.dtype, self.gen).to(like.device)


class Record:
    """No masks of consequence (ones): notes (shape, p, dtype) of every draw, for `draw_plan`."""

    def __init__(self):
        self.plan: list[tuple[tuple[int, ...], float, torch.dtype]] = []

    def __call__(self, shape, p, like: torch.Tensor) -> torch.Tensor:
        self.plan.append((tuple(shape), p, like.dtype))
        return torch.ones(tuple(shape), dtype=like.dtype, device=like.device)


class Given:
    """Masks drawn beforehand, handed out in order (inside vmap: each model's slice of the stack)."""

    def __init__(self, masks: Sequence[torch.Tensor]):
        self.masks, self.i = masks, 0

    def __call__(self, shape, p, like: torch.Tensor) -> torch.Tensor:
        if self.i >= len(self.masks) or tuple(self.masks[self.i].shape) != tuple(shape):
            raise EvoPaiError("vectorized backend: the model's dropout calls changed between forward passes "
                              "(data-dependent control flow); use evaluation.backend local")
        self.i += 1
        return self.masks[self.i - 1]


def _no_source(shape, p, like):
    raise EvoPaiError("dropout drawn outside training (F.dropout with training=True in eval mode): pass "
                      "training=self.training")


class Draws(TorchFunctionMode):
    """Dropout and attention from `source(shape, p, like) -> multiplier` (None: evaluation, no draws)."""

    def __init__(self, source: Callable | None = None):
        super().__init__()
        self.source = source or _no_source

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            return self._dropout(*args, **kwargs)
        if func is torch.dropout:  # torch.dropout(input, p, train)
            return self._dropout(*args, **kwargs)
        if func in _FEATURE_DIMS:
            return self._feature(_FEATURE_DIMS[func], *args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return self._attention(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            return self._multi_head(func, args, kwargs)
        return func(*args, **kwargs)

    def _multi_head(self, func, args, kwargs):
        """Its attention and attention dropout are calls inside torch's Python function, which this mode
        does not see (a mode is off inside its own handler, and re-entering it would dispatch the same
        function again): the two names that function looks up are pointed here for the call."""
        saved = F.scaled_dot_product_attention, F.dropout
        F.scaled_dot_product_attention, F.dropout = self._attention, self._dropout
        try:
            return func(*args, **kwargs)
        finally:
            F.scaled_dot_product_attention, F.dropout = saved

    def _apply(self, x: torch.Tensor, shape, p: float, inplace: bool) -> torch.Tensor:
        m = self.source(shape, p, x) if p < 1 else torch.zeros(shape, dtype=x.dtype, device=x.device)
        return x.mul_(m) if inplace else x * m

    def _dropout(self, input, p=0.5, training=True, inplace=False, train=None):
        training = training if train is None else train
        if not training or p == 0:
            return input
        return self._apply(input, input.shape, p, inplace)

    def _feature(self, batched_dims: int, input, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return input
        lead = 2 if input.dim() == batched_dims else 1  # (N, C, ...) or one example (C, ...)
        return self._apply(input, (*input.shape[:lead], *[1] * (input.dim() - lead)), p, inplace)

    def _attention(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if enable_gqa and k.size(-3) != q.size(-3):
            k = k.repeat_interleave(q.size(-3) // k.size(-3), -3)
            v = v.repeat_interleave(q.size(-3) // v.size(-3), -3)
        w = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.size(-1)) if scale is None else scale)
        if is_causal:
            causal = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
            w = w.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            w = w.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else w + attn_mask
        w = torch.softmax(w, -1)
        if dropout_p > 0:
            w = self._apply(w, w.shape, dropout_p, False)
        return w @ v


_RANDOM = (F.dropout, torch.dropout, *_FEATURE_DIMS, F.scaled_dot_product_attention, F.multi_head_attention_forward)
_USES: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


class _Seen(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen = self.seen or func in _RANDOM
        return func(*args, **(kwargs or {}))


def uses_draws(model: nn.Module, input_shape: Sequence[int]) -> bool:
    """Whether the model's forward calls dropout or attention (one probing forward per model, cached):
    only those models run under `Draws`, the others pay nothing."""
    if model not in _USES:
        p = next(model.parameters())
        seen = _Seen()
        with torch.no_grad(), eval_mode(model), seen:
            model(torch.zeros(2, *input_shape, dtype=p.dtype, device=p.device))
        _USES[model] = seen.seen
    return _USES[model]


def drawn(forward: Callable, seed: int | None, step: int = 0) -> Callable:
    """`forward` under `Draws`: masks from (seed, step) of the lineage, or none (evaluation) for seed None."""
    source = None if seed is None else Lazy(step_generator(seed, step))

    def call(*args, **kwargs):
        with Draws(source):
            return forward(*args, **kwargs)
    return call

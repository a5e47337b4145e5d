"""The vectorized trainer's forward for models the hand path does not know: `torch.func.vmap` over
`functional_call` with the K models' parameters and buffers stacked (PyTorch's model-ensembling recipe).

`make_forward` picks: the hand-batched `StackedForward` (training/stacked.py) where it knows every op of
the model — measured faster than vmap on the shipped models (docs/performance.md) — else the whole
forward through vmap: LayerNorm, GroupNorm, attention, tensor methods (`mean`, `view`, `permute`, ...),
any `F.*`, Dropout. Dropout takes each model's masks from its own generator (training/draws.py), drawn
before the step outside vmap and handed in stacked, so vectorized and sequential training agree.
BatchNorm runs inside vmap on the stacked running statistics, updated in place as the hand path does.

What vmap cannot batch is refused at construction, in one line, after a trial forward and backward of two
models: data-dependent control flow (`if` on a tensor's value, `.item()`, BatchNorm with momentum None),
in-place writes of batched values into a tensor that is not batched (one made inside forward, a plain
tensor attribute), random operations other than dropout (vmap's randomness='error').
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from evo_pai.core.errors import EvoPaiError
from evo_pai.training.draws import Draws, Given, Record, noise_stack, step_generator
from evo_pai.training.stacked import NotBatchable, StackedForward


def make_forward(model: nn.Module, model_name: str, input_shape: Sequence[int] | None = None,
                 batch_size: int = 128, conv_mode: str = "auto") -> "StackedForward | VmapForward":
    """The hand path where it batches every op, else vmap; a model neither can batch raises NotBatchable."""
    try:
        return StackedForward(model, model_name, input_shape, batch_size, conv_mode)
    except NotBatchable as hand:
        if input_shape is None:
            raise
        return VmapForward(model, model_name, input_shape, hand.why)


def _why(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    short = text[:160] + ("..." if len(text) > 160 else "")
    if "data-dependent control flow" in text or ".item()" in text:
        kind = "has data-dependent control flow (Python reads a tensor's value)"
    elif "inplace" in text or "in-place" in text or "match the broadcast shape" in text:
        kind = "writes in place into a tensor that is not batched (made in forward, or a plain attribute)"
    elif "random" in text:
        kind = "draws random numbers other than dropout"
    else:
        kind = "fails under torch.func.vmap"
    return f"{kind}: {type(exc).__name__}: {short}"


class VmapForward:
    """Callable `(params, x, buffers, training) -> logits (K, B, classes)`, as StackedForward; `buffers`
    holds every buffer of the state dict stacked (BatchNorm statistics updated in place when training).
    Before a training call, `draw_for(seeds, step)` says whose dropout masks and at which lineage step."""

    conv_mode = "vmap"

    def __init__(self, model: nn.Module, model_name: str, input_shape: Sequence[int], hand_why: str = ""):
        self.model, self.model_name, self.hand_why = model, model_name, hand_why
        self.modules = dict(model.named_modules())  # as StackedForward's: what reads module settings finds them
        state = model.state_dict()
        self.buffer_names = [n for n, _ in model.named_buffers() if n in state]
        self.seeds: list[int] | None = None
        self.step = 0
        self._plans: dict[tuple, list] = {}  # per-model input (shape, dtype) -> the forward's dropout draws
        self._check(input_shape)

    def draw_for(self, seeds: Sequence[int], step: int) -> None:
        self.seeds, self.step = list(seeds), step

    def __call__(self, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                 buffers: Mapping[str, torch.Tensor] | None = None, training: bool = True) -> torch.Tensor:
        """`x`: (K, B, *input_shape), one batch per model (stride 0 on K: the same inputs for all)."""
        k = x.shape[0]
        shared = k > 1 and x.stride(0) == 0
        buffers = {n: buffers[n] for n in self.buffer_names} if buffers else {}
        masks = self._masks(params, buffers, x[0], k) if training else ()
        was = self.model.training
        self.model.train(training)
        try:
            return vmap(self._one if training else self._one_eval, in_dims=(0, 0, None if shared else 0, 0),
                        randomness="error")(dict(params), buffers, x[0] if shared else x, masks)
        finally:
            self.model.train(was)

    def _one(self, p, b, x, masks):
        with Draws(Given(masks)):
            return functional_call(self.model, (p, b), (x,))

    def _one_eval(self, p, b, x, masks):
        with Draws(None):
            return functional_call(self.model, (p, b), (x,))

    def _masks(self, params, buffers, x0: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """The K models' dropout masks for this step, stacked per draw: model i's from its own generator,
        in the order and shapes the forward draws them (as train_masked draws them one by one)."""
        key = (tuple(x0.shape), x0.dtype)
        if key not in self._plans:
            self._plans[key] = self._record(params, buffers, x0)
        plan = self._plans[key]
        if not plan:
            return ()
        if self.seeds is None or len(self.seeds) != k:
            raise ValueError("VmapForward: call draw_for(seeds, step) with the K models' seeds before training")
        gens = [step_generator(seed, self.step) for seed in self.seeds]  # each drawn in the plan's order
        return tuple(noise_stack(shape, p, dtype, gens).to(x0.device) for shape, p, dtype in plan)

    @torch.no_grad()
    def _record(self, params, buffers, x0: torch.Tensor) -> list:
        """One model's training forward (statistics on copies) with the draws noted, not applied."""
        rec = Record()
        was = self.model.training
        self.model.train(True)
        try:
            with Draws(rec):
                functional_call(self.model, ({n: t[0] for n, t in params.items()},
                                             {n: t[0].clone() for n, t in buffers.items()}), (x0,))
        finally:
            self.model.train(was)
        return [(shape, p, dtype) for shape, p, dtype in rec.plan if p < 1]

    def _check(self, input_shape: Sequence[int]) -> None:
        """A training step (forward, backward) and an evaluation of two models on two examples."""
        p0 = next(self.model.parameters())
        params = {n: torch.stack([t.detach()] * 2).requires_grad_() for n, t in self.model.named_parameters()}
        own = dict(self.model.named_buffers())
        buffers = {n: torch.stack([own[n].detach().clone()] * 2) for n in self.buffer_names}
        x = torch.randn(2, 2, *input_shape, generator=torch.Generator().manual_seed(0)).to(p0.device, p0.dtype)
        self.draw_for([0, 1], 0)
        try:
            self(params, x, buffers, True).sum().backward()
            with torch.no_grad():
                self(params, x[:1].expand_as(x), buffers, False)
        except EvoPaiError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever vmap raises means "cannot batch"
            raise NotBatchable(self.model_name, _why(exc)) from None
        finally:
            self.seeds, self._plans = None, {}

"""Forward pass of K same-shaped networks at once, from parameters stacked on a leading K dim.

The model's own forward is traced once with torch.fx; the graph is then replayed with batched
kernels: Linear -> one `baddbmm`; Conv2d -> one grouped convolution (groups=K) for small
convolutions, or one convolution per model for large ones on CPU (see `conv_mode`); BatchNorm ->
one `F.batch_norm` over K*C channels with the K models' running statistics stacked (K, C), as
HFTA fuses it (each channel is normalised by its own batch statistics, so the K models stay
independent). Hand batching was chosen by measurement over torch.func.vmap (docs/performance.md).

Activations travel in the layouts of training/layouts.py. Dropout draws each model's masks from its
own generator (training/draws.py). Models with other ops go to torch.func.vmap (training/vmapped.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.models.shapes import eval_mode
from evo_pai.training.draws import step_generator
from evo_pai.training.layouts import FUNCTIONS, METHODS, Act, dropout, mean_dims_ok

# Modules that act on each example (and, for images, each channel) independently: they run
# unchanged on any layout, so K models cost one call ("list": K calls).
_PER_EXAMPLE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Identity,
                nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_BATCH_NORM = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d: batched with per-model statistics
_NORM = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # the others: refused
# Dropout modules, by the input dims of a batch for channel dropout (None: element-wise); each model's masks
# drawn from its own generator as train_masked draws them (training/draws.py)
_DROPOUT = {nn.Dropout: None, nn.Dropout1d: 3, nn.Dropout2d: 4, nn.Dropout3d: 5}
_DROPOUT_TYPES = tuple(_DROPOUT)
MIN_GROUP_CHANNELS = 4  # below this many input channels per model, convolve model by model
# On CPU, a convolution whose output for one model and one batch has at least this many elements
# runs model by model: its compute dwarfs the per-call overhead that batching saves, and K times
# larger activations cost page faults and copies (Conv-4 on 28x28, measured: grouped 0.73-0.87x
# of sequential, per model ~1.0x; LeNet-5's small convolutions gain from grouping).
PER_MODEL_MIN_ELEMENTS = 2**21


@dataclass(frozen=True)
class _Ref:
    name: str  # an earlier step's output


def _refs(a):
    return _Ref(a.name) if isinstance(a, fx.Node) else a


class NotBatchable(EvoPaiError):
    """A model the vectorized backend cannot batch; `why` says what in it (training/vmapped.py then tries
    torch.func.vmap where the hand path refused)."""

    def __init__(self, model_name: str, why: str):
        super().__init__(f"evaluation.backend: model '{model_name}' {why}, which the vectorized backend cannot batch; "
                         f"use evaluation.backend local, or ray with evaluation.actor_trainer sequential")
        self.why = why


def _refuse(model_name: str, why: str) -> EvoPaiError:
    return NotBatchable(model_name, why)


def _conv_output_elements(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Largest Conv2d output for one example (0 without convolutions)."""
    sizes = [0]
    hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel()))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    p = next(model.parameters())
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    return max(sizes)


class StackedForward:
    """Callable `(params, x, buffers, training) -> logits (K, B, classes)`; `params` and `buffers`
    map names to tensors stacked with `torch.stack` (a leading K dim on each one's own shape).
    `buffers` holds the BatchNorm running statistics (`buffer_names`), updated in place when
    `training`; without `training` they normalise, as `model.eval()` does.

    conv_mode: "grouped" (every convolution), "per_model", or "auto": on CPU per model when a
    convolution's output for one model and `batch_size` examples reaches PER_MODEL_MIN_ELEMENTS or
    it has fewer than MIN_GROUP_CHANNELS input channels per model, else grouped; on CUDA grouped.
    """

    def __init__(self, model: nn.Module, model_name: str, input_shape: Sequence[int] | None = None,
                 batch_size: int = 128, conv_mode: str = "auto"):
        for name, m in model.named_modules():
            if isinstance(m, nn.MultiheadAttention):  # masked by name in the sequential trainer only
                raise _refuse(model_name, f"has a MultiheadAttention layer ({name})")
            if isinstance(m, _BATCH_NORM) and m.momentum is None:
                raise _refuse(model_name, f"has {type(m).__name__} layers ({name}) with momentum None "
                                          "(a cumulative average)")
            if isinstance(m, _NORM) and not isinstance(m, _BATCH_NORM):
                raise _refuse(model_name, f"has {type(m).__name__} layers ({name})")
        try:
            self.graph = fx.symbolic_trace(model).graph
        except Exception as exc:  # noqa: BLE001 - any tracing failure means "cannot batch"
            raise _refuse(model_name, f"cannot be traced by torch.fx ({type(exc).__name__})") from None
        self.modules = dict(model.named_modules())
        self.model_name = model_name
        self.buffer_names = [n for n, _ in model.named_buffers()
                             if isinstance(self.modules[n.rpartition(".")[0]], _BATCH_NORM)]
        for node in self.graph.nodes:  # fail now, not in the middle of a burst
            self._check(node)
        self.seeds: list[int] | None = None  # whose dropout masks, at which lineage step (draw_for)
        self.step = 0
        self._gens: list = []  # numpy generators of the current training call
        # The graph as a plain list of steps, node references replaced by names: what __call__ walks
        # (torch.compile cannot trace into fx.Graph's node list).
        self.program = [(n.op, n.name, n.target, tuple(_refs(a) for a in n.args),
                         {k: _refs(v) for k, v in n.kwargs.items()}) for n in self.graph.nodes]
        device_type = next(model.parameters()).device.type
        # Small convolutions model by model is a CPU rule (oneDNN, measured); on CUDA, one grouped call
        # replaces K kernel launches (benchmarks/gpu_check.py times both).
        self.min_group_channels = MIN_GROUP_CHANNELS if conv_mode == "auto" and device_type == "cpu" else 1
        if conv_mode == "auto":
            big = input_shape is not None and _conv_output_elements(model, input_shape) * batch_size >= PER_MODEL_MIN_ELEMENTS
            conv_mode = "per_model" if device_type == "cpu" and big else "grouped"
        if conv_mode not in ("grouped", "per_model"):
            raise ValueError(f"conv_mode must be auto, grouped or per_model, not {conv_mode!r}")
        self.conv_mode = conv_mode

    def draw_for(self, seeds: Sequence[int], step: int) -> None:
        """Dropout masks of the next training call: model i's from (seeds[i], step) (training/draws.py)."""
        self.seeds, self.step = list(seeds), step

    def _check(self, node: fx.Node) -> None:
        if node.op == "call_module":
            m = self.modules[node.target]
            if not isinstance(m, (nn.Linear, nn.Conv2d, nn.Flatten, *_DROPOUT_TYPES, _BATCH_NORM, *_PER_EXAMPLE)):
                raise _refuse(self.model_name, f"has a {type(m).__name__} layer ({node.target})")
        elif node.op == "call_method" and (node.target not in ("flatten", "relu", "mean")
                                           or node.target == "mean" and not mean_dims_ok(node.args, node.kwargs)):
            raise _refuse(self.model_name, f"calls Tensor.{node.target} in forward")
        elif node.op == "call_function" and node.target is torch.mean and not mean_dims_ok(node.args, node.kwargs):
            raise _refuse(self.model_name, "calls torch.mean without dims past the batch's")
        elif node.op == "call_function" and node.target not in FUNCTIONS:
            raise _refuse(self.model_name, f"calls {getattr(node.target, '__name__', node.target)} in forward")
        elif node.op == "get_attr":
            raise _refuse(self.model_name, f"reads attribute {node.target} in forward")

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None,
                 training: bool = True) -> torch.Tensor:
        """`x`: (K, B, *input_shape) inputs, one batch per model (stride 0 on K: shared inputs)."""
        k = x.shape[0]
        if self.buffer_names and buffers is None:
            raise ValueError("this model has BatchNorm: pass the stacked running statistics as `buffers`")
        state = (buffers or {}, training)
        env: dict[str, object] = {}
        self._gens = [step_generator(s, self.step) for s in self.seeds or []] if training else []

        def val(a):
            return env[a.name] if isinstance(a, _Ref) else a

        for op, name, target, args, kwargs in self.program:
            if op == "placeholder":
                env[name] = Act(x, "kb", k)
            elif op == "call_module":
                env[name] = self._module(target, val(args[0]), params, state)
            elif op in ("call_method", "call_function"):
                fn = FUNCTIONS[METHODS.get(target, target)]
                env[name] = fn(*[val(a) for a in args], **{kk: val(v) for kk, v in kwargs.items()})
            elif op == "output":
                return val(args[0]).kb()
        raise AssertionError("fx graph without output")

    def _module(self, name: str, a: Act, params: dict[str, torch.Tensor], state: tuple) -> Act:
        m = self.modules[name]
        if isinstance(m, _BATCH_NORM):
            return _batch_norm(m, name, a, params, *state)
        if isinstance(m, nn.Linear):
            h = a.kb()
            lead = h.shape[1:-1]
            h = h.reshape(a.k, -1, h.shape[-1])
            out = _StackedLinear.apply(h, params[f"{name}.weight"], params.get(f"{name}.bias"))
            return Act(out.view(a.k, *lead, out.shape[-1]), "kb", a.k)
        if isinstance(m, nn.Conv2d):
            return self._conv(m, a, params[f"{name}.weight"], params.get(f"{name}.bias"))
        if isinstance(m, nn.Flatten):
            return _flatten(a, m.start_dim, m.end_dim)
        if isinstance(m, _DROPOUT_TYPES):
            if not state[1] or m.p == 0:
                return a
            if len(self._gens) != a.k:
                raise ValueError("StackedForward: call draw_for(seeds, step) with the K models' seeds before training")
            return dropout(a, m.p, next(d for t, d in _DROPOUT.items() if isinstance(m, t)), self._gens)
        return a.map(m)

    def _conv(self, m: nn.Conv2d, a: Act, w: torch.Tensor, bias: torch.Tensor | None) -> Act:
        k = a.k
        shared = a.layout == "kb" and a.t.stride(0) == 0  # evaluation: every model sees the same images
        if self.conv_mode == "per_model" or m.in_channels // m.groups < self.min_group_channels:
            # Model by model (also where oneDNN's grouped kernel with 1-3 input channels per group is
            # 4-20x slower than K separate convolutions: first layers, measured).
            xs = [a.t[0]] * k if shared else a.parts()
            return Act([F.conv2d(xs[i], w[i], None if bias is None else bias[i], m.stride, m.padding,
                                  m.dilation, m.groups) for i in range(k)], "list", k)
        flat_b = None if bias is None else bias.flatten()
        if shared and m.groups == 1:  # one convolution with all K*O filters
            out = F.conv2d(a.t[0], w.flatten(0, 1), flat_b, m.stride, m.padding, m.dilation)
            return Act(out.contiguous(memory_format=torch.channels_last), "ch", k)
        out = F.conv2d(a.ch(), w.flatten(0, 1), flat_b, m.stride, m.padding, m.dilation, m.groups * k)
        return Act(out, "ch", k)


class _StackedLinear(torch.autograd.Function):
    """K Linear layers at once: y[k] = x[k] @ w[k]^T + b[k], w stacked (K, out, in) as nn.Linear stores it.

    The backward writes dW = dy^T @ x straight into w's layout. (Stacking w transposed, (K, in, out),
    and letting autograd differentiate bmm measured 3-6 % slower bursts: the weight gradient then
    multiplies x transposed.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        # train.precision bf16: the backward runs under the forward's autocast (torch.amp.custom_bwd's
        # rule), so dy (bfloat16) and the float32 weights meet in one dtype
        ctx.device_type = x.device.type
        ctx.autocast = torch.is_autocast_enabled(ctx.device_type)
        ctx.autocast_dtype = torch.get_autocast_dtype(ctx.device_type)
        wt = w.transpose(1, 2)
        return torch.bmm(x, wt) if b is None else torch.baddbmm(b.unsqueeze(1), x, wt)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        if ctx.autocast:
            with torch.autocast(ctx.device_type, dtype=ctx.autocast_dtype):
                return _StackedLinear._grads(ctx, dy)
        return _StackedLinear._grads(ctx, dy)

    @staticmethod
    def _grads(ctx, dy: torch.Tensor):
        x, w = ctx.saved_tensors
        dx = torch.bmm(dy, w) if ctx.needs_input_grad[0] else None
        dw = torch.bmm(dy.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        db = dy.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def _batch_norm(m: nn.modules.batchnorm._BatchNorm, name: str, a: Act, params: dict[str, torch.Tensor],
                buffers: dict[str, torch.Tensor], training: bool) -> Act:
    """K BatchNorm layers in one call: channels of the K models side by side (K*C), weights, biases and
    running statistics flattened from their (K, C) stacks. F.batch_norm updates the running statistics
    in place: through the flattened views, in the stacked buffers."""
    k = a.k
    w, b = params.get(f"{name}.weight"), params.get(f"{name}.bias")
    mean, var = buffers.get(f"{name}.running_mean"), buffers.get(f"{name}.running_var")
    batch_stats = training or mean is None
    if training and mean is not None:
        buffers[f"{name}.num_batches_tracked"].add_(1)  # as nn.BatchNorm counts (momentum is set: unused)

    def call(x, i=None):
        pick = (lambda t: t) if i is not None else (lambda t: t.reshape(-1))
        sel = (lambda t: None if t is None else pick(t[i] if i is not None else t))
        return F.batch_norm(x, sel(mean), sel(var), sel(w), sel(b), batch_stats, m.momentum, m.eps)

    if a.layout == "list":
        return Act([call(x, i) for i, x in enumerate(a.t)], "list", k)
    if a.layout == "ch" or a.t.dim() == 5:
        return Act(call(a.ch()), "ch", k)
    h = a.t  # (K, B, C, *rest): BatchNorm1d
    x = h.transpose(0, 1).reshape(h.shape[1], k * h.shape[2], *h.shape[3:])
    out = call(x).view(h.shape[1], k, *h.shape[2:]).transpose(0, 1)
    return Act(out, "kb", k)

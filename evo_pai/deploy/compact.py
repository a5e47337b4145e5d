"""Compaction: the masked network with its dead units removed, as a smaller dense network.

A hidden unit (neuron or conv channel) is dead when no kept weight reads a live input into it, or
when no kept weight carries it to a unit that is kept; removal propagates through the layers. A
unit with no live input is not silent — it outputs the constant act(b) — so its contribution is
folded into the next layer's bias, exactly: b_next += W_next[:, u] · relu(b_u) (summed over the
unit's columns: the H·W positions of a flattened map, the kernel of a conv). Into a conv with zero
padding that fold is not exact at the borders, so such a channel is kept unless relu(b_u) = 0.
MLP inputs (pixels) that no kept weight reads are dropped by an index select when that removes
more than half of them (otherwise the gather costs more time than the smaller matmul saves).

The result (`CompactNet`) is described by a spec (a list of layers with sizes) and a state dict;
`save_compact` writes both into one safetensors file and `load_compact(path)` rebuilds it.
Outputs equal the masked network's up to float rounding: the fold reorders sums (compaction runs in
float64 and casts back; tests/test_compact.py checks 1e-5 relative in float32, 1e-12 in float64).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.core.tensor_files import read_tagged
from evo_pai.models.networks import count_flops
from evo_pai.models.units import Link, links, sequence, unit_columns

FORMAT = "evo_pai.compact/1"


class Select(nn.Module):
    """Keep the input features `index` (after flattening): the pixels some kept weight reads."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index.to(torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


class CompactNet(nn.Module):
    """The compacted network. `forward` calls the functional ops directly: at batch 1 a LeNet layer
    costs a few microseconds, so the per-module call overhead of nn.Sequential would be a large
    share of what compaction saves (same arithmetic either way)."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = spec
        self._plan: list | None = None
        self.layers = nn.Sequential(*[_build(layer) for layer in spec["layers"]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._plan is None:  # looked up once: Module attribute access costs ~0.5 µs each, a dict lookup ~30 ns
            # A Linear's parameter dict, not its tensors: a reassigned or converted parameter is seen too.
            self._plan = [(("linear", m._parameters, None) if isinstance(m, nn.Linear) else
                           ("relu", None, None) if isinstance(m, nn.ReLU) else
                           ("flatten", None, None) if isinstance(m, nn.Flatten) else ("module", m, None))
                          for m in self.layers]
        for kind, a, b in self._plan:
            if kind == "linear":
                x = F.linear(x, a["weight"], a["bias"])
            elif kind == "relu":
                x = F.relu(x)
            elif kind == "flatten":
                x = x.flatten(1)
            else:
                x = a(x)
        return x

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda(): rebuild the plan (cheap; the dicts would also follow)
        self._plan = None
        return super()._apply(fn, *args, **kwargs)


def _build(layer: dict) -> nn.Module:
    kind = layer["type"]
    if kind == "linear":
        return nn.Linear(layer["in"], layer["out"])
    if kind == "conv":
        return nn.Conv2d(layer["in"], layer["out"], tuple(layer["kernel"]), tuple(layer["stride"]), tuple(layer["padding"]))
    if kind == "select":
        return Select(torch.zeros(layer["size"], dtype=torch.int64))
    return {"relu": nn.ReLU, "flatten": nn.Flatten}[kind]() if kind != "maxpool" else \
        nn.MaxPool2d(layer["kernel"], layer["stride"], layer["padding"])


def _cols(link: Link | None, keep: torch.Tensor, width: int) -> torch.Tensor:
    """Consumer input columns (flattened) of the kept units."""
    if link is None or link.consumer_is_conv:
        return keep.nonzero().squeeze(1)
    return (keep.nonzero() * link.group + torch.arange(link.group)).reshape(-1)


def compact_model(model: nn.Module, mask: MaskSet, state: dict[str, torch.Tensor] | None = None) -> CompactNet:
    """The smaller dense network equal to `model` under `mask` (weights from `state`, default the model's)."""
    mods = sequence(model)
    state = {k: v.detach().to("cpu") for k, v in (state or model.state_dict()).items()}
    chain = links(model)
    weighted = [i for i, (_, m) in enumerate(mods) if isinstance(m, (nn.Linear, nn.Conv2d))]
    dtype = state[f"{mods[weighted[0]][0]}.weight"].dtype
    W, B, K = [], [], []
    for i in weighted:
        name, m = mods[i]
        w = state[f"{name}.weight"].to(torch.float64)
        k = mask[f"{name}.weight"] if f"{name}.weight" in mask else torch.ones(w.shape, dtype=torch.bool)
        W.append(w * k)
        K.append(k.clone())
        b = state.get(f"{name}.bias")
        B.append(b.to(torch.float64).clone() if b is not None else torch.zeros(w.shape[0], dtype=torch.float64))
    # Forward: which units have a live input; fold the constant ones into the next layer's bias.
    live = []
    for t in range(len(weighted)):
        if t:
            link, relu = chain[t - 1], _relu_between(mods, weighted[t - 1], weighted[t])
            const = torch.relu(B[t - 1]) if relu else B[t - 1]
            dead_in = ~live[t - 1]
            if link.consumer_is_conv and link.consumer_padding:  # border zeros: fold inexact, keep the channel
                keep_const = dead_in & (const != 0)
                live[t - 1] = live[t - 1] | keep_const
                dead_in = dead_in & ~keep_const
            cols = unit_columns(W[t], link)  # (out, units, cols per unit)
            B[t] += (cols[:, dead_in].sum(2) * const[dead_in]).sum(1)
            cols[:, dead_in] = 0
            unit_columns(K[t], link)[:, dead_in] = False
        is_out = t == len(weighted) - 1
        live.append(torch.ones(W[t].shape[0], dtype=torch.bool) if is_out else K[t].reshape(K[t].shape[0], -1).any(1))
    # Backward: a live unit is kept only if a kept weight carries it to a kept unit.
    keep = [None] * len(weighted)
    keep[-1] = live[-1]
    for t in range(len(weighted) - 2, -1, -1):
        reads = unit_columns(K[t + 1], chain[t])[keep[t + 1]].any(2).any(0)
        keep[t] = live[t] & reads
        if not keep[t].any():
            keep[t][0] = True  # a zero-width layer is not a module: one unit with zero weights is exact
            unit_columns(W[t + 1], chain[t])[:, 0] = 0
    first_in = None
    if isinstance(mods[weighted[0]][1], nn.Linear):  # drop pixels no kept weight reads ...
        first_in = K[0][keep[0]].any(0)
        if not first_in.any():
            first_in[0] = True
        if 2 * int(first_in.sum()) > first_in.numel():
            first_in = None  # ... when that removes most of them: otherwise the gather costs more than it saves
    layers, tensors, t = [], {}, 0
    for i, (name, m) in enumerate(mods):
        if i in weighted:
            rows = keep[t].nonzero().squeeze(1)
            cols = first_in.nonzero().squeeze(1) if t == 0 and first_in is not None else \
                (torch.arange(W[t].shape[1]) if t == 0 else _cols(chain[t - 1], keep[t - 1], W[t].shape[1]))
            if t == 0 and first_in is not None:
                layers.append({"type": "select", "size": int(cols.numel())})
                tensors[f"layers.{len(layers) - 1}.index"] = cols.clone()
            w = W[t][rows][:, cols]
            spec = {"type": "linear", "in": int(w.shape[1]), "out": int(w.shape[0])} if isinstance(m, nn.Linear) else \
                {"type": "conv", "in": int(w.shape[1]), "out": int(w.shape[0]), "kernel": list(m.kernel_size),
                 "stride": list(m.stride), "padding": list(m.padding)}
            layers.append(spec)
            tensors[f"layers.{len(layers) - 1}.weight"] = w.to(dtype).contiguous()
            tensors[f"layers.{len(layers) - 1}.bias"] = B[t][rows].to(dtype).contiguous()
            t += 1
        elif isinstance(m, nn.MaxPool2d):
            layers.append({"type": "maxpool", "kernel": m.kernel_size, "stride": m.stride, "padding": m.padding})
        else:
            layers.append({"type": "relu" if isinstance(m, nn.ReLU) else "flatten"})
    net = CompactNet({"format": FORMAT, "layers": layers}).to(dtype)  # the dtype first: loading casts to it
    net.load_state_dict(tensors)
    return net.eval()


def _relu_between(mods, a: int, b: int) -> bool:
    """A ReLU between two weighted layers (max-pooling a constant map leaves it constant)."""
    return any(isinstance(m, nn.ReLU) for _, m in mods[a + 1 : b])


def widths(net: CompactNet) -> list[int]:
    """Units of every weighted layer after compaction (the last one: the classes)."""
    return [layer["out"] for layer in net.spec["layers"] if layer["type"] in ("linear", "conv")]


def compact_flops(net: nn.Module, input_shape) -> int:
    """Dense forward FLOPs per example (through the module calls, where count_flops' hooks see them)."""
    return count_flops(net.layers if isinstance(net, CompactNet) else net, tuple(input_shape))["dense"]


@torch.inference_mode()
def measure_latency(net: nn.Module, input_shape, batch: int = 1, rounds: int = 5, target_s: float = 0.02) -> float:
    """Seconds per forward pass: the best of `rounds` rounds, each ~target_s long (best = least disturbed)."""
    x = torch.zeros(batch, *input_shape, dtype=next(net.parameters()).dtype)
    net(x)
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < target_s / 4:
        net(x)
        calls += 1
    calls = max(1, 4 * calls)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            net(x)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def save_compact(net: CompactNet, path: str | Path, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "spec": json.dumps(net.spec), "info": json.dumps(extra or {})}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=meta)


def load_compact(path: str | Path) -> CompactNet:
    """The network `evo-pai export --format compact` wrote: `evo_pai.load_compact("export/compact.safetensors")`."""
    try:
        meta, tensors = read_tagged(path, FORMAT, f"'{path}' is not a compact network written by `evo-pai export --format compact`")
        dtype = next(v.dtype for v in tensors.values() if v.is_floating_point())
        net = CompactNet(json.loads(meta["spec"])).to(dtype)
        net.load_state_dict(tensors)
    except EvoPaiError:
        raise
    except Exception as exc:
        raise EvoPaiError(f"cannot read compact network '{path}': {exc}") from exc
    return net.eval()

"""Channel groups of any network: the sets of channels that must be removed together.

Built with torch-pruning's `DependencyGraph` (DepGraph, CVPR 2023: residual adds, concatenations,
flatten, BatchNorm, depthwise convs). A group is rooted at one Conv/Linear's output channels; each of
its channels maps to slices of every layer it touches (the producer's rows, the consumers' columns,
the BatchNorm between). evo-pai keeps a group's choice as a *mask*: the rows and columns of the
channels it drops are zero in every masked weight of the group, which computes what the physically
pruned network computes (a dropped channel's BatchNorm output or bias reaches only zeroed columns).
That equality is not assumed: `models/group_check.py` proves it per model before a run (a forward
pass of the physically pruned network against the masked one), because torch-pruning can return a
wrong network (it treats option-A's zero-pad shortcut as elementwise and misaligns the channels).

A group is *fixed* (listed, never pruned) when masking cannot equal removal — it holds a
LayerNorm/GroupNorm (normalizes across the channels) or MultiheadAttention (a head's 1/sqrt(d)
scaling), or a weight evo-pai does not mask (the output layer's rows, `masks.exclude`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from evo_pai.core.errors import EvoPaiError

NORMS_ACROSS_CHANNELS = (nn.LayerNorm, nn.GroupNorm)


@dataclass
class Member:
    """One masked weight a group cuts: along `dim` (0 rows/out, 1 columns/in), `index[j]` belongs to
    root channel `root[j]`."""
    param: str
    dim: int
    index: torch.Tensor
    root: torch.Tensor


@dataclass
class ChannelGroup:
    id: int
    root: str                 # module whose output channels define the group
    channels: int
    layers: list[str]         # every module the group touches (names), BatchNorm included
    members: list[Member] = field(default_factory=list)
    norms: list[Member] = field(default_factory=list)  # BatchNorm scales the group cuts (`param` = "<bn>.weight")
    fixed: str | None = None  # why it is never pruned, or None
    macs: int = 0             # multiply-adds of the masked weights this group's channels scale (per example)

    def brief(self) -> dict:
        return {"group": self.id, "root": self.root, "channels": self.channels, "layers": self.layers,
                "macs": self.macs, "fixed": self.fixed}


class ChannelStructure:
    """The groups of one model, and how a choice of channels becomes a mask and a MAC count."""

    def __init__(self, groups: list[ChannelGroup], shapes: Mapping[str, tuple], macs_per_weight: Mapping[str, int],
                 dense_macs: int):
        self.groups = groups
        self.shapes = dict(shapes)
        self.macs_per_weight = dict(macs_per_weight)  # per example, of one kept weight
        self.dense_macs = dense_macs                  # every masked weight kept (the dense network's count)
        self.free = [g for g in groups if g.fixed is None]
        # (param, dim) -> [(group id, share of that dim the group's channels hold)]: a concatenation's
        # consumer has several groups along its input dim
        self._dims: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for g in self.free:
            for m in g.members:
                size = self.shapes[m.param][m.dim]
                self._dims.setdefault((m.param, m.dim), []).append((g.id, len(m.index) / size))

    # -- channels <-> masks ---------------------------------------------------------------
    def mask_of(self, keep: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Masks (param -> bool) keeping, in every free group, the channels `keep[id]` marks True."""
        out = {k: torch.ones(s, dtype=torch.bool) for k, s in self.shapes.items()}
        for g in self.free:
            drop = ~keep[g.id].bool()
            for m in g.members:
                cut = m.index[drop[m.root]]
                out[m.param].index_fill_(m.dim, cut, False)
        return out

    def kept(self, mask: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Which channels of each free group a mask keeps (a channel is kept while its rows at the
        root live)."""
        out = {}
        for g in self.free:
            m = next(x for x in g.members if x.dim == 0) if any(x.dim == 0 for x in g.members) else g.members[0]
            w = mask[m.param]
            alive = w.transpose(0, m.dim).reshape(w.shape[m.dim], -1).any(1)[m.index]
            kept = torch.zeros(g.channels, dtype=torch.bool)
            kept[m.root[alive]] = True
            out[g.id] = kept
        return out

    def widths(self, mask: Mapping[str, torch.Tensor]) -> list[int]:
        kept = self.kept(mask)
        return [int(kept[g.id].sum()) for g in self.free]

    # -- MACs ------------------------------------------------------------------------------
    def macs_of_widths(self, widths: Sequence[int]) -> float:
        """MACs of the masked weights with the free groups at `widths` (in self.free's order): every
        layer's dense MACs times its kept fractions of rows and of columns."""
        frac = {g.id: w / g.channels for g, w in zip(self.free, widths)}
        total = 0.0
        for name, shape in self.shapes.items():
            f = 1.0
            for dim in (0, 1):
                f *= 1.0 - sum((1.0 - frac[gid]) * share for gid, share in self._dims.get((name, dim), ()))
            n = 1
            for s in shape:
                n *= s
            total += self.macs_per_weight[name] * n * f
        return total

    def macs_of_mask(self, mask: Mapping[str, torch.Tensor]) -> int:
        return int(sum(self.macs_per_weight[k] * int(m.sum()) for k, m in mask.items() if k in self.macs_per_weight))

    def full_widths(self) -> list[int]:
        return [g.channels for g in self.free]

    def table(self) -> list[dict]:
        return [g.brief() for g in self.groups]


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def build_groups(model: nn.Module, example: torch.Tensor, masked: Sequence[str], output_layer: str | None,
                 macs_per_weight: Mapping[str, int]) -> list[ChannelGroup]:
    """The channel groups of `model` from torch-pruning's dependency graph (no check: group_check.py)."""
    import torch_pruning as tp  # the field's dependency-graph engine

    names = _module_names(model)
    modules = dict(model.named_modules())
    ignored = [modules[output_layer.rsplit(".", 1)[0] if "." in output_layer else ""]] if output_layer else []
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        raw = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear]))
    except Exception as exc:  # torch-pruning traces the forward: a model it cannot trace is named here
        raise EvoPaiError(f"model: torch-pruning could not trace its channel dependencies ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); structured search needs a traceable forward") from None
    masked = set(masked)
    groups = []
    for gi, group in enumerate(raw):
        root_module = group[0].dep.target.module
        root = names.get(root_module, "?")
        channels = graph.get_out_channels(root_module)
        g = ChannelGroup(id=len(groups), root=root, channels=int(channels), layers=[])
        for item in group:
            module = item.dep.target.module
            mname = names.get(module)
            if mname is None:  # torch-pruning's own nodes (adds, reshapes): no parameters
                continue
            if mname not in g.layers:
                g.layers.append(mname)
            if isinstance(module, NORMS_ACROSS_CHANNELS) and g.fixed is None:
                g.fixed = f"{mname} ({type(module).__name__}) normalizes across these channels: masking is not removal"
            if isinstance(module, nn.MultiheadAttention) and g.fixed is None:
                g.fixed = f"{mname} (MultiheadAttention): removing embedding dims changes every head's scaling"
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and item.root_idxs is not None:
                g.norms.append(Member(f"{mname}.weight", 0, torch.tensor([int(i) for i in item.idxs], dtype=torch.long),
                                      torch.tensor([int(r) for r in item.root_idxs], dtype=torch.long)))
            if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                continue
            out = graph.is_out_channel_pruning_fn(item.dep.handler)
            if not out and getattr(module, "groups", 1) > 1:
                continue  # a depthwise/grouped conv's inputs go with its outputs (same group)
            param = f"{mname}.weight" if mname else "weight"
            if param not in masked:
                if g.fixed is None:
                    g.fixed = f"{param} is not masked (not prunable, or masks.exclude / include_output)"
                continue
            roots = list(item.root_idxs) if item.root_idxs is not None else []
            if len(roots) != len(item.idxs) or any(r is None for r in roots):
                g.fixed = g.fixed or f"{mname}: torch-pruning gives no channel mapping (head repeat)"
                continue
            idx = torch.tensor([int(i) for i in item.idxs], dtype=torch.long)
            g.members.append(Member(param, 0 if out else 1, idx, torch.tensor(roots, dtype=torch.long)))
        if g.fixed is None and not g.members:
            g.fixed = "no masked weight in the group"
        if g.fixed is None:
            g.macs = int(sum(macs_per_weight[m.param] * _numel(model, m.param) for m in g.members))
        groups.append(g)
    return groups


def _numel(model: nn.Module, param: str) -> int:
    return model.get_parameter(param).numel()


def macs_per_weight(model: nn.Module, input_shape: Sequence[int], names: Sequence[str]) -> dict[str, int]:
    """Multiply-adds one kept weight of each Conv/Linear costs per example (its output positions)."""
    from evo_pai.models.networks import probe_forward

    modules = dict(model.named_modules())
    out: dict[str, int] = {}

    def hook_for(param: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            out[param] = output[0].numel() // module.weight.shape[0]
        return hook

    hooks = {}
    for p in names:
        mod = modules.get(p.rsplit(".", 1)[0] if "." in p else "")
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and p.endswith("weight"):
            hooks[mod] = hook_for(p)
    probe_forward(model, input_shape, hooks)
    return {p: out.get(p, 0) for p in names}

"""Physically pruned networks, and the check that a model's channel groups are right.

torch-pruning removes channels for real; evo-pai trains masks. The two agree only where the
dependency graph is right, so every model's groups are proven before a run: the network with a
random half of every free group's channels removed (torch-pruning) must have the layer sizes the
groups promise, run on the input shape, and give the masked network's outputs (float64, BatchNorm
statistics and affine parameters randomized so a misaligned channel shows). A group that fails is
named in one line; nothing falls back silently.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.models.channel_groups import ChannelStructure, build_groups, macs_per_weight
from evo_pai.models.shapes import eval_mode

CHECK_TOLERANCE = 1e-6  # float64: masked and pruned outputs differ only by summation order


def physically_pruned(model: nn.Module, input_shape: Sequence[int], structure: ChannelStructure,
                      keep: Mapping[int, torch.Tensor]) -> nn.Module:
    """A copy of `model` with every free group's dropped channels removed by torch-pruning."""
    import torch_pruning as tp

    net = copy.deepcopy(model)
    p = next(net.parameters())
    example = torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device)
    with eval_mode(net):
        graph = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    modules = dict(net.named_modules())
    for g in structure.free:
        drop = (~keep[g.id].bool()).nonzero().flatten().tolist()
        if drop:
            root = modules[g.root]
            graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, idxs=drop).prune()
    return net


def _randomize_norms(net: nn.Module, gen: torch.Generator) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype))
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))


def random_keep(structure: ChannelStructure, gen: torch.Generator, only: int | None = None) -> dict[int, torch.Tensor]:
    """About half of each free group's channels (at least one kept and, where possible, one dropped);
    with `only`, that group alone loses channels."""
    keep = {}
    for g in structure.free:
        k = torch.ones(g.channels, dtype=torch.bool)
        if (only is None or only == g.id) and g.channels > 1:
            k[torch.randperm(g.channels, generator=gen)[: g.channels // 2]] = False
        keep[g.id] = k
    return keep


def _problem(model: nn.Module, input_shape: Sequence[int], structure: ChannelStructure,
             keep: Mapping[int, torch.Tensor], x: torch.Tensor) -> str | None:
    """Why the pruned network is not the masked one, or None."""
    masks = structure.mask_of(keep)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in masks.items():
            masked.get_parameter(name).mul_(m.to(torch.float64))
    try:
        pruned = physically_pruned(model, input_shape, structure, keep)
    except Exception as exc:  # torch-pruning's own failure is this group's failure
        return f"torch-pruning failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    params = dict(pruned.named_parameters())
    removed: dict[tuple[str, int], int] = {}  # a concatenation's consumer loses channels of several groups
    for g in structure.free:
        for mem in g.members:
            key = (mem.param, mem.dim)
            removed[key] = removed.get(key, 0) + int((~keep[g.id].bool())[mem.root].sum())
    for (param, dim), n in removed.items():
        want, got = structure.shapes[param][dim] - n, params[param].shape[dim]
        if got != want:
            return f"{param} has {got} channels along dim {dim} after pruning, the groups say {want}"
    with torch.no_grad(), eval_mode(masked), eval_mode(pruned):
        want = masked(x)
        try:
            got = pruned(x)
        except Exception as exc:
            return f"the pruned network's forward fails ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if tuple(got.shape) != tuple(want.shape):
        return f"the pruned network outputs shape {tuple(got.shape)}, the model {tuple(want.shape)}"
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    if not err <= CHECK_TOLERANCE:
        return f"the pruned network's outputs differ from the masked network's by {err:.2e} (relative)"
    return None


def check_structure(model: nn.Module, input_shape: Sequence[int], structure: ChannelStructure, seed: int = 0) -> None:
    """Raise one EvoPaiError naming the first group whose physical pruning is not its masking."""
    gen = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model).to(torch.float64)
    _randomize_norms(net, gen)
    x = torch.randn(4, *input_shape, generator=gen, dtype=torch.float64)
    if _problem(net, input_shape, structure, random_keep(structure, gen), x) is None:
        return
    for g in structure.free:  # find the culprit: one group at a time
        why = _problem(net, input_shape, structure, random_keep(structure, gen, only=g.id), x)
        if why is not None:
            raise EvoPaiError(f"model: channel group {g.id} (rooted at layer '{g.root}', through "
                              f"{', '.join(g.layers[:4])}{' ...' if len(g.layers) > 4 else ''}) cannot be pruned "
                              f"correctly: {why}; keep it whole with masks.exclude: ['{g.root}.weight'] "
                              "(or change the model)")
    raise EvoPaiError("model: its channel groups cannot be pruned together correctly (each alone can); "
                      "structured search cannot use this model")


def channel_structure(model: nn.Module, input_shape: Sequence[int], masked: Sequence[str],
                      output_layer: str | None, check: bool = True) -> ChannelStructure:
    """The model's channel groups, proven by `check_structure` (unless `check` is False)."""
    shapes = {k: tuple(model.get_parameter(k).shape) for k in masked}
    per_weight = macs_per_weight(model, input_shape, list(masked))
    p = next(model.parameters())
    example = torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device)
    with eval_mode(model):
        groups = build_groups(model, example, masked, output_layer, per_weight)
    dense = int(sum(per_weight[k] * model.get_parameter(k).numel() for k in masked))
    structure = ChannelStructure(groups, shapes, per_weight, dense)
    if not structure.free:
        raise EvoPaiError("model: no channel group can be pruned (every group is fixed: "
                          f"{'; '.join(sorted({g.fixed for g in groups if g.fixed}))[:300]}); "
                          "structured search needs at least one")
    if check:
        check_structure(model, input_shape, structure)
    return structure

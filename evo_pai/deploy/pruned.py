"""The physically pruned network of a channel-granularity mask: channels removed, not zeroed.

With `masks.granularity: channel` a mask is a choice of channels per group (models/channel_groups.py).
`pruned_from_mask` recovers that choice (`ChannelStructure.kept`), refuses a mask that is not one, and
removes the dropped channels with torch-pruning (`models/group_check.physically_pruned`): a smaller
dense network of the model's own class, residual adds and BatchNorm included.

`save_pruned` writes one safetensors file: the pruned state_dict, and in its metadata the model config
(name, params), input shape, classes, plugins and — per free group, in pruning order — the root layer,
its channel count and the kept channel indices. `load_pruned(path)` rebuilds the model from the
registry (or from `model=` for a module handed to `evo_pai.search()`), replays the pruning on it from
those indices and loads the weights; no search, no mask, no group analysis at load time. A sha256 of
the spec and every tensor is stored too: a file edited after export (kept indices, weights) is refused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.core.tensor_files import read_tagged
from evo_pai.models.channel_groups import ChannelGroup, ChannelStructure

FORMAT = "evo_pai.pruned/1"


def kept_channels(model: nn.Module, mask: MaskSet, input_shape: Sequence[int]) -> tuple[ChannelStructure, dict[int, torch.Tensor]]:
    """The model's channel groups and the channels `mask` keeps in each; a mask that is not a choice of
    whole channels is refused (a weight-granularity mask, or one edited by hand)."""
    from evo_pai.models.group_check import channel_structure

    structure = channel_structure(model, input_shape, list(mask), mask.output_layer, check=False)
    keep = structure.kept(mask)
    rebuilt = structure.mask_of(keep)
    for k, m in mask.items():
        if not torch.equal(m.bool(), rebuilt[k]):
            raise EvoPaiError(f"--format pruned: the mask is not a choice of whole channels (layer '{k}'); only runs "
                              "with masks.granularity: channel can be pruned physically (use --format compact or csr)")
    return structure, keep


def group_spec(structure: ChannelStructure, keep: Mapping[int, torch.Tensor]) -> list[dict]:
    """What replays the pruning: per free group (pruning order) its root, channels and kept indices."""
    return [{"group": g.id, "root": g.root, "channels": g.channels,
             "kept": [int(i) for i in keep[g.id].nonzero().flatten()]} for g in structure.free]


def replay(model: nn.Module, input_shape: Sequence[int], groups: list[dict]) -> nn.Module:
    """A copy of `model` with each recorded group pruned to its kept channels (torch-pruning,
    through `physically_pruned`: the same calls in the same order as at export)."""
    from evo_pai.models.group_check import physically_pruned

    free, keep = [], {}
    for spec in groups:
        g = ChannelGroup(id=int(spec["group"]), root=str(spec["root"]), channels=int(spec["channels"]), layers=[])
        k = torch.zeros(g.channels, dtype=torch.bool)
        idx = torch.tensor(spec["kept"], dtype=torch.long)
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= g.channels:
            raise EvoPaiError(f"group {g.id} ('{g.root}'): kept channels out of range 0..{g.channels - 1}")
        k[idx] = True
        free.append(g)
        keep[g.id] = k
    modules = dict(model.named_modules())
    for g in free:
        if g.root not in modules:
            raise EvoPaiError(f"group {g.id}: the model has no layer '{g.root}' (another architecture?)")
    with torch.inference_mode(False), torch.enable_grad():  # torch-pruning traces with autograd: load under no_grad too
        return physically_pruned(model, input_shape, ChannelStructure(free, {}, {}, 0), keep).eval()


def pruned_from_mask(model: nn.Module, mask: MaskSet, input_shape: Sequence[int]) -> tuple[nn.Module, list[dict], dict]:
    """(pruned network, group spec, MAC facts) of `model` (its weights, e.g. trained) under a channel mask."""
    structure, keep = kept_channels(model, mask, input_shape)
    spec = group_spec(structure, keep)
    net = replay(model, input_shape, spec)
    widths = [len(s["kept"]) for s in spec]
    facts = {"group_widths": widths, "full_widths": structure.full_widths(),
             "macs_kept": structure.macs_of_widths(widths) / structure.dense_macs}
    return net, spec, facts


def _digest(meta: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(k for k in meta if k != "sha256"):
        h.update(f"{key}={meta[key]}\n".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_pruned(net: nn.Module, path: str | Path, model: dict, input_shape: Sequence[int], num_classes: int,
                groups: list[dict], plugins: Sequence[str] = (), extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    meta = {"format": FORMAT, "model": json.dumps(model), "input_shape": json.dumps(list(input_shape)),
            "num_classes": str(int(num_classes)), "groups": json.dumps(groups), "plugins": json.dumps(list(plugins)),
            "torch_pruning": _tp_version(), "info": json.dumps(extra or {})}
    meta["sha256"] = _digest(meta, tensors)
    save_file(tensors, str(path), metadata=meta)


def _tp_version() -> str:
    import torch_pruning as tp

    return str(getattr(tp, "__version__", "?"))


def load_pruned(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The network `evo-pai export --format pruned` wrote: `evo_pai.load_pruned("export/pruned.safetensors")`;
    the run's plugins are imported; a run of `evo_pai.search()` on a module needs that module: `model=`."""
    from evo_pai.models.user_model import rebuild

    try:
        meta, tensors = read_tagged(path, FORMAT, f"'{path}' is not a pruned network written by `evo-pai export --format pruned`")
        if meta.get("sha256") != _digest(meta, tensors):
            raise EvoPaiError(f"'{path}': its contents do not match the checksum written at export (edited or "
                              "corrupted); export it again")
        shape, groups = json.loads(meta["input_shape"]), json.loads(meta["groups"])
        net = rebuild(json.loads(meta["model"]), shape, int(meta["num_classes"]), json.loads(meta.get("plugins", "[]")),
                      model, "evo_pai.load_pruned")
        dtype = next(v.dtype for v in tensors.values() if v.is_floating_point())
        net = replay(net.to(dtype), shape, groups)
        net.load_state_dict(tensors)
    except EvoPaiError as exc:
        msg = str(exc)
        raise EvoPaiError(msg if msg.startswith(f"'{path}'") else f"cannot load pruned network '{path}': {msg}") from None
    except Exception as exc:
        raise EvoPaiError(f"cannot read pruned network '{path}': {' '.join(str(exc).split())[:300]}") from exc
    return net.eval()

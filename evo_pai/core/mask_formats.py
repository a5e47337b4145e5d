"""A found mask on someone else's model: match layers by parameter name, apply, export.

Works on any mapping of parameter name -> bool tensor (a `MaskSet` is one), so this module needs
nothing from the rest of evo-pai. A user's own network rarely uses our parameter names: an
`nn.Sequential` copy of our LeNet-300-100 calls `layers.0.weight` just `0.weight`, a wrapper adds a
prefix. Names therefore match exactly, else by dotted suffix (either way round) with equal shapes,
else through an explicit `names={mask layer: model parameter}`; anything left is one error line that
lists the unmatched layers and the model's unused weights with their shapes.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.tensor_files import write_atomic


def _suffix(a: str, b: str) -> bool:
    """True when `a` ends with `b` at a dot: '0.weight' is a suffix of 'layers.0.weight'."""
    return a == b or a.endswith("." + b)


def _fmt(name: str, shape) -> str:
    return f"{name} {tuple(shape)}"


def match_parameters(masks: Mapping[str, torch.Tensor], model: nn.Module,
                     names: Mapping[str, str] | None = None) -> dict[str, str]:
    """mask layer -> the model's parameter it belongs to; EvoPaiError naming everything unmatched."""
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    explicit = dict(names or {})
    matched: dict[str, str] = {}
    for layer, m in masks.items():
        shape = tuple(m.shape)
        if layer in explicit:
            candidates = [explicit[layer]]
        elif layer in params:
            candidates = [layer]
        else:
            candidates = [p for p in params if (_suffix(p, layer) or _suffix(layer, p)) and params[p] == shape]
        candidates = [c for c in candidates if c not in matched.values()]
        if len(candidates) == 1 and params.get(candidates[0]) == shape:
            matched[layer] = candidates[0]
    missing = [layer for layer in masks if layer not in matched]
    if missing:
        unused = [p for p in params if p not in matched.values() and len(params[p]) >= 2]
        got = "; ".join(_fmt(k, masks[k].shape) + (f" (model's is {params[k]})" if k in params else "") for k in missing)
        left = "; ".join(_fmt(p, params[p]) for p in unused) or "none"
        hint = _suggest(masks, missing, unused, params)
        raise EvoPaiError(f"mask does not fit this model: unmatched mask layers: {got} | model weights without a "
                          f"mask: {left} | {hint}")
    return matched


def _suggest(masks, missing: list[str], unused: list[str], params: dict) -> str:
    """The names= mapping that pairs the leftovers by shape in order, when that is unambiguous."""
    pairs, pool = {}, list(unused)
    for layer in missing:
        same = [p for p in pool if params[p] == tuple(masks[layer].shape)]
        if not same:
            return "the model has no weight of a missing layer's shape: use the model the run searched"
        pairs[layer] = same[0]
        pool.remove(same[0])
    return f"pass names={pairs!r} if those are the same layers"


def apply_mask(masks: Mapping[str, torch.Tensor], model: nn.Module, names: Mapping[str, str] | None = None) -> nn.Module:
    """Zero the pruned weights and keep them zero while training (a gradient hook masks each update)."""
    params = dict(model.named_parameters())
    for layer, pname in match_parameters(masks, model, names).items():
        p = params[pname]
        keep = masks[layer].to(device=p.device, dtype=torch.bool)
        with torch.no_grad():
            p.mul_(keep)
        p.register_hook(lambda g, keep=keep: g * keep)
    return model


def prune_with_torch(masks: Mapping[str, torch.Tensor], model: nn.Module,
                     names: Mapping[str, str] | None = None) -> nn.Module:
    """Attach the mask through `torch.nn.utils.prune.custom_from_mask` (`weight_orig` + `weight_mask`);
    `torch.nn.utils.prune.remove(module, 'weight')` makes it permanent."""
    from torch.nn.utils import prune

    modules = dict(model.named_modules())
    for layer, pname in match_parameters(masks, model, names).items():
        module_name, _, attr = pname.rpartition(".")
        module = modules[module_name]
        prune.custom_from_mask(module, attr, masks[layer].to(getattr(module, attr).device))
    return model


def save_npz(masks: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """One boolean array per layer, keyed by parameter name: `np.load(path)[name]` anywhere, no evo-pai needed."""
    path = Path(path)
    arrays = {k: v.detach().to("cpu", torch.bool).numpy() for k, v in masks.items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_atomic(path, buf.getvalue())
    return path


def load_npz(path: str | Path) -> dict[str, torch.Tensor]:
    """Read save_npz's file (no pickles: allow_pickle=False) as name -> bool tensor."""
    try:
        with np.load(Path(path), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise EvoPaiError(f"cannot read mask file '{path}': {type(exc).__name__}: {exc}") from None
    out = {}
    for k, a in arrays.items():
        if a.dtype != np.bool_ and not (np.issubdtype(a.dtype, np.integer) and set(np.unique(a)) <= {0, 1}):
            raise EvoPaiError(f"mask file '{path}': array '{k}' is {a.dtype}, not a 0/1 mask")
        out[k] = torch.from_numpy(a.astype(bool))
    return out

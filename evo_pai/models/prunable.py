"""What is prunable: decided here, for every parameter, with the reason, so nothing is skipped silently.

Defaults: the weights of nn.Linear, nn.Conv1d/2d/3d and nn.MultiheadAttention (its packed
`in_proj_weight`, or `q/k/v_proj_weight` when the key/value sizes differ; `out_proj` is an
nn.Linear) are prunable; normalization layers (BatchNorm, LayerNorm, GroupNorm, ...), biases (unless
`masks.include_bias`, and then only the biases of those layers) and embeddings are not.
`masks.include` / `masks.exclude` (glob patterns on parameter names, fnmatch) override the
defaults; a name matching both is excluded. The run's summary and `evo-pai list-layers` print the
table `parameter_roles` returns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Sequence

from torch import nn

from evo_pai.core.errors import EvoPaiError

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # `.weight` is what they multiply the input with
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class ParamRole:
    name: str
    shape: tuple[int, ...]
    prunable: bool
    why: str
    rule: str  # weight | attention | normalization | embedding | bias | output | include | exclude | other


def output_layer_name(model: nn.Module) -> str:
    """Weight name of the output layer: the last nn.Linear in module order."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise EvoPaiError(f"model {type(model).__name__} has no nn.Linear output layer: add one as the classifier")
    return f"{linears[-1]}.weight" if linears[-1] else "weight"


def _default(module: nn.Module, attr: str, include_bias: bool) -> tuple[bool, str, str]:
    """(prunable, why, rule) for parameter `attr` of `module` by the built-in rule."""
    kind = type(module).__name__
    if isinstance(module, NORMS):
        return False, f"{kind} {attr} (normalization: never pruned)", "normalization"
    if isinstance(module, EMBEDDINGS):
        return False, f"{kind} {attr} (embedding: never pruned by default)", "embedding"
    if isinstance(module, WEIGHTED) and attr == "weight":
        return True, f"{kind} weight", "weight"
    if isinstance(module, nn.MultiheadAttention) and attr in ATTENTION_WEIGHTS:
        return True, f"{kind} {attr}", "attention"
    if attr in ("bias", "in_proj_bias") and isinstance(module, (*WEIGHTED, nn.MultiheadAttention)):
        if include_bias:
            return True, f"{kind} {attr} (masks.include_bias)", "bias"
        return False, f"{kind} {attr} (bias: masks.include_bias is false)", "bias"
    return False, f"{kind} {attr} (not a Linear, Conv or attention weight)", "other"


def parameter_roles(model: nn.Module, include_output: bool = True, include_bias: bool = False,
                    include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[ParamRole]:
    """Every parameter of `model` in `named_parameters` order, prunable or not, and why."""
    modules = dict(model.named_modules())
    out_name = None if include_output else output_layer_name(model)
    roles = []
    for name, p in model.named_parameters():
        mod_name, _, attr = name.rpartition(".")
        prunable, why, rule = _default(modules[mod_name], attr, include_bias)
        if name == out_name:
            prunable, why, rule = False, "output layer (masks.include_output is false)", "output"
        hit = next((pat for pat in include if fnmatchcase(name, pat)), None)
        if hit is not None:
            prunable, why, rule = True, f"masks.include '{hit}' (by default: {why})", "include"
        hit = next((pat for pat in exclude if fnmatchcase(name, pat)), None)
        if hit is not None:
            prunable, why, rule = False, f"masks.exclude '{hit}'", "exclude"
        roles.append(ParamRole(name, tuple(p.shape), prunable, why, rule))
    return roles


def prunable_names(model: nn.Module, include_output: bool = True, include_bias: bool = False,
                   include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """Names of the parameters a mask covers, in module order (`parameter_roles` says why)."""
    return [r.name for r in parameter_roles(model, include_output, include_bias, include, exclude) if r.prunable]


def masked_roles(model: nn.Module, masks) -> list[ParamRole]:
    """`parameter_roles` under a config's `masks` section (a `MaskConfig`); patterns that match no
    parameter are refused: a typo would otherwise leave a layer dense without a word."""
    names = [n for n, _ in model.named_parameters()]
    for field in ("include", "exclude"):
        for pat in getattr(masks, field):
            if not any(fnmatchcase(n, pat) for n in names):
                raise EvoPaiError(f"masks.{field}: '{pat}' matches no parameter of the model; "
                                  "`evo-pai list-layers CONFIG` lists their names")
    return parameter_roles(model, masks.include_output, masks.include_bias, masks.include, masks.exclude)


def masked_names(model: nn.Module, masks) -> list[str]:
    """Names of the parameters a mask covers under a config's `masks` section."""
    return [r.name for r in masked_roles(model, masks) if r.prunable]


def roles_table(roles: Sequence[ParamRole]) -> list[dict]:
    """The summary's layer list: one row per parameter."""
    return [{"name": r.name, "shape": list(r.shape), "prunable": r.prunable, "why": r.why, "rule": r.rule}
            for r in roles]


def roles_brief(rows: Sequence[dict]) -> str:
    """One line from `roles_table` rows: how many tensors and values a mask covers, what is left out and why."""
    size = {id(r): math.prod(r["shape"]) for r in rows}
    kept = [r for r in rows if r["prunable"]]
    left: dict[str, int] = {}
    for r in rows:
        if not r["prunable"]:
            left[r["rule"]] = left.get(r["rule"], 0) + 1
    line = (f"{len(kept)} of {len(rows)} tensors, {sum(size[id(r)] for r in kept):,} of "
            f"{sum(size.values()):,} values")
    if left:
        line += "; not pruned: " + ", ".join(f"{n} {rule}" for rule, n in left.items())
    return line

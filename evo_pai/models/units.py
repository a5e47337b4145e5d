"""Hidden units of a sequential network, and which weights feed and read each one.

A *unit* is a hidden neuron of an MLP or an output channel of a conv layer. Between two weighted
layers A -> B (with ReLU / max-pool / flatten in between), unit u is row u of A's weight and
columns `u*group : (u+1)*group` of B's weight viewed as (out, in·kh·kw / kernel) — group = 1 for
Linear->Linear and Conv->Conv, H·W for a conv map flattened into a Linear. Only sequential models
(mlp, lenet5, conv4, or a plain nn.Sequential of Linear / Conv2d / ReLU / MaxPool2d / Flatten) have
such a chain; residual networks (resnet20) tie channels across blocks and are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.models.networks import MLP, ConvNet

SUPPORTED = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten)


@dataclass(frozen=True)
class Link:
    """The units between two weighted layers: rows of `producer`, column groups of `consumer`."""

    producer: str  # weight name, e.g. "layers.0.weight"
    consumer: str
    units: int
    group: int  # consumer input columns per unit (after flattening)
    consumer_is_conv: bool
    consumer_padding: int  # a padded conv sees zeros at the border: a constant map is not constant there


def sequence(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module name, module) of a sequential model in forward order, with the flatten made explicit."""
    if isinstance(model, MLP):
        mods = [("", nn.Flatten())] + [(f"layers.{i}", m) for i, m in enumerate(model.layers)]
    elif isinstance(model, ConvNet):
        mods = [(f"features.{i}", m) for i, m in enumerate(model.features)] + [("", nn.Flatten())] + \
               [(f"classifier.{i}", m) for i, m in enumerate(model.classifier)]
    elif isinstance(model, nn.Sequential):
        mods = [(str(i), m) for i, m in enumerate(model)]
    else:
        raise EvoPaiError(f"model {type(model).__name__}: only sequential models (mlp, lenet5, conv4, nn.Sequential) "
                          "have units to remove; residual connections tie channels across blocks")
    for name, m in mods:
        if not isinstance(m, SUPPORTED):
            raise EvoPaiError(f"model {type(model).__name__}: layer '{name}' is a {type(m).__name__}; units can be "
                              "removed only through Linear, Conv2d, ReLU, MaxPool2d and Flatten")
    return mods


def links(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[Link]:
    """Every hidden unit group of a sequential model, in forward order."""
    mods = sequence(model)
    weighted = [(i, n, m) for i, (n, m) in enumerate(mods) if isinstance(m, (nn.Linear, nn.Conv2d))]
    out = []
    for (i, a_name, a), (j, b_name, b) in zip(weighted[:-1], weighted[1:]):
        units = a.out_features if isinstance(a, nn.Linear) else a.out_channels
        fan = b.in_features if isinstance(b, nn.Linear) else b.in_channels
        if fan % units:
            raise EvoPaiError(f"model: layer '{b_name}' reads {fan} inputs, not a multiple of the {units} units of '{a_name}'")
        pad = b.padding if isinstance(b, nn.Conv2d) else 0
        pad = max(pad) if isinstance(pad, tuple) else (0 if isinstance(pad, str) and pad == "valid" else pad)
        if isinstance(pad, str):
            pad = 1  # "same": treat as padded
        out.append(Link(f"{a_name}.weight", f"{b_name}.weight", units, fan // units, isinstance(b, nn.Conv2d), int(pad)))
    return out


def unit_rows(mask: torch.Tensor) -> torch.Tensor:
    """(out, in·kh·kw) view of a weight-shaped mask."""
    return mask.reshape(mask.shape[0], -1)


def unit_columns(mask: torch.Tensor, link: Link) -> torch.Tensor:
    """(out, units, cols per unit) view of the consumer's mask: the weights that read each unit."""
    if link.consumer_is_conv:  # (out, in, kh, kw): unit u = input channel u
        return mask.reshape(mask.shape[0], mask.shape[1], -1)
    return mask.reshape(mask.shape[0], link.units, link.group)


def alive_units(mask_of: dict[str, torch.Tensor], link: Link) -> torch.Tensor:
    """Units with at least one kept input weight and one kept output weight (layers without a mask: dense)."""
    a, b = mask_of.get(link.producer), mask_of.get(link.consumer)
    has_in = unit_rows(a).any(1) if a is not None else torch.ones(link.units, dtype=torch.bool)
    has_out = unit_columns(b, link).any(2).any(0) if b is not None else torch.ones(link.units, dtype=torch.bool)
    return has_in & has_out

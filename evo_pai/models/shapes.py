"""Input-shape checks shared by the model builders."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from evo_pai.core.errors import EvoPaiError


def image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise EvoPaiError(
            f"model '{model}' needs image input (C, H, W) but the data has shape {input_shape}: "
            f"use model 'mlp' or an image dataset"
        )
    return input_shape  # type: ignore[return-value]


def flat_size(features: nn.Module, input_shape: tuple[int, ...], model: str) -> int:
    """Size of the flattened feature map, found by a dummy forward (no RNG involved; eval mode, so
    BatchNorm statistics stay as built)."""
    try:
        with torch.no_grad(), eval_mode(features):
            out = features(torch.zeros(1, *input_shape))
    except RuntimeError:  # a pooling layer with nothing left to pool
        out = torch.zeros(0)
    if out.numel() == 0:
        raise EvoPaiError(f"model '{model}': input shape {input_shape} is too small for its pooling layers")
    return out.numel()


def positive_int(model: str, field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvoPaiError(f"model.params.{field}: model '{model}' needs a positive whole number, got {value!r}")
    return value


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """For probing forwards (sizes, FLOPs): BatchNorm neither updates its running statistics (θ0 and
    a carried state stay untouched) nor refuses a one-example batch."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)

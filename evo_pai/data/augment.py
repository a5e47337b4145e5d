"""Training-batch augmentation as batched tensor operations on the training device.

Random crop (from the image padded by `crop_padding` pixels) and horizontal flip, the CIFAR recipes'
RandomCrop(32, padding=4) + RandomHorizontalFlip, done for a whole batch with two `gather`s. The
random draws come from a CPU generator seeded by (burst seed, lineage step) — never from the device
or the worker — so the same seed gives the same images on every backend, and a continued lineage
(resume, inheritance) draws what the uninterrupted run drew at that step.

Padding is 0 in the standardized space, i.e. the training mean (torchvision pads black before
normalizing; on standardized inputs the mean is the neutral choice).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from evo_pai.core.config import AugmentConfig
from evo_pai.core.errors import EvoPaiError

_MASK64 = (1 << 64) - 1
_AUGMENT_STREAM = 0x5EED_A11C  # keeps these draws apart from the batch order drawn from the same seed


def active(cfg: AugmentConfig) -> bool:
    return cfg.crop_padding > 0 or cfg.flip


def check(cfg: AugmentConfig, input_shape: Sequence[int], dataset: str) -> None:
    """Before a run folder exists: crop and flip need images (C, H, W)."""
    if active(cfg) and len(input_shape) != 3:
        field = "crop_padding" if cfg.crop_padding > 0 else "flip"
        raise EvoPaiError(f"data.augment.{field}: dataset '{dataset}' gives inputs of shape {tuple(input_shape)}, "
                          "not images (C, H, W); set data.augment to {crop_padding: 0, flip: false}")


def step_seed(seed: int, step: int, stream: int = _AUGMENT_STREAM) -> int:
    """A 63-bit seed for (burst seed, step of the lineage): splitmix64, so nearby inputs give unrelated seeds;
    `stream` keeps one kind of draw (augmentation, dropout) apart from the others."""
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def draw(cfg: AugmentConfig, n: int, seed: int, step: int) -> torch.Tensor:
    """(n, 3) int64 on CPU: row offset, column offset (0..2·padding) and flip (0/1) of each example."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    offsets = torch.randint(0, 2 * cfg.crop_padding + 1, (n, 2), generator=gen)
    flips = (torch.rand(n, 1, generator=gen) < 0.5).long() if cfg.flip else torch.zeros(n, 1, dtype=torch.long)
    return torch.cat([offsets, flips], 1)


def apply(x: torch.Tensor, params: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop and flip a batch (N, C, H, W) as `params` (N, 3) say, on x's device; shape kept."""
    n, c, h, w = x.shape
    cols = torch.arange(w, device=x.device)
    cols = params[:, 1:2] + torch.where(params[:, 2:3].bool(), w - 1 - cols, cols)  # (N, W); flip reverses the window
    if padding:
        x = F.pad(x, (padding,) * 4)
        rows = params[:, 0:1] + torch.arange(h, device=x.device)  # (N, H)
        x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))

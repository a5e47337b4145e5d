"""CIFAR ResNets (He et al. 2016) with BatchNorm: `resnet20` and its width parameter.

open_lth's `cifar_resnet_20` is the reference: conv3x3(16) + BN, 3 stages x 3 basic blocks of
16/32/64 channels, global average pooling, fc. Its downsampling shortcuts are 1x1 conv + BN
(`shortcut: projection`, 272,474 parameters for 10 classes); He et al.'s CIFAR net uses the
parameter-free option A (stride + zero-padded channels; `shortcut: zero_pad`, the default here,
269,722 parameters). Both are the paper's "0.27 M".
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import register_model
from evo_pai.models.shapes import image_shape, positive_int

SHORTCUTS = ("zero_pad", "projection")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, and a shortcut where the shape changes (option A or B)."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str = "zero_pad"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.extra_channels = planes - in_planes
        reshapes = stride != 1 or in_planes != planes
        self.projection = shortcut == "projection" and reshapes
        if self.projection:  # open_lth: conv1x1 + BN
            self.short_conv = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            self.short_bn = nn.BatchNorm2d(planes)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection:
            return self.short_bn(self.short_conv(x))
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int = 3,
                 widths: Sequence[int] = (16, 32, 64), shortcut: str = "zero_pad"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register_model("resnet20", "CIFAR ResNet-20: 3 stages x 3 basic blocks, BatchNorm "
                            "(params: width = first stage's channels, 16; shortcut: zero_pad | projection)")
def resnet20(input_shape: tuple[int, ...], num_classes: int, width: int = 16, shortcut: str = "zero_pad") -> nn.Module:
    c, _, _ = image_shape("resnet20", input_shape)
    w = positive_int("resnet20", "width", width)
    if shortcut not in SHORTCUTS:
        raise EvoPaiError(f"model.params.shortcut: '{shortcut}' is not one of {', '.join(SHORTCUTS)} "
                          "(zero_pad: He et al.'s option A; projection: open_lth's conv1x1 + BN)")
    return ResNet(c, num_classes, widths=(w, 2 * w, 4 * w), shortcut=shortcut)

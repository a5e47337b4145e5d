"""CIFAR VGG-16 with BatchNorm, as open_lth's `cifar_vgg_16`: 13 conv3x3 (with bias) + BN + ReLU
modules in the plan 64,64,M,128,128,M,256x3,M,512x3,M,512x3, then average pooling and one fc
(512 -> classes). 14,728,266 parameters for CIFAR-10 at width 64, as open_lth counts."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evo_pai.core.registry import register_model
from evo_pai.models.shapes import flat_size, image_shape, positive_int

PLAN_16 = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8)  # channels in units of `width`


class ConvBN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    def __init__(self, layers: nn.Sequential, features: int, num_classes: int):
        super().__init__()
        self.layers = layers
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # open_lth: AvgPool2d(2) on CIFAR's 2x2 map; adaptive pooling is the same there and fits other sizes
        return self.fc(F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1))


@register_model("vgg16", "CIFAR VGG-16 with BatchNorm (open_lth's cifar_vgg_16; param: width = first conv's "
                         "channels, 64)")
def vgg16(input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> nn.Module:
    c, _, _ = image_shape("vgg16", input_shape)
    w = positive_int("vgg16", "width", width)
    layers: list[nn.Module] = []
    for spec in PLAN_16:
        if spec == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(ConvBN(c, spec * w))
            c = spec * w
    body = nn.Sequential(*layers)
    flat_size(body, input_shape, "vgg16")  # refuses inputs its four poolings shrink to nothing
    return VGG(body, c, num_classes)

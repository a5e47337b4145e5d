"""Models a user brings, for the throughput benchmark: a transformer with dropout (the vectorized backend
runs it through torch.func.vmap) and a ResNet with Dropout, Dropout2d and an `h.mean((2, 3))` head (its
hand-batched path takes it; `--with-vmap` times vmap on it too)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evo_pai.core.registry import MODEL, register_model


class Encoder(nn.Module):
    """Fashion-MNIST's 28 rows as 28 tokens of 28 pixels: projection, learned positions, two
    nn.TransformerEncoderLayer (d 64, 4 heads, feed-forward 128, dropout 0.1), LayerNorm, mean, classifier."""

    def __init__(self, channels: int, side: int, classes: int, dim: int = 64):
        super().__init__()
        self.embed = nn.Linear(channels * side, dim)
        self.pos = nn.Parameter(torch.randn(side, dim) * 0.02)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.1, batch_first=True)
                                    for _ in range(2))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x.permute(0, 2, 1, 3).flatten(2)) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h).mean(1))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop: float):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.drop = nn.Dropout2d(drop)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.b2(self.c2(self.drop(F.relu(self.b1(self.c1(x)))))) + self.short(x))


class DropoutResNet(nn.Module):
    """Stem (16) + 3 residual blocks (16, 32/2, 64/2) with Dropout2d, global average pooling, Dropout, classifier."""

    def __init__(self, channels: int, classes: int, drop: float = 0.1):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(Block(16, 16, 1, drop), Block(16, 32, 2, drop), Block(32, 64, 2, drop))
        self.drop, self.head = nn.Dropout(3 * drop), nn.Linear(64, classes)

    def forward(self, x):
        h = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.head(self.drop(h.mean((2, 3))))


def register() -> None:
    if "bench_encoder" in MODEL:
        return
    register_model("bench_encoder", "benchmark: transformer with dropout")(
        lambda input_shape, num_classes: Encoder(input_shape[0], input_shape[1], num_classes))
    register_model("bench_dropout_resnet", "benchmark: ResNet with Dropout and a mean head")(
        lambda input_shape, num_classes: DropoutResNet(input_shape[0], num_classes))

"""Model registry entries, the definition of what is prunable, and FLOP counting.

Builders take `(input_shape, num_classes, **params)` and use PyTorch's default
initialization, drawing only from torch's global RNG: `torch.manual_seed(s)` before
`build_model` gives identical weights. `model.init` / `model.bias_init` re-draw them after
building (`initialize`), from the same RNG.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from evo_pai.core.config import ModelConfig
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import MODEL, register_model

PRUNABLE_TYPES = (nn.Linear, nn.Conv2d)


def build_model(cfg: ModelConfig, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build the registered model `cfg.name` for inputs of `input_shape` (without batch dim)."""
    builder = MODEL.get(cfg.name)
    sig = inspect.signature(builder)
    allowed = [n for n, p in sig.parameters.items()
               if n not in ("input_shape", "num_classes") and p.kind is not p.VAR_KEYWORD]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for key in cfg.params:
        if key not in allowed and not takes_any:
            options = ", ".join(allowed) or "none"
            raise EvoPaiError(f"model.params: '{key}' is not an option of model '{cfg.name}' (allowed: {options})")
    return initialize(builder(tuple(input_shape), num_classes, **cfg.params), cfg.init, cfg.bias_init)


def initialize(model: nn.Module, init: str = "default", bias_init: str = "default") -> nn.Module:
    """Re-draw every Linear/Conv2d weight by `init` (fan-in He init for ReLU nets, or Glorot) and
    zero the biases if asked; `default` keeps PyTorch's. Draws from torch's global RNG, in module
    order, so θ0 stays a function of the seed."""
    if init == "default" and bias_init == "default":
        return model
    draw = {"kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
            "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
            "xavier_normal": nn.init.xavier_normal_}.get(init)
    for m in model.modules():
        if isinstance(m, PRUNABLE_TYPES):
            if draw is not None:
                draw(m.weight)
            if bias_init == "zero" and m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise EvoPaiError(
            f"model '{model}' needs image input (C, H, W) but the data has shape {input_shape}: "
            f"use model 'mlp' or an image dataset"
        )
    return input_shape  # type: ignore[return-value]


def _flat_size(features: nn.Module, input_shape: tuple[int, ...], model: str) -> int:
    """Size of the flattened feature map, found by a dummy forward (no RNG involved)."""
    with torch.no_grad():
        out = features(torch.zeros(1, *input_shape))
    if out.numel() == 0:
        raise EvoPaiError(f"model '{model}': input shape {input_shape} is too small for its pooling layers")
    return out.numel()


# ----------------------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int):
        super().__init__()
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


@register_model("mlp", "fully connected ReLU network, LeNet-300-100 by default (param: hidden)")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (300, 100)) -> nn.Module:
    if not all(isinstance(h, int) and h > 0 for h in hidden):
        raise EvoPaiError(f"model.params.hidden: must be a list of positive integers, got {hidden!r}")
    return MLP(math.prod(input_shape), hidden, num_classes)


class ConvNet(nn.Module):
    """Conv feature extractor followed by a fully connected classifier (LeNet-5, Conv-4)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _fc_head(in_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_features, h), nn.ReLU()]
        in_features = h
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


@register_model("lenet5", "LeNet-5: conv6-pool-conv16-pool-fc120-fc84 (padding adapts to 8x8..32x32 inputs)")
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, h, w = _image_shape("lenet5", input_shape)
    size = min(h, w)
    # Classic LeNet-5 sees 32x32: pad smaller inputs (MNIST 28 -> 32) as LeCun did, and pad the
    # second conv too when the map is already too small for a 5x5 kernel (8x8 digits).
    pad1 = 2 if size < 32 else 0
    pad2 = 0 if (size + 2 * pad1 - 4) // 2 >= 6 else 2
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=pad1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),
    )
    flat = _flat_size(features, input_shape, "lenet5")
    return ConvNet(features, _fc_head(flat, (120, 84), num_classes))


@register_model("conv4", "lottery-ticket Conv-4: conv64x2-pool-conv128x2-pool-fc256-fc256")
def conv4(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, _, _ = _image_shape("conv4", input_shape)
    features = nn.Sequential(
        nn.Conv2d(c, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )
    # Flatten size follows the input (32x32 -> 8192 as in the paper, 28x28 -> 6272, 8x8 -> 512).
    flat = _flat_size(features, input_shape, "conv4")
    return ConvNet(features, _fc_head(flat, (256, 256), num_classes))


class BasicBlock(nn.Module):
    """CIFAR ResNet block with the parameter-free option-A shortcut (He et al. 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.extra_channels = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
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
    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int = 3, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register_model("resnet20", "CIFAR ResNet-20: 3 stages x 3 basic blocks, 16/32/64 channels, BatchNorm")
def resnet20(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, _, _ = _image_shape("resnet20", input_shape)
    return ResNet(c, num_classes)


# ----------------------------------------------------------------------------- prunability


def _prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def _param_name(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def output_layer_name(model: nn.Module) -> str:
    """Weight name of the output layer: the last nn.Linear in module order."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise EvoPaiError(f"model {type(model).__name__} has no nn.Linear output layer: add one as the classifier")
    return _param_name(linears[-1], "weight")


def prunable_names(model: nn.Module, include_output: bool = True, include_bias: bool = False) -> list[str]:
    """Parameter names of the Linear / Conv2d weights (and optionally biases), in module order."""
    out_name = output_layer_name(model) if not include_output else None
    names: list[str] = []
    for mod_name, module in _prunable_modules(model):
        weight = _param_name(mod_name, "weight")
        if weight == out_name:
            continue
        names.append(weight)
        if include_bias and module.bias is not None:
            names.append(_param_name(mod_name, "bias"))
    return names


def count_flops(
    model: nn.Module, input_shape: Sequence[int], masks: dict[str, torch.Tensor] | None = None
) -> dict[str, int]:
    """Forward FLOPs (2 per multiply-add) of the Linear and Conv2d layers for one example.

    `sparse` counts only the weights kept by `masks` (param name -> bool mask of the weight's
    shape); layers without a mask count as dense.
    """
    masks = masks or {}
    totals = {"dense": 0, "sparse": 0}

    def hook_for(weight_name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            weight = module.weight
            # Each weight is used once per output position: H*W for a conv, 1 for a plain Linear.
            positions = output[0].numel() // weight.shape[0]
            kept = int(masks[weight_name].count_nonzero()) if weight_name in masks else weight.numel()
            totals["dense"] += 2 * weight.numel() * positions
            totals["sparse"] += 2 * kept * positions

        return hook

    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name in params and tuple(mask.shape) != tuple(params[name].shape):
            raise EvoPaiError(f"mask '{name}' has shape {tuple(mask.shape)} but the weight is {tuple(params[name].shape)}")

    probe_forward(model, input_shape, {m: hook_for(_param_name(n, "weight")) for n, m in _prunable_modules(model)})
    return totals


@torch.no_grad()
def probe_forward(model: nn.Module, input_shape: Sequence[int], hooks: dict[nn.Module, Callable]) -> None:
    """One forward pass of a zero example with `hooks` (module -> forward hook) attached: what counting
    FLOPs and sizing activations read. In eval mode (BatchNorm statistics untouched); the model is left
    as it was. (Why not torch.utils.flop_counter.FlopCounterMode: docs/architecture.md, "FLOPs".)"""
    handles = [m.register_forward_hook(h) for m, h in hooks.items()]
    was_training = model.training
    param = next(model.parameters(), None)
    dummy = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu",
                        dtype=param.dtype if param is not None else torch.float32)
    try:
        model.eval()
        model(dummy)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

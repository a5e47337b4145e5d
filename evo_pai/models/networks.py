"""Model building, the sequential models (mlp, lenet5, conv4) and FLOP counting.

ResNets live in models/resnet.py, VGGs in models/vgg.py (imported here, so building any built-in
model needs only this module); what is prunable is decided in models/prunable.py.

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
from torch import nn

from evo_pai.core.config import ModelConfig
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import MODEL, register_model
from evo_pai.models.prunable import (ATTENTION_WEIGHTS, WEIGHTED, ParamRole, masked_names, masked_roles, output_layer_name,  # noqa: F401
                                     parameter_roles, prunable_names)
from evo_pai.models.shapes import eval_mode, flat_size as _flat_size, image_shape as _image_shape


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
    """Re-draw every Linear/Conv weight by `init` (fan-in He init for ReLU nets, or Glorot) and
    zero the biases if asked; `default` keeps PyTorch's. Draws from torch's global RNG, in module
    order, so θ0 stays a function of the seed."""
    if init == "default" and bias_init == "default":
        return model
    draw = {"kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
            "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
            "xavier_normal": nn.init.xavier_normal_}.get(init)
    for m in model.modules():
        if isinstance(m, WEIGHTED):
            if draw is not None:
                draw(m.weight)
            if bias_init == "zero" and m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


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


# ----------------------------------------------------------------------------- FLOPs


def _weighted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHTED)]


def _param_name(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def count_flops(
    model: nn.Module, input_shape: Sequence[int], masks: dict[str, torch.Tensor] | None = None
) -> dict[str, int]:
    """Forward FLOPs (2 per multiply-add) of the weights of Linear, Conv and MultiheadAttention layers
    (its projections; the score and value products multiply no weight) for one example.

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

    def attention_hook(name: str):
        def hook(module: nn.MultiheadAttention, inputs: tuple, output: tuple) -> None:
            # its projections multiply each token by their weights (out_proj is never called as a module)
            tokens = output[0].numel() // module.embed_dim
            for attr in (*ATTENTION_WEIGHTS, "out_proj.weight"):
                w = module.get_parameter(attr) if attr == "out_proj.weight" else getattr(module, attr, None)
                if w is not None:
                    full = _param_name(name, attr)
                    kept = int(masks[full].count_nonzero()) if full in masks else w.numel()
                    totals["dense"] += 2 * w.numel() * tokens
                    totals["sparse"] += 2 * kept * tokens

        return hook

    hooks = {m: hook_for(_param_name(n, "weight")) for n, m in _weighted_modules(model)}
    hooks.update({m: attention_hook(n) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)})
    probe_forward(model, input_shape, hooks)
    return totals


@torch.no_grad()
def probe_forward(model: nn.Module, input_shape: Sequence[int], hooks: dict[nn.Module, Callable]) -> None:
    """One forward pass of a zero example with `hooks` (module -> forward hook) attached: what counting
    FLOPs and sizing activations read. In eval mode (BatchNorm statistics untouched); the model is left
    as it was. (Why not torch.utils.flop_counter.FlopCounterMode: docs/architecture.md, "FLOPs".)"""
    param = next(model.parameters(), None)
    dummy = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu",
                        dtype=param.dtype if param is not None else torch.float32)
    handles = [m.register_forward_hook(h) for m, h in hooks.items()]
    try:
        with eval_mode(model):
            model(dummy)
    finally:
        for h in handles:
            h.remove()


# The other built-in architectures register themselves on import (after everything above exists).
from evo_pai.models import resnet, vgg  # noqa: E402,F401

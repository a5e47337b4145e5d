"""A user's own `nn.Module` as the model of a run (`evo_pai.search(model, ...)`), without a plugin.

The module (its current weights are θ0) or a zero-argument function that builds one is registered
for this process under `python:<ClassName>`; the config records that name and a fingerprint of θ0's
tensors, so a resumed run with another network is refused by the checkpoint's config hash. Such a
name is never importable elsewhere: a Ray actor receives the registered builder through the object
store (evaluation/ray.py), and `evo-pai export` / `resume` say in one line how to hand it back.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from evo_pai.core.errors import EvoPaiError, brief
from evo_pai.core.registry import MODEL
from evo_pai.data.user_data import PREFIX, fingerprint


def is_user_name(name: str) -> bool:
    return name.startswith(PREFIX)


class UserModel:
    """The builder registered for a user's model: `(input_shape, num_classes, **params) -> nn.Module`.

    A module instance is deep-copied (the user's object is never trained); a factory is called under
    the run's seed, so every process gets the same θ0. Picklable when the module or factory is."""

    def __init__(self, model: nn.Module | Callable[[], nn.Module]):
        self.instance = model if isinstance(model, nn.Module) else None
        self.factory = None if self.instance is not None else model
        self.kind = "instance" if self.instance is not None else "factory"

    def __call__(self, input_shape=None, num_classes=None, **params: Any) -> nn.Module:
        if self.instance is not None:
            try:
                return copy.deepcopy(self.instance)  # training must never touch the user's own object
            except Exception as exc:
                raise EvoPaiError(f"model: the {type(self.instance).__name__} instance cannot be copied ({brief(exc)}); "
                                  "pass a zero-argument function that builds it instead, e.g. "
                                  "search(lambda: MyNet(), ...)") from None
        try:
            net = self.factory()
        except Exception as exc:
            raise EvoPaiError(f"model: the function passed to evo_pai.search failed ({brief(exc)}); it must build "
                              "the network with no arguments") from exc
        if not isinstance(net, nn.Module):
            raise EvoPaiError(f"model: the function passed to evo_pai.search returned {type(net).__name__}, not a "
                              "torch.nn.Module; return the network from it")
        return net

    @property
    def source(self):
        """What a Ray actor must unpickle: the instance or the factory."""
        return self.instance if self.instance is not None else self.factory


def register_user_model(model: Any, seed: int) -> tuple[dict, nn.Module]:
    """Register `model` for this process; returns (the config's `model` section, θ0 built under `seed`)."""
    if not isinstance(model, nn.Module) and not callable(model):
        raise EvoPaiError(f"model: expected a torch.nn.Module or a zero-argument function that builds one, got "
                          f"{type(model).__name__}")
    builder = UserModel(model)
    with torch.random.fork_rng(devices=[]):  # the user's RNG stream is not moved by our probe
        torch.manual_seed(seed)
        net = builder()
    name = f"{PREFIX}{type(net).__name__}"
    MODEL.register(name, f"{type(net).__name__} handed to evo_pai.search() ({builder.kind})")(builder)
    return {"name": name, "params": {"theta0": fingerprint(net.state_dict())}}, net


def not_rebuildable(name: str, action: str) -> EvoPaiError:
    """The one line for a run made by `evo_pai.search()` on a module this process does not have."""
    return EvoPaiError(f"model.name: this run's model '{name}' was an nn.Module handed to evo_pai.search() and is not "
                       f"registered in this process; {action}")


def rebuild(model_cfg: dict, input_shape, num_classes: int, plugins=(), model: nn.Module | None = None,
            loader: str = "the loader") -> nn.Module:
    """The network an export file describes: a copy of `model` when given (a module handed to
    evo_pai.search), else built from its registered name after importing the run's plugins."""
    from evo_pai.core.config import ModelConfig
    from evo_pai.core.registry import import_plugins
    from evo_pai.models.networks import build_model

    if model is not None:
        return copy.deepcopy(model)
    import_plugins(list(plugins))
    name = model_cfg.get("name", "")
    if is_user_name(name) and name not in MODEL:
        raise not_rebuildable(name, f"pass it: {loader}(path, model=<that module>)")
    return build_model(ModelConfig(**model_cfg), tuple(input_shape), int(num_classes))

"""Name -> component registries, decorators, and plugin loading.

One small `Registry` type serves every kind of component (fitness, mutation, ...).
Users register with a decorator in their own module and list the module under
`plugins:` in the YAML, or expose it through the `evo_pai.plugins` entry point.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from evo_pai.core.errors import EvoPaiError, brief

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            doc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, doc)
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise EvoPaiError(f"unknown {self.kind} '{name}': choose one of {known}")
        return self._entries[name].obj

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)


FITNESS: Registry = Registry("fitness")
MUTATION: Registry = Registry("mutation")
CROSSOVER: Registry = Registry("crossover")
SELECTION: Registry = Registry("selection")
METHOD: Registry = Registry("method")
MODEL: Registry = Registry("model")
DATASET: Registry = Registry("dataset")
BACKEND: Registry = Registry("backend")
PRUNER: Registry = Registry("pruner")
UNIT_CRITERION: Registry = Registry("unit criterion")  # scores whole units for the structured `neuron` mutation

ALL = {r.kind: r for r in (FITNESS, MUTATION, CROSSOVER, SELECTION, METHOD, MODEL, DATASET, BACKEND, PRUNER,
                           UNIT_CRITERION)}

register_fitness = FITNESS.register
register_mutation = MUTATION.register
register_crossover = CROSSOVER.register
register_selection = SELECTION.register
register_method = METHOD.register
register_model = MODEL.register
register_dataset = DATASET.register
register_backend = BACKEND.register
register_pruner = PRUNER.register
register_unit_criterion = UNIT_CRITERION.register

PLUGIN_GROUP = "evo_pai.plugins"


def import_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import installed entry-point plugins, then the modules named in the config.

    Built-in components are not imported here (the core imports nothing above it): whoever starts a
    run calls `evo_pai.runs.components.load_components`, which imports them and then calls this.
    """
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except EvoPaiError:
            raise
        except Exception as exc:  # a broken third-party plugin must not hide which one
            raise EvoPaiError(f"plugin entry point '{ep.name}' ({ep.value}) failed to load: {brief(exc)}") from exc
    for mod in modules:
        try:
            importlib.import_module(mod)
        except EvoPaiError:
            raise
        except ImportError as exc:
            raise EvoPaiError(
                f"plugins: cannot import module '{mod}' ({exc}); put it on PYTHONPATH or install it"
            ) from exc
        except Exception as exc:  # the module was found but its code failed: say which and how
            raise EvoPaiError(f"plugins: module '{mod}' failed while importing ({brief(exc)}); fix the module") from exc


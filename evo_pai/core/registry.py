"""Name -> component registries, decorators, and plugin loading.

One small `Registry` type serves every kind of component (fitness, mutation, ...).
Users register with a decorator in their own module and list the module under
`plugins:` in the YAML, or expose it through the `evo_pai.plugins` entry point.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

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
            doc = description if description is not None else (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
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
CHANNEL_CRITERION: Registry = Registry("channel criterion")  # scores a channel group's channels (width search)

ALL = {r.kind: r for r in (FITNESS, MUTATION, CROSSOVER, SELECTION, METHOD, MODEL, DATASET, BACKEND, PRUNER,
                           UNIT_CRITERION, CHANNEL_CRITERION)}

register_fitness = FITNESS.register
register_mutation = MUTATION.register
register_crossover = CROSSOVER.register
register_selection = SELECTION.register
register_model = MODEL.register
register_dataset = DATASET.register
register_backend = BACKEND.register
register_pruner = PRUNER.register
register_unit_criterion = UNIT_CRITERION.register
register_channel_criterion = CHANNEL_CRITERION.register

# The config fields preflight validates only for a method that reads them (a method that ignores
# search.fitness does not get a typo in it refused; `evo-pai list` shows what each method reads).
CHECKED_FIELDS = ("search.fitness", "search.mutation", "search.explore", "search.crossover", "search.selection")
# search.params every method takes: the runner reads them, whatever the method.
COMMON_PARAMS = {"extra_epochs": "train the final mask this many epochs longer (equal-epoch controls), default 0"}
Plan = Callable[[Any], "tuple[int | None, int | None]"]


@dataclass(frozen=True)
class Method:
    """A search method, declared once: what the run, preflight and study layers read about it.

    Built-ins and plugins declare the same fields (docs/extending.md); a plain function registered with
    `@register_method("name")` gets the defaults: no progress plan, any `search.params` key, every
    CHECKED_FIELDS validated, one answer at search.sparsity, not an evolutionary search.
    """

    search: Callable  # (Experiment) -> SearchOutcome
    plan: Plan | None = None  # (Config) -> (training tasks, generations) the search will log; None: unknown
    params: Mapping[str, str] | None = None  # search.params keys it reads -> meaning; None: undeclared (any)
    reads: tuple[str, ...] = CHECKED_FIELDS  # config fields it reads beyond the shared recipe (data, model, masks, train, final)
    preflight: Callable[[Any], None] | None = None  # (Config) -> None: its own checks, before a run folder exists
    members: bool = False  # several answers (SearchOutcome.members): the runner trains final.members
    evolutionary: bool = False  # an evolutionary search (a population under selection): what study targets compare
    sparse: bool = True  # its answer is at search.sparsity (False: dense, which a study runs once per seed)
    description: str = field(default="", compare=False)

    def __call__(self, exp):
        return self.search(exp)

    def progress_plan(self, cfg) -> tuple[int | None, int | None]:
        return self.plan(cfg) if self.plan is not None else (None, None)

    def accepted_params(self) -> dict[str, str] | None:
        return None if self.params is None else {**COMMON_PARAMS, **self.params}

    def check_params(self, name: str, params: Mapping[str, Any]) -> None:
        """Refuse a `search.params` key the method does not read (a typo must not run silently)."""
        known = self.accepted_params()
        for key in params:
            if known is not None and key not in known:
                raise EvoPaiError(f"search.params.{key}: method '{name}' takes no such parameter; it takes "
                                  f"{', '.join(sorted(known))}")
        self.extra_epochs(params)

    @staticmethod
    def extra_epochs(params: Mapping[str, Any]) -> float:
        """search.params.extra_epochs: equal-epoch controls train the final mask this much longer."""
        value = params.get("extra_epochs", 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise EvoPaiError(f"search.params.extra_epochs: must be a number >= 0, got {value!r}")
        return float(value)


def register_method(name: str, description: str | None = None, **declared: Any) -> Callable:
    """`@register_method("name", plan=..., params=..., ...)` on a search function: registers a `Method`
    with the declared fields and returns the function unchanged. A `Method` may be passed instead."""

    def decorator(fn):
        if isinstance(fn, Method):
            method = fn if description is None else replace(fn, description=description)
        else:
            doc = description or (getattr(fn, "__doc__", None) or "").strip().split("\n")[0]
            method = Method(search=fn, description=doc, **declared)
        METHOD.register(name, method.description)(method)
        return fn

    return decorator


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


"""Registering the built-in components: done by whoever starts a run (CLI, `evo_pai.run`, a study
worker), never by the core. Importing a module registers what its decorators name."""
from __future__ import annotations

from ..registry import import_plugins


def load_builtins() -> None:
    """Import every module whose decorators fill the registries (idempotent: Python caches modules)."""
    from .. import data, fitness, genomes, models, operators, pruners, structured  # noqa: F401
    from ..evaluation import local, vectorized  # noqa: F401
    from ..evaluation import ray as _ray_backend  # noqa: F401  (imports ray itself only when used)
    from ..search import methods  # noqa: F401


def load_components(plugins: list[str] | tuple[str, ...] = ()) -> None:
    """The built-ins, then installed entry-point plugins, then the modules a config names."""
    load_builtins()
    import_plugins(plugins)

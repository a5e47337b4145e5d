"""Registering the built-in components: done by whoever starts a run (CLI, `evo_pai.run`, a study
worker), never by the core. Importing a module registers what its decorators name."""
from __future__ import annotations

from evo_pai.core.registry import import_plugins


def load_builtins() -> None:
    """Import every module whose decorators fill the registries (idempotent: Python caches modules)."""
    from evo_pai.data import datasets  # noqa: F401
    from evo_pai.models import networks  # noqa: F401
    from evo_pai.operators import fitness, genomes, pruners, structured, variation, widths  # noqa: F401
    from evo_pai.evaluation import local, vectorized  # noqa: F401
    from evo_pai.evaluation import ray as _ray_backend  # noqa: F401  (imports ray itself only when used)
    from evo_pai.search import methods  # noqa: F401


def load_components(plugins: list[str] | tuple[str, ...] = ()) -> None:
    """The built-ins, then installed entry-point plugins, then the modules a config names."""
    load_builtins()
    import_plugins(plugins)

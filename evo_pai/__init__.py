"""evo-pai: evolutionary pruning at initialization (K-starts, dissipating gradients, their combination)."""
from .errors import EvoPaiError
from .registry import (
    register_backend,
    register_crossover,
    register_dataset,
    register_fitness,
    register_method,
    register_model,
    register_mutation,
    register_pruner,
    register_selection,
)

__version__ = "0.1.0"


def run(*args, **kwargs):
    """Run a config and return its summary; see `evo_pai.runs.api.run`."""
    from .runs.api import run as _run

    return _run(*args, **kwargs)


__all__ = [
    "EvoPaiError",
    "run",
    "register_backend",
    "register_crossover",
    "register_dataset",
    "register_fitness",
    "register_method",
    "register_model",
    "register_mutation",
    "register_pruner",
    "register_selection",
]

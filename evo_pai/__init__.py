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

__all__ = [
    "EvoPaiError",
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

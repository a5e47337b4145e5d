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


def load_mask(run_dir):
    """A run's winning mask (a MaskSet): `.apply_(model)`, `.to_torch_prune(model)`, `.to_npz(path)`;
    see `evo_pai.runs.mask_file.load_mask`."""
    from .runs.mask_file import load_mask as _load

    return _load(run_dir)


__all__ = [
    "EvoPaiError",
    "load_mask",
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

"""evo-pai: evolutionary pruning at initialization (K-starts, dissipating gradients, their combination)."""
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import (
    register_backend,
    register_crossover,
    register_dataset,
    register_fitness,
    register_method,
    register_model,
    register_mutation,
    register_pruner,
    register_selection,
    register_unit_criterion,
)

__version__ = "0.1.0"


def run(*args, **kwargs):
    """Run a config and return its summary; see `evo_pai.runs.api.run`."""
    from evo_pai.runs.api import run as _run

    return _run(*args, **kwargs)


def load_mask(run_dir):
    """A run's winning mask (a MaskSet): `.apply_(model)`, `.to_torch_prune(model)`, `.to_npz(path)`;
    see `evo_pai.runs.mask_file.load_mask`."""
    from evo_pai.runs.mask_file import load_mask as _load

    return _load(run_dir)
def load_compact(path):
    """The smaller dense network `evo-pai export --format compact` wrote (evo_pai/deploy/compact.py)."""
    from evo_pai.deploy.compact import load_compact as _load

    return _load(path)


def load_csr(path):
    """The module with torch.sparse_csr Linear weights `evo-pai export --format csr` wrote."""
    from evo_pai.deploy.csr import load_csr as _load

    return _load(path)


def load_torch_prune(path):
    """The model with torch.nn.utils.prune masks `evo-pai export --format torch-prune` wrote."""
    from evo_pai.runs.export import load_torch_prune as _load

    return _load(path)


def load_semi_structured(path):
    """A `--format semi-structured` export on CUDA: (module, converted layer names)."""
    from evo_pai.runs.export import load_semi_structured as _load

    return _load(path)


__all__ = [
    "load_compact",
    "load_csr",
    "load_torch_prune",
    "load_semi_structured",
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
    "register_unit_criterion",
]

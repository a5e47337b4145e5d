"""evo-pai: evolutionary pruning at initialization (K-starts, dissipating gradients, their combination)."""
import sys as _sys
import types as _types

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.moved import install_moved_modules, show_deprecations
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
    register_channel_criterion,
)

__version__ = "0.2.0"  # semantic versioning; pyproject.toml reads it; CHANGELOG.md says what each version changed

# Modules earlier docs and examples imported from, gone since 0.1's folders: each name still imports,
# from its new home, with a warning naming `evo_pai.plugin` (evo_pai/core/moved.py; CHANGELOG.md, 0.2.0).
install_moved_modules({
    "evo_pai.individual": {"Individual": "evo_pai.core.individual"},
    "evo_pai.experiment": dict.fromkeys(("Experiment", "SearchOutcome"), "evo_pai.search.experiment"),
    "evo_pai.units": dict.fromkeys(("Link", "unit_rows", "unit_columns"), "evo_pai.models.units"),
})
show_deprecations()


def run(*args, **kwargs):
    """Run a config and return its summary; see `evo_pai.runs.api.run`."""
    from evo_pai.runs.api import run as _run

    return _run(*args, **kwargs)


class _Search:
    """`evo_pai.search(model, train, *, val=None, test=None, method="combined", sparsity=0.9, config=None,
    overrides=(), out=None, overwrite=False, progress=True) -> SearchResult`: a sparse mask for your own
    nn.Module on your own data (`.mask`, `.apply(model)`, `.summary`, `.export(format)`); docs/python.md.

    `evo_pai.search` is also the subpackage of search methods: `evo_pai.search.nsga2` and
    `import evo_pai.search.nsga2 as m` reach its modules through this object."""

    __name__ = __qualname__ = "search"

    def __call__(self, model, train, **kwargs):
        from evo_pai.runs.python_search import search as _search

        return _search(model, train, **kwargs)

    def __getattr__(self, name):
        import importlib

        return getattr(importlib.import_module("evo_pai.search"), name)

    def __repr__(self) -> str:
        return "<function evo_pai.search(model, train, **kwargs)>"


search = _Search()


def export(run, model=None, format="compact", out=None, member=None) -> dict:
    """`evo-pai export` from Python, for a run folder or a SearchResult; `model=` is the nn.Module a run of
    `search()` was made on (see `evo_pai.runs.python_export.export`)."""
    from evo_pai.runs.python_export import export as _export

    return _export(run, model=model, format=format, out=out, member=member)


def load_mask(run_dir):
    """A run's winning mask (a MaskSet): `.apply_(model)`, `.to_torch_prune(model)`, `.to_npz(path)`;
    see `evo_pai.runs.mask_file.load_mask`."""
    from evo_pai.runs.mask_file import load_mask as _load

    return _load(run_dir)


def load_compact(path):
    """The smaller dense network `evo-pai export --format compact` wrote (evo_pai/deploy/compact.py)."""
    from evo_pai.deploy.compact import load_compact as _load

    return _load(path)


def load_csr(path, model=None):
    """The module with torch.sparse_csr Linear weights `evo-pai export --format csr` wrote (`model=`: the
    nn.Module a run of `search()` was made on)."""
    from evo_pai.deploy.csr import load_csr as _load

    return _load(path, model)


def load_torch_prune(path, model=None):
    """The model with torch.nn.utils.prune masks `evo-pai export --format torch-prune` wrote (`model=`: the
    nn.Module a run of `search()` was made on)."""
    from evo_pai.runs.export import load_torch_prune as _load

    return _load(path, model)


def load_pruned(path, model=None):
    """The physically pruned network `evo-pai export --format pruned` wrote (a run with masks.granularity:
    channel): the model's own class with fewer channels (`model=`: the nn.Module a run of `search()` was made on)."""
    from evo_pai.deploy.pruned import load_pruned as _load

    return _load(path, model)


def load_semi_structured(path):
    """A `--format semi-structured` export on CUDA: (module, converted layer names)."""
    from evo_pai.runs.export import load_semi_structured as _load

    return _load(path)


# `evo_pai.search` is also a subpackage: importing `evo_pai.search.<module>` would set this attribute to
# the package; the module class below keeps the function whatever is imported, and when.
class _Facade(_types.ModuleType):
    def __setattr__(self, name, value):
        if name == "search" and isinstance(value, _types.ModuleType):
            return  # the subpackage stays reachable as sys.modules["evo_pai.search"]
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Facade

__all__ = [
    "search",
    "export",
    "load_compact",
    "load_csr",
    "load_torch_prune",
    "load_semi_structured",
    "load_pruned",
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
    "register_channel_criterion",
]

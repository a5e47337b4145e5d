"""Issue 26, part 2: every import path docs/extending.md and examples/ ever gave still imports. A path
that moved warns (EvoPaiDeprecationWarning, a DeprecationWarning) naming `evo_pai.plugin`; a plugin
module written against the old paths runs a search."""
from __future__ import annotations

import sys
import warnings

import pytest

import evo_pai
import evo_pai.plugin as surface
from evo_pai.core.moved import EvoPaiDeprecationWarning

# `git log -p -- docs/extending.md examples/`: the paths given there that have since moved ...
MOVED = [
    ("evo_pai.data", "DataSplits"), ("evo_pai.data", "split_validation"), ("evo_pai.data", "standardize"),
    ("evo_pai.operators", "keep_counts"), ("evo_pai.operators", "prune_to"), ("evo_pai.operators", "PruneStep"),
    ("evo_pai.individual", "Individual"),
    ("evo_pai.experiment", "Experiment"), ("evo_pai.experiment", "SearchOutcome"),
    ("evo_pai.units", "Link"), ("evo_pai.units", "unit_rows"), ("evo_pai.units", "unit_columns"),
]
# ... and those still where they were (the implementation's modules: they import without a warning).
IN_PLACE = [
    ("evo_pai", "register_fitness"), ("evo_pai", "register_mutation"), ("evo_pai", "register_method"),
    ("evo_pai", "register_dataset"), ("evo_pai", "EvoPaiError"),
    ("evo_pai.operators.variation", "keep_counts"), ("evo_pai.operators.variation", "prune_to"),
    ("evo_pai.operators.variation", "PruneStep"), ("evo_pai.data.datasets", "DataSplits"),
    ("evo_pai.data.datasets", "split_validation"), ("evo_pai.data.datasets", "assemble_streamed"),
    ("evo_pai.search.experiment", "Experiment"), ("evo_pai.search.experiment", "SearchOutcome"),
    ("evo_pai.search.kstarts", "kstarts_population"), ("evo_pai.core.individual", "Individual"),
    ("evo_pai.models.units", "Link"), ("evo_pai.models.units", "unit_rows"), ("evo_pai.training", "BurstResult"),
    ("evo_pai.evaluation.base", "Evaluator"), ("evo_pai.core.registry", "Method"),
]


def _import(module: str, name: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        namespace: dict = {}
        exec(f"from {module} import {name}", namespace)
    return namespace[name], [w for w in caught if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("module,name", MOVED)
def test_a_moved_path_imports_the_public_object_and_says_where_it_is_now(module, name):
    obj, caught = _import(module, name)
    assert obj is getattr(surface, name)
    assert [w.category for w in caught] == [EvoPaiDeprecationWarning]
    assert f"`from evo_pai.plugin import {name}`" in str(caught[0].message)
    assert "0.4.0" in str(caught[0].message)  # when it goes: after the next minor version


@pytest.mark.parametrize("module,name", IN_PLACE)
def test_a_path_still_in_place_imports_the_public_object_quietly(module, name):
    obj, caught = _import(module, name)
    assert obj is getattr(surface, name) and caught == []


def test_a_name_that_never_was_there_is_still_an_import_error():
    with pytest.raises(ImportError, match="MaskSet"):
        _import("evo_pai.data", "MaskSet")
    with pytest.raises(ImportError, match="Nope"):
        _import("evo_pai.units", "Nope")
    from evo_pai.data import datasets  # submodules are not shadowed by the moved names

    assert datasets.DataSplits is surface.DataSplits


def test_a_plugin_written_against_the_old_paths_runs_a_search():
    sys.modules.pop("old_paths_plugin", None)
    raw = {
        "seed": 0, "plugins": ["old_paths_plugin"],
        "data": {"name": "old_digits"}, "model": {"name": "mlp", "params": {"hidden": [32]}},
        "search": {"method": "combined", "sparsity": 0.8, "initial_sparsity": 0.5, "population": 4,
                   "generations": 2, "burst_epochs": 1, "mutation": "old_gradient_prune",
                   "fitness": "old_val_accuracy"},
        "train": {"batch_size": 64}, "final": {"epochs": 8},
    }
    with pytest.warns(EvoPaiDeprecationWarning) as record:
        summary = evo_pai.run(raw)
    plugin = sys.modules["old_paths_plugin"]
    assert all(n > 0 for n in plugin.CALLS.values()), plugin.CALLS  # its dataset, mutation and fitness ran
    assert summary["test_accuracy"] > 0.5 and summary["sparsity"] == pytest.approx(0.8, abs=0.01)
    said = {str(w.message).split("use ")[-1] for w in record if w.filename.endswith("old_paths_plugin.py")}
    assert said == {f"`from evo_pai.plugin import {n}`" for n in
                    ("DataSplits", "split_validation", "standardize", "keep_counts", "prune_to")}


def _python(*args: str):
    import subprocess

    from conftest import ROOT

    return subprocess.run([sys.executable, *args], cwd=ROOT / "tests", capture_output=True, text=True, timeout=300)


def test_the_warning_is_shown_by_default_at_the_plugins_line_and_w_error_makes_it_one_error_line():
    """Python hides DeprecationWarnings outside __main__; a plugin author must see ours, at their line."""
    r = _python("-c", "import old_paths_plugin")
    assert r.returncode == 0
    assert "old_paths_plugin.py:9: EvoPaiDeprecationWarning: `from evo_pai.operators import keep_counts`" in r.stderr
    r = _python("-W", "error::DeprecationWarning", "-m", "evo_pai", "list", "--plugin", "old_paths_plugin")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: plugins: module 'old_paths_plugin' failed while importing "
                               "(EvoPaiDeprecationWarning: `from evo_pai.data import DataSplits` is deprecated")

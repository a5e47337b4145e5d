"""Import paths that moved: they keep working for a while, with a warning that names the new one.

Two kinds of old path (CHANGELOG.md lists them, `evo_pai/__init__.py` and the packages hold the tables):

- a name that left a package that still exists (`from evo_pai.data import DataSplits`): the package's
  module `__getattr__` is `moved_attributes(...)`;
- a module that no longer exists (`from evo_pai.individual import Individual`): `install_moved_modules`
  puts a finder on `sys.meta_path` that makes a stand-in module whose attributes come from the new home.

Either way the object is the one at its new home (looked up when first asked for, so importing an old
path costs nothing until a name is used) and an `EvoPaiDeprecationWarning` says what to import instead.
This module knows no other evo-pai module: the tables are strings, resolved when a name is asked for.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any, Callable, Mapping

PUBLIC = "evo_pai.plugin"  # where every moved name an extension author used lives now
REMOVAL = "0.4.0"  # old paths are kept through the next minor version (0.3.x) at least


class EvoPaiDeprecationWarning(DeprecationWarning):
    """An old evo-pai import path: shown by default (see `show_deprecations`), unlike Python's own."""


def warn_moved(old: str, name: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"`from {old} import {name}` is deprecated and will stop working in evo-pai {REMOVAL}: "
                  f"use `from {new} import {name}`", EvoPaiDeprecationWarning, stacklevel=stacklevel)


def _lookup(old: str, table: Mapping[str, str], name: str) -> Any:
    if name not in table:
        raise AttributeError(f"module {old!r} has no attribute {name!r}")
    # `from package import name` asks twice: importlib's own hasattr (not the user's line: no warning),
    # then the importing line itself (warned, pointing at that line).
    if not sys._getframe(2).f_code.co_filename.startswith("<frozen importlib"):
        warn_moved(old, name, PUBLIC, stacklevel=4)
    return getattr(importlib.import_module(table[name]), name)


def moved_attributes(old: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for the names in `table` (name -> the module that holds it now)."""

    def __getattr__(name: str) -> Any:
        return _lookup(old, table, name)

    return __getattr__


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the modules that no longer exist and makes each a stand-in with `moved_attributes`."""

    def __init__(self, tables: Mapping[str, Mapping[str, str]]):
        self.tables = dict(tables)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.tables:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=False)

    def create_module(self, spec) -> types.ModuleType:
        module = types.ModuleType(spec.name, f"Moved: import from `{PUBLIC}` instead (CHANGELOG.md).")
        module.__getattr__ = moved_attributes(spec.name, self.tables[spec.name])  # type: ignore[method-assign]
        return module

    def exec_module(self, module) -> None:
        pass


def install_moved_modules(tables: Mapping[str, Mapping[str, str]]) -> None:
    """Make every old module in `tables` (old module -> {name: module that holds it now}) importable."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules(tables))


def show_deprecations() -> None:
    """Python hides a DeprecationWarning raised outside `__main__`, i.e. in a plugin module: show ours
    once per place, unless the user chose what to do with warnings (-W, PYTHONWARNINGS)."""
    if not sys.warnoptions:
        warnings.filterwarnings("default", category=EvoPaiDeprecationWarning)

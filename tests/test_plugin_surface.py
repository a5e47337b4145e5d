"""Issue 26, parts 1 and 3: `evo_pai.plugin` is the one surface docs and examples import from, every name
in it has a contract, and the version a plugin runs against is said (`--version`, `list --plugin`)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import evo_pai
import evo_pai.core.registry as registry
import evo_pai.plugin as surface
from conftest import ROOT, cli_inproc, tiny_raw
from evo_pai.core.registry import METHOD, PRUNER

PUBLIC = {"evo_pai": {*evo_pai.__all__, "__version__"}, "evo_pai.plugin": set(surface.__all__)}
FROM_IMPORT = re.compile(r"\bfrom\s+(evo_pai[\w.]*)\s+import\s+([\w, ]+)")
PLAIN_IMPORT = re.compile(r"^\s*import\s+(evo_pai[\w.]*)", re.M)


def _python_blocks(text: str) -> list[str]:
    return [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]


def imports_in(path: Path) -> list[tuple[str, str]]:
    """Every (module, name) a doc or example imports from evo-pai (`import evo_pai.x`: name '')."""
    text = path.read_text()
    sources = [text] if path.suffix == ".py" else _python_blocks(text)
    found: list[tuple[str, str]] = []
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:  # a signature shown as a block; its one-line imports are read below
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "evo_pai":
                found += [(node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "evo_pai"]
    if path.suffix == ".md":  # and in the prose: `from evo_pai.x import y` in backticks counts too
        found += [(m, n.strip()) for m, names in FROM_IMPORT.findall(text) for n in names.split(",") if n.strip()]
        found += [(m, "") for m in PLAIN_IMPORT.findall(text)]
    return found


DOCS = sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "examples").glob("*.py")) + [ROOT / "README.md"]


def test_docs_and_examples_import_only_the_public_surface():
    outside, seen = [], 0
    for path in DOCS:
        for module, name in imports_in(path):
            seen += 1
            ok = name in PUBLIC.get(module, ()) if name else module in PUBLIC
            if not ok:
                outside.append(f"{path.relative_to(ROOT)}: from {module} import {name}" if name else
                               f"{path.relative_to(ROOT)}: import {module}")
    assert seen >= 10  # the reader found the imports (a broken reader would pass vacuously)
    assert outside == [], "import these from evo_pai.plugin (or add them to it, with a contract):\n" + "\n".join(outside)


def test_the_reader_sees_imports_in_code_blocks_and_prose(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("Old: `from evo_pai.data import DataSplits`.\n```python\nfrom evo_pai.plugin import (\n"
                   "    MaskSet,\n    prune_to,\n)\nimport evo_pai.search.nsga2\n```\n")
    assert set(imports_in(doc)) == {("evo_pai.data", "DataSplits"), ("evo_pai.plugin", "MaskSet"),
                                    ("evo_pai.plugin", "prune_to"), ("evo_pai.search.nsga2", "")}


def test_every_public_name_has_a_contract_and_is_documented():
    assert list(surface.CONTRACTS) == surface.__all__
    extending = (ROOT / "docs" / "extending.md").read_text()
    for name, contract in surface.CONTRACTS.items():
        assert getattr(surface, name) is not None and len(contract) > 30, name
        assert f"\n{name}\n    {contract}" in surface.__doc__  # help(evo_pai.plugin) shows it
        assert f"`{name}`" in extending or f"{name}(" in extending, f"docs/extending.md never names {name}"


def test_every_registration_decorator_is_public():
    """A new registry's decorator (e.g. a channel criterion's) must reach the surface too."""
    decorators = {n for n in dir(registry) if n.startswith("register_")}
    decorators |= {n for n in evo_pai.__all__ if n.startswith("register_")}
    assert len(decorators) >= 10
    assert decorators <= set(surface.__all__), sorted(decorators - set(surface.__all__))
    for name in decorators:  # the same objects wherever they are imported from
        assert getattr(surface, name) is getattr(registry, name)


def test_the_python_blocks_of_extending_md_run_as_written(tmp_path):
    """Every ```python block executes; the pruner's and the method's examples then run a search."""
    for block in _python_blocks((ROOT / "docs" / "extending.md").read_text()):
        exec(compile(block, "docs/extending.md", "exec"), {})
    assert PRUNER.get("abs_times_fan_in").__code__.co_filename == "docs/extending.md"
    s = evo_pai.run(tiny_raw("oneshot_fan_in", params={"power": 2.0}))
    assert s["sparsity"] == pytest.approx(0.8, abs=0.01) and s["search_model_epochs"] == 0
    assert METHOD.get("two_rounds").evolutionary
    s = evo_pai.run(tiny_raw("two_rounds", params={"first": 0.5}))
    assert s["sparsity"] == pytest.approx(0.8, abs=0.01) and s["search_model_epochs"] == pytest.approx(4 * 1.5)


def test_version_is_semantic_single_sourced_and_in_the_changelog(capsys):
    assert re.fullmatch(r"\d+\.\d+\.\d+", evo_pai.__version__)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = {attr = "evo_pai.__version__"}' in pyproject
    changelog = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## (\d+\.\d+\.\d+)", changelog, re.M)
    assert versions and versions[0] == evo_pai.__version__, "CHANGELOG.md: add a section for the new version"
    code, out, err = cli_inproc(capsys, "--version")
    assert code == 0 and out.strip() == f"evo-pai {evo_pai.__version__}" and not err


def test_list_with_a_plugin_says_the_version_it_runs_against(capsys):
    code, out, _ = cli_inproc(capsys, "list", "--plugin", "byo_plugin")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"evo-pai {evo_pai.__version__} ")
    assert lines[1] == f"plugin byo_plugin: {ROOT / 'tests' / 'byo_plugin.py'}"
    assert "byo_mlp" in out

"""The package's layers stay layers: no import circles, no lower layer importing a higher one.

Walks the `ast` of every module (module-level and function-level imports alike) so that a lazy
import inside a function cannot hide an upward dependency.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "evo_pai"
MAX_LINES = 400

# Lowest first; a module may import its own layer and those below it.
LAYERS = [
    ("core", ["evo_pai.core"]),
    ("data", ["evo_pai.data"]),
    ("models", ["evo_pai.models"]),
    ("deploy", ["evo_pai.deploy"]),
    ("training", ["evo_pai.training"]),
    ("operators", ["evo_pai.operators"]),
    ("search", ["evo_pai.search"]),
    ("evaluation", ["evo_pai.evaluation"]),
    ("plugin", ["evo_pai.plugin"]),  # the public surface for extension authors: re-exports, imports nothing above
    ("runs", ["evo_pai.runs"]),
    ("study", ["evo_pai.study"]),
    ("cli", ["evo_pai.cli", "evo_pai"]),
]

def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(mod: str) -> tuple[int, str]:
    best = None
    for rank, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if mod == prefix or mod.startswith(prefix + "."):
                if best is None or len(prefix) > best[2]:
                    best = (rank, name, len(prefix))
    assert best is not None, f"{mod} is in no layer: add it to LAYERS"
    return best[0], best[1]


def imports_of(mod: str) -> set[str]:
    """Every evo_pai module `mod` imports, anywhere in its body."""
    path = MODULES[mod]
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "evo_pai")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "evo_pai":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in MODULES else target)
    out.discard(mod)
    return {m for m in out if m in MODULES}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_is_in_a_layer_and_small():
    for mod, path in MODULES.items():
        layer_of(mod)
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{mod} has {lines} lines (> {MAX_LINES}): split it by concern"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_module_imports_a_higher_layer(mod):
    rank, name = layer_of(mod)
    for dep in GRAPH[mod]:
        dep_rank, dep_name = layer_of(dep)
        assert dep_rank <= rank, f"{mod} ({name}) imports {dep} ({dep_name}), a higher layer"


def test_no_import_circles():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(GRAPH[m]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_search_never_imports_ray_or_cuda():
    for mod, path in MODULES.items():
        if not mod.startswith("evo_pai.search"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "ray" for a in node.names), f"{mod} imports ray"
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert (node.module or "").split(".")[0] != "ray", f"{mod} imports ray"
                assert not (node.module or "").startswith("torch.cuda"), f"{mod} imports torch.cuda"
            elif isinstance(node, ast.Attribute) and node.attr == "cuda":
                assert not (isinstance(node.value, ast.Name) and node.value.id == "torch"), f"{mod} uses torch.cuda"


def test_importing_the_core_pulls_in_nothing_above_it():
    """A module that only needs a MaskSet must not import Ray, the searches or the evaluators."""
    code = ("import sys, evo_pai.core.masks, evo_pai.core.individual, evo_pai.core.registry; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('evo_pai', 'ray')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out, "the probe printed nothing"
    above = [m for m in out if m.startswith("ray") or layer_of(m)[0] > 0 and m != "evo_pai"]
    assert not above, f"importing the core also imported {above}"


def test_the_folders_are_the_layers():
    """`ls evo_pai` names the layers: no loose modules, every layer a folder, no two modules sharing a name."""
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside a layer folder: {loose}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert set(folders) == {name for name, _ in LAYERS}, f"folders {folders} are not the layers in LAYERS"
    seen: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        assert path.name not in seen, f"{path.relative_to(PACKAGE)} and {seen[path.name].relative_to(PACKAGE)} share a file name"
        seen[path.name] = path


def test_run_study_and_cli_layers_name_no_method():
    """Issue 17: methods declare what the run, study and CLI layers need (core/registry.Method), so
    those layers never name a registered method in a string."""
    import re

    from evo_pai.core.registry import METHOD
    from evo_pai.runs.components import load_builtins

    load_builtins()
    # dense / random / magnitude / set are also plain words (summary keys, fitness names); left out
    names = [n for n in METHOD.names() if n not in {"dense", "random", "magnitude", "set"}]
    assert len(names) >= 10
    quoted = re.compile(r"[\"'](" + "|".join(map(re.escape, names)) + r")[\"']")
    hits = [f"{p.relative_to(PACKAGE.parent)}:{i}" for folder in ("runs", "study", "cli")
            for p in sorted((PACKAGE / folder).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if quoted.search(line)]
    assert hits == []

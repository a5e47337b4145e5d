"""The package's layers stay layers: no import circles, no lower layer importing a higher one.

Walks the `ast` of every module (module-level and function-level imports alike, and
`importlib.import_module` / `__import__` with a string constant) so that neither a lazy import inside a
function nor an import by name can hide an upward dependency. Modules computed at run time (plugins)
are not the package's own dependencies and are not followed.
"""
from __future__ import annotations

import ast
import importlib.util
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


def _callee(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _constant_str(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def imported_names(source: str, mod: str, is_pkg: bool = False) -> set[str]:
    """Every module name `source` (module `mod`) imports, anywhere in its body: `import a.b` (a.b),
    `from a import b` (a.b, and a unless a.b is one of the package's modules), relative imports resolved,
    and `importlib.import_module("a.b")` / `__import__("a.b")` with a string constant (a relative one
    resolved against its `package=`)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.update((sub,) if sub in MODULES else (sub, target))
        elif isinstance(node, ast.Call) and _callee(node.func) in ("import_module", "__import__") and node.args:
            name = _constant_str(node.args[0])
            if name is None:
                continue  # a name computed at run time (plugins): nothing to check here
            if name.startswith("."):
                package = next((_constant_str(k.value) for k in node.keywords if k.arg == "package"),
                               _constant_str(node.args[1]) if len(node.args) > 1 else None)
                if package is None:
                    continue
                name = importlib.util.resolve_name(name, package)
            out.add(name)
    return out


def imports_of(mod: str) -> set[str]:
    """Every evo_pai module `mod` imports, anywhere in its body."""
    path = MODULES[mod]
    names = imported_names(path.read_text(), mod, path.name == "__init__.py")
    return {m for m in names if m in MODULES and m != mod}


def device_or_ray_uses(source: str, mod: str) -> list[str]:
    """What in `source` reaches `ray` or `torch.cuda`: imports of either (however written, import_module
    strings included) and `torch.cuda` as an attribute of any name `torch` is bound to
    (`import torch as t; t.cuda`), or `getattr(torch, "cuda")`."""
    found = sorted(n for n in imported_names(source, mod)
                   if n == "ray" or n.startswith("ray.") or n == "torch.cuda" or n.startswith("torch.cuda."))
    tree = ast.parse(source)
    torch_names = {a.asname or "torch" for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for a in node.names if a.name == "torch" or (a.name.startswith("torch.") and not a.asname)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "cuda" and isinstance(node.value, ast.Name) \
                and node.value.id in torch_names:
            found.append(f"{node.value.id}.cuda (line {node.lineno})")
        elif isinstance(node, ast.Call) and _callee(node.func) == "getattr" and len(node.args) >= 2 \
                and isinstance(node.args[0], ast.Name) and node.args[0].id in torch_names \
                and _constant_str(node.args[1]) == "cuda":
            found.append(f"getattr({node.args[0].id}, 'cuda') (line {node.lineno})")
    return found


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
        if mod.startswith("evo_pai.search"):
            found = device_or_ray_uses(path.read_text(), mod)
            assert found == [], f"{mod} reaches ray or torch.cuda: {found}"


@pytest.mark.parametrize("source", [
    "import ray", "import ray.util", "from ray import get", "import importlib\nimportlib.import_module('ray')",
    "import torch.cuda", "from torch import cuda", "from torch.cuda import is_available",
    "import torch as t\nt.cuda.synchronize()",
    "import torch\ndef f():\n    return torch.cuda.device_count()", "import torch\ngetattr(torch, 'cuda')",
    "__import__('torch.cuda')",
])
def test_the_search_check_sees_ray_and_cuda_however_written(source):
    assert device_or_ray_uses(source, "evo_pai.search.x"), source


def test_the_search_check_leaves_other_uses_alone():
    source = ("import torch\nx = torch.zeros(2)\ny = x.cuda if False else x\n"
              "import importlib\nimportlib.import_module(name)")
    assert device_or_ray_uses(source, "evo_pai.search.x") == []


def test_the_import_walk_sees_import_module_strings():
    """A string import is an import: absolute, relative with package=, inside a function; a computed name is not."""
    source = ("import importlib\n"
              "def late():\n    return importlib.import_module('evo_pai.runs.runner')\n"
              "from importlib import import_module\n"
              "import_module('.study.grid', package='evo_pai')\n"
              "import_module('..cli', 'evo_pai.core')\n"
              "importlib.import_module(name)\n")
    names = imported_names(source, "evo_pai.core.x")
    assert {"evo_pai.runs.runner", "evo_pai.study.grid", "evo_pai.cli"} <= names


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

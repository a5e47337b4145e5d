"""Every error is one line on stderr, exit code 2, no traceback — through the real `python -m evo_pai.cli.app`.

One table of inputs nobody should see a traceback for (usage errors from typer's own click, files,
plugins, reports, values refused before any work), each checked in a subprocess; then the in-process
mechanisms: a user's fitness or mutation that misbehaves, and unexpected exceptions.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, cli_inproc, tiny_raw
from evo_pai.core.errors import EvoPaiError

QUICK = str(ROOT / "configs/quickstart.yaml")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "latin1.yaml").write_bytes("seed: 0\n# caf\xe9 au lait\n".encode("latin-1"))
    (d / "boom_plugin.py").write_text("raise RuntimeError('boom while importing')\n")
    (d / "garbage").mkdir()
    (d / "garbage" / "results.csv").write_bytes(b"\x00\x01 not a csv at all \xff\xfe\n\x00")
    (d / "columns").mkdir()
    (d / "columns" / "results.csv").write_text("name,score\nfoo,1\nbar,2\n")
    (d / "values").mkdir()
    (d / "values" / "results.csv").write_text("label,method,target_sparsity,seed,test_accuracy\n"
                                              "random,random,ninety,0,0.8\n")
    (d / "internal_plugin.py").write_text(
        "from evo_pai import register_method\n"
        "@register_method('explodes')\n"
        "def explodes(exp):\n"
        "    return 1 / 0\n")
    return d


def cli(*args: str, env: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evo_pai", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


# (name, args, needle in the one line); "{d}" is the inputs folder, "{out}" a folder that must never appear
USAGE = [
    ("no argument", ["run"], "Missing argument"),
    ("unknown command", ["foo"], "No such command 'foo'"),
    ("unknown option", ["run", QUICK, "--bogus"], "No such option: --bogus"),
    ("jobs 0", ["study", str(ROOT / "configs/study_smoke.yaml"), "--jobs", "0"], "--jobs"),
    ("not UTF-8", ["run", "{d}/latin1.yaml"], "not UTF-8"),
    ("plugin raises", ["run", QUICK, "--out", "{out}", "--set", "plugins=[boom_plugin]"], "boom_plugin"),
    ("list plugin raises", ["list", "--plugin", "boom_plugin"], "RuntimeError: boom while importing"),
    ("report garbage", ["report", "{d}/garbage"], "results.csv"),
    ("report wrong columns", ["report", "{d}/columns"], "lacks the column(s) label"),
    ("report wrong values", ["report", "{d}/values"], "line 2: target_sparsity is 'ninety'"),
    ("lr inf", ["run", QUICK, "--out", "{out}", "--set", "train.lr=.inf"], "train.lr: Input should be a finite number"),
    ("tau nan", ["run", QUICK, "--out", "{out}", "--set", "search.dg.tau=.nan"], "search.dg.tau"),
    ("huge population", ["run", QUICK, "--out", "{out}", "--set", "search.population=1000000000"], "search.population"),
    ("huge model", ["run", QUICK, "--out", "{out}", "--set", "model.params={hidden: [100000000]}"], "model.params"),
    ("unexpected exception", ["run", QUICK, "--out", "{out}", "--quiet", "--set", "plugins=[internal_plugin]",
                              "--set", "search.method=explodes"], "internal error: ZeroDivisionError"),
]
MID_RUN = {"unexpected exception"}  # fails inside the search: its run folder exists, as it should


@pytest.mark.parametrize("name,args,needle", USAGE, ids=[u[0] for u in USAGE])
def test_every_error_is_one_line_exit_2(files, tmp_path, name, args, needle):
    out = tmp_path / "never"
    args = [a.replace("{d}", str(files)).replace("{out}", str(out)) for a in args]
    r = cli(*args, env={"PYTHONPATH": str(files)})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert out.exists() == (name in MID_RUN)  # the others are refused before any folder is made


def test_debug_env_shows_the_traceback_of_an_unexpected_exception(files, tmp_path):
    r = cli("run", QUICK, "--out", str(tmp_path / "o"), "--quiet", "--set", "plugins=[internal_plugin]", "--set",
            "search.method=explodes", env={"PYTHONPATH": str(files), "EVO_PAI_DEBUG": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("internal error: ZeroDivisionError")


def test_version_and_bare_program():
    r = cli("--version")
    from evo_pai import __version__

    assert r.returncode == 0 and r.stdout.strip() == f"evo-pai {__version__}" and not r.stderr
    r = cli()  # no command: the help, with the usage-error exit code
    assert r.returncode == 2 and "Commands" in r.stdout and "Traceback" not in r.stderr


# -- a user's fitness function or mutation that misbehaves -------------------------------------------
def _register_misbehaving():
    from evo_pai import register_fitness, register_mutation
    from evo_pai.core.masks import MaskSet

    @register_fitness("test_raises")
    def raises(result, mask):
        raise KeyError("no such trait")

    @register_fitness("test_text")
    def text(result, mask):
        return "high"

    @register_fitness("test_vector")
    def vector(result, mask):
        return torch.ones(3)

    @register_mutation("test_dense")
    def dense(ind, step, generator, **_):
        return MaskSet.dense(ind.mask.shapes(), ind.mask.output_layer)

    @register_mutation("test_identity")
    def identity(ind, step, generator, **_):
        return ind.mask  # never advances: caught at the final step, which must land on the target

    @register_mutation("test_list")
    def as_list(ind, step, generator, **_):
        return [ind.mask]


def _tiny_config(tmp_path, **search) -> str:
    raw = tiny_raw("combined", **search)
    raw["search"]["explore_mutation"] = None
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


MISBEHAVING = [
    ({"fitness": "test_raises"}, "fitness 'test_raises' raised KeyError"),
    ({"fitness": "test_text"}, "fitness 'test_text' returned str 'high', not a number"),
    ({"fitness": "test_vector"}, "fitness 'test_vector' returned Tensor"),
    ({"mutation": "test_dense"}, "mutation 'test_dense' returned a mask at sparsity 0 "),
    ({"mutation": "test_identity"}, "but the step asked for exactly the target 0.8"),
    ({"mutation": "test_list"}, "mutation 'test_list' returned list, not a MaskSet"),
]


@pytest.mark.parametrize("search,needle", MISBEHAVING, ids=[next(iter(m[0].values())) for m in MISBEHAVING])
def test_misbehaving_user_function_is_named_in_one_line(tmp_path, capsys, search, needle):
    _register_misbehaving()
    out = tmp_path / "run"
    code, _, err = cli_inproc(capsys, "run", _tiny_config(tmp_path, **search), "--out", str(out), "--quiet")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (out / "summary.json").exists()


def test_mutation_check_rules():
    """The check itself: the built-ins' results pass, wrong layers, shapes and sparsities do not."""
    from evo_pai.core.individual import Individual
    from evo_pai.core.masks import MaskSet
    from evo_pai.operators.variation import PruneStep, dissipating_gradients, random_swap
    from evo_pai.search.mutation_check import check_mutation

    shapes = {"a": (20, 30), "b": (10, 20), "out": (4, 10)}
    gen = torch.Generator().manual_seed(0)
    parent = MaskSet.random(shapes, 0.5, gen, output_layer="out")
    rel = {k: torch.rand(s, generator=gen) for k, s in shapes.items()}
    ind = Individual(parent, {"rel_change": rel, "weight": rel, "grad_accum": rel})
    for step in (PruneStep(0.7, 0.9, False), PruneStep(0.9, 0.9, True)):  # a final step is at the target
        for mode in ("schedule", "threshold"):
            child = dissipating_gradients(ind, step, gen, mode=mode)
            assert check_mutation("dg", parent, child, step) is child
        swapped = random_swap(Individual(child), step, gen)
        assert check_mutation("swap", child, swapped, step) is swapped
    step = PruneStep(0.7, 0.9, False)
    bad = {
        "dense": MaskSet.dense(shapes, "out"),
        "past the target": MaskSet.random(shapes, 0.99, gen, output_layer="out"),
        "missing layer": MaskSet({k: parent[k] for k in ("a", "b")}, None),
        "wrong shape": MaskSet({**dict(parent), "a": torch.ones(30, 20, dtype=torch.bool)}, "out"),
    }
    for why, child in bad.items():
        with pytest.raises(EvoPaiError, match="mutation 'user_op'"):  # noqa: PT012 - one case per key
            check_mutation("user_op", parent, child, step)
    with pytest.raises(EvoPaiError, match="exactly the target"):  # the final step must land on the target
        check_mutation("user_op", parent, parent, PruneStep(0.9, 0.9, True))


# -- refused before any work: the values whose cost is known up front ----------------------------------
def test_memory_estimates_use_no_memory():
    """The model is sized on the meta device: a 7.5e9-parameter MLP is refused without allocating it."""
    from evo_pai.core.config import build_config
    from evo_pai.data.datasets import load_data
    from evo_pai.runs.preflight import check_memory, model_size

    cfg = build_config({"model": {"name": "mlp", "params": {"hidden": [100_000_000]}}})
    data = load_data(cfg.data)
    size = model_size(cfg, data)
    assert size.params == 64 * 10**8 + 10**8 + 10**9 + 10  # digits: 64 inputs, 10 classes
    with pytest.raises(EvoPaiError, match="model.params"):
        check_memory(cfg, size, ram=64 * 2**30)
    small = build_config({"search": {"population": 10**6}})
    size = model_size(small, data)
    check_memory(build_config({}), size, ram=2**30)  # the quick start fits in 1 GB
    with pytest.raises(EvoPaiError, match=r"search.population: 1,000,000 individuals .* about \d"):
        check_memory(small, size, ram=2**30)

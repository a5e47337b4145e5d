"""Every shipped config validates; bad input gives exit 2 and one line, before any work starts."""
from pathlib import Path

import pytest
import yaml

from evo_pai.core.config import load_config
from evo_pai.core.errors import EvoPaiError

from conftest import ROOT, cli_inproc, run_cli

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path):
    from evo_pai.runs.preflight import check_config

    if "sparsities" in yaml.safe_load(path.read_text()):  # a study: every cell must be a valid run
        from evo_pai.study.grid import grid, load_study

        cfgs = [cell.cfg for cell in grid(load_study(path))]
    else:
        cfgs = [load_config(path)]
    assert cfgs
    for cfg in cfgs:
        check_config(cfg)


def test_overrides_are_typed():
    cfg = load_config(ROOT / "configs/quickstart.yaml", ["search.sparsity=0.95", "search.population=3",
                                                         "evaluation.device=cpu", "model.params={hidden: [20]}"])
    assert cfg.search.sparsity == 0.95 and cfg.search.population == 3 and cfg.model.params == {"hidden": [20]}


BAD = [
    (["--set", "search.sparsity=1.0"], "search.sparsity"),
    (["--set", "search.sparsity=-0.1"], "search.sparsity"),
    (["--set", "search.population=0"], "search.population"),
    (["--set", "search.populaton=4"], "search.populaton"),
    (["--set", "search.population=many"], "search.population"),
    (["--set", "nonsense"], "KEY=VALUE"),
    (["--set", "search.method=magic"], "search.method"),
    (["--set", "evaluation.backend=cloud"], "evaluation.backend"),
    (["--set", "data.name=imagenet"], "data.name"),
    (["--set", "model.name=gpt"], "model.name"),
    (["--set", "evaluation.device=tpu"], "evaluation.device"),
    (["--set", "plugins=[no_such_module_xyz]"], "no_such_module_xyz"),
    (["--set", "data.name=fashion_mnist", "--set", "data.root=/nonexistent/fm"], "dataset-fashion-mnist"),
    (["--set", "model.params={depth: 3}"], "model.params"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[b[1] for b in BAD])
def test_bad_input_exit_2_one_line(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    code, _, err = cli_inproc(capsys, "run", str(ROOT / "configs/quickstart.yaml"), "--out", str(out), "--quiet", *args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert not out.exists()  # nothing is written for a rejected input


def test_missing_and_broken_config_files(tmp_path):
    r = run_cli("run", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("search: {method: [kstarts\n")
    r = run_cli("run", str(broken))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    r = run_cli("run", str(listy))
    assert r.returncode == 2 and "mapping" in r.stderr


def test_existing_run_folder_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _, err = cli_inproc(capsys, "run", str(ROOT / "configs/quickstart.yaml"), "--out", str(out), "--quiet")
    assert code == 2 and "--overwrite" in err
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_list_prints_every_kind(capsys):
    code, stdout, _ = cli_inproc(capsys, "list")
    assert code == 0
    for word in ["fitness", "mutation", "crossover", "selection", "method", "model", "dataset", "backend",
                 "dissipating_gradients", "layerwise", "tournament", "kstarts", "fashion_mnist", "local"]:
        assert word in stdout

"""Nothing is created until everything is checked: every refusal below leaves no run or study folder,
and a resume refused for a checkpoint of the wrong shapes leaves the run folder byte for byte."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import evo_pai.runs.runner as runner
from conftest import ROOT, cli_inproc, tiny_raw
from evo_pai.core.config import build_config
from evo_pai.runs.checkpoint import FILENAME
from evo_pai.runs.runner import run_experiment

QUICK = str(ROOT / "configs/quickstart.yaml")

REFUSED = [  # (--set overrides, needle in the one line)
    (["evaluation.backend=ray", "evaluation.num_actors=4096"], "evaluation.num_actors"),
    (["evaluation.backend=ray", "evaluation.cpus_per_actor=4096"], "evaluation.cpus_per_actor"),
    (["evaluation.backend=vectorized", "model.name=resnet20", "data.name=synthetic",
      "data.params={dim: 3}"], "model 'resnet20'"),
    (["masks.include=[stages.*.bn9.weight]", "model.name=resnet20"], "masks.include"),
    (["evaluation.backend=vectorized", "evaluation.max_memory_gb=0.000001"], "evaluation.max_memory_gb"),
    (["search.fitness_params={beta: 2}"], "search.fitness_params"),
    (["search.explore_mutation=nope"], "search.explore_mutation"),
    (["search.mutation_params={colour: 1}"], "search.mutation_params"),
    (["search.explore_mutation=dissipating_gradients", "search.explore_params={colour: 1}"], "search.explore_params"),
    (["search.params={extra_epochs: -1}"], "search.params.extra_epochs"),
    (["search.method=imp", "search.params={prune_fraction: 1.5}"], "search.params.prune_fraction"),
    (["evaluation.device=cuda:7"], "evaluation.device"),
]


@pytest.mark.parametrize("sets,needle", REFUSED, ids=[r[1] for r in REFUSED])
def test_refused_before_the_run_folder_exists(tmp_path, capsys, sets, needle):
    if needle == "evaluation.device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "run"
    args = [x for s in sets for x in ("--set", s)]
    code, _, err = cli_inproc(capsys, "run", QUICK, "--out", str(out), "--quiet", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not out.exists()


def test_tensorboard_missing_is_refused_with_the_install_line(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith(("tensorboard.", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails: as if not installed
    out = tmp_path / "run"
    code, _, err = cli_inproc(capsys, "run", QUICK, "--out", str(out), "--quiet", "--set", "logging.tensorboard=true")
    assert code == 2 and "pip install 'evo-pai[tensorboard]'" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def study_file(tmp_path: Path, **over) -> Path:
    raw = {"name": "s", "sparsities": [0.8], "seeds": [0], "methods": ["random", "kstarts"],
           "base": {"data": {"name": "synthetic", "params": {"n_train": 200, "n_test": 100, "dim": 8, "classes": 3}},
                    "model": {"name": "mlp", "params": {"hidden": [16]}}, "final": {"epochs": 1},
                    "search": {"population": 2, "burst_epochs": 0.5}}}
    raw.update(over)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


STUDY_REFUSED = [
    ({"methods": ["random", {"name": "wide", "method": "random", "set": {"model.params": {"depth": 3}}}]}, "model.params"),
    ({"methods": ["random", {"name": "huge", "method": "random", "set": {"model.params": {"hidden": [10**10]}}}]},
     "model.params"),
    ({"methods": ["random", "nope"]}, "unknown method 'nope'"),
    ({"predictiveness": {"method": "missing_row", "sparsities": [0.8], "seeds": [0]}}, "predictiveness.method"),
    ({"predictiveness": {"method": "kstarts", "sparsities": [0.8], "seeds": [0], "fitnesses": ["nope"]}},
     "unknown fitness 'nope'"),
    ({"sparsities": [0.8, float("nan")]}, "sparsities"),
    ({"methods": [{"name": "k", "method": "kstarts", "set": {"search.fitness_params": {"beta": 1}}}]},
     "search.fitness_params"),
    ({"methods": [{"name": "i", "method": "imp", "set": {"search.params.round_epochz": 3}}]},
     "search.params.round_epochz"),
]


@pytest.mark.parametrize("over,needle", STUDY_REFUSED, ids=[f"{i}-{r[1]}" for i, r in enumerate(STUDY_REFUSED)])
def test_study_refused_before_its_folder_exists(tmp_path, capsys, over, needle):
    out = tmp_path / "studies" / "s"
    code, _, err = cli_inproc(capsys, "study", str(study_file(tmp_path, **over)), "--out", str(out))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not out.exists() and not (tmp_path / "studies").exists()


def test_study_where_every_cell_fails_says_why_and_writes_errors_txt(tmp_path):
    (tmp_path / "broken_method.py").write_text(
        "from evo_pai import register_method\n"
        "@register_method('broken')\n"
        "def broken(exp):\n"
        "    raise ValueError('this method is broken')\n")
    path = study_file(tmp_path, methods=["broken", {"name": "broken2", "method": "broken"}], sparsities=[0.5, 0.8])
    raw = yaml.safe_load(path.read_text())
    raw["base"]["plugins"] = ["broken_method"]
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "s"
    r = subprocess.run([sys.executable, "-m", "evo_pai", "study", str(path), "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert lines[-1].startswith("error: study 's': every cell failed; the first: broken-s0.5-seed0") \
        and "ValueError: this method is broken" in lines[-1] and "Traceback" not in r.stderr, r.stderr
    assert len((out / "errors.txt").read_text().splitlines()) == 4
    progress = [line for line in lines if "FAILED" in line]
    assert len(progress) == 4 and all(line[0] == "[" and line[9] == "]" for line in progress)  # [HH:MM:SS]
    assert "(1/4, ETA " in progress[0] and progress[-1].endswith("(4/4)")


# -- resume of a checkpoint with the wrong shapes -------------------------------------------------
def test_resume_with_wrong_tensor_shapes_changes_nothing(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    cfg = build_config(tiny_raw())
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tiny_raw()))
    real, calls = runner.save_checkpoint, []

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt  # the driver stops right after generation 0's checkpoint

    with monkeypatch.context() as m:
        m.setattr(runner, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, run)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run / FILENAME), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in tensors if k.endswith("/mask/0"))
    tensors[key] = torch.ones(3, 5, dtype=torch.uint8)  # a checkpoint from another model
    save_file(tensors, str(run / FILENAME), metadata=meta)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    code, _, err = cli_inproc(capsys, "resume", str(run), "--quiet")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "mask layer" in lines[0] and "(3, 5) but the run's model has (32, 16)" in lines[0], err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == before

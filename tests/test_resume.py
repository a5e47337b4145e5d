"""Resumable searches: a driver killed with SIGKILL mid-search, then `evo-pai resume RUN_DIR`, ends with
the summary of an uninterrupted run (timing fields aside); bad checkpoints are refused cleanly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, crash_after, tiny_raw, whole_and_interrupted, without_timing
from evo_pai.runs.checkpoint import FILENAME, load_checkpoint
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.runs.runner import run_experiment

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every process: identical floats


pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evo_pai", *args, "--quiet"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


def records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_seconds"}
            for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    """combined on digits, 7 generations of about half a second each. A tiny max_step_fraction makes DG
    leave elites unchanged, so later generations hit the result cache across the checkpoint."""
    raw = {"seed": 3, "data": {"name": "digits"}, "model": {"name": "mlp", "params": {"hidden": [64, 32]}},
           "search": {"method": "combined", "sparsity": 0.9, "population": 6, "generations": 7, "burst_epochs": 2,
                      "initial_sparsity": 0.5, "dg": {"max_step_fraction": 1e-6}},
           "train": {"lr": 0.005, "batch_size": 64}, "final": {"epochs": 2}, "evaluation": {"device": "cpu"}}
    path = tmp_path_factory.mktemp("cfg") / "combined.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_killed_driver_then_resume_matches_uninterrupted_run(config_file, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert cli("run", str(config_file), "--out", str(whole)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "evo_pai", "run", str(config_file), "--out", str(broken),
                             "--quiet"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = broken / "log.jsonl"
    deadline = time.time() + 240
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):  # generation 2 done: mid-search
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (broken / "summary.json").exists() and (broken / FILENAME).exists()
    (broken / f".{FILENAME}.tmp").write_bytes(b"half-written")  # a crash during a checkpoint write
    done = cli("resume", str(broken))
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    a = json.loads((whole / "summary.json").read_text())
    b = json.loads((broken / "summary.json").read_text())
    assert a["cache_hits"] > 0  # the restored cache keys were exercised
    assert without_timing(a) == without_timing(b)
    assert records(whole) == records(broken)
    assert MaskSet.load(whole / "mask.safetensors") == MaskSet.load(broken / "mask.safetensors")


@pytest.fixture
def interrupted_run(tmp_path, monkeypatch) -> Path:
    """A run folder whose search stopped after generation 0's checkpoint (in-process, for speed)."""
    (tmp_path / "run").mkdir()
    with monkeypatch.context() as m:
        crash_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(build_config(tiny_raw()), tmp_path / "run")
    return tmp_path / "run"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("damage", ["truncated", "foreign", "config_edited"])
def test_bad_checkpoint_exit_2_one_line_folder_unchanged(interrupted_run, damage):
    ckpt = interrupted_run / FILENAME
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: len(ckpt.read_bytes()) // 2])
    elif damage == "foreign":
        from safetensors.torch import save_file
        import torch

        save_file({"weight": torch.zeros(3)}, str(ckpt))
    else:
        cfg = interrupted_run / "config.yaml"
        cfg.write_text(cfg.read_text().replace("seed: 0", "seed: 1"))
    before = snapshot(interrupted_run)
    r = cli("resume", str(interrupted_run))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint") and "Traceback" not in r.stderr, r.stderr
    assert snapshot(interrupted_run) == before


def test_resume_in_process_equals_uninterrupted(interrupted_run, tmp_path):
    """The same guarantee without a subprocess; also the tiny synthetic config's summary."""
    cfg = build_config(tiny_raw())
    (tmp_path / "whole").mkdir()
    whole = run_experiment(cfg, tmp_path / "whole")
    resumed = run_experiment(cfg, interrupted_run, resume=load_checkpoint(interrupted_run / FILENAME, cfg))
    assert without_timing(whole) == without_timing(resumed)


def test_dissipating_resumes_from_its_epoch_checkpoint(tmp_path, monkeypatch):
    cfg = build_config(tiny_raw("dissipating", dg={"epochs": 3}))
    whole, ckpt = whole_and_interrupted(cfg, tmp_path, monkeypatch, 2)
    assert ckpt.generation == 1 and ckpt.state["state"] is not None
    resumed = run_experiment(cfg, tmp_path / "run", resume=ckpt)
    assert without_timing(whole) == without_timing(resumed)


def test_refusals(interrupted_run, tmp_path):
    with pytest.raises(EvoPaiError, match="corrupt"):
        bad = tmp_path / FILENAME
        bad.write_bytes(b"\x00" * 16)
        load_checkpoint(bad, build_config(tiny_raw()))
    r = cli("resume", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "not a run folder" in r.stderr
    r = cli("resume", str(interrupted_run), "--set", "search.sparsity=0.5")
    assert r.returncode == 2 and "only evaluation.*" in r.stderr
    # where it runs may change: the checkpoint is checked against everything but `evaluation`
    load_checkpoint(interrupted_run / FILENAME, build_config({**tiny_raw(), "evaluation": {"backend": "ray"}}))

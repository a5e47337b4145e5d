"""Shared fixtures: tiny configs that run in seconds on 2 CPU cores."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evo_pai.core.config import build_config
from evo_pai.runs.components import load_components

ROOT = Path(__file__).resolve().parents[1]

load_components()


def tiny_raw(method: str = "combined", **search) -> dict:
    return {
        "seed": 0,
        "data": {"name": "synthetic", "params": {"n_train": 400, "n_test": 200, "dim": 16, "classes": 4}},
        "model": {"name": "mlp", "params": {"hidden": [32, 16]}},
        "search": {"method": method, "sparsity": 0.8, "population": 4, "generations": 3, "burst_epochs": 1,
                   "initial_sparsity": 0.4, **search},
        "train": {"lr": 0.01, "batch_size": 32},
        "final": {"epochs": 2},
    }


@pytest.fixture
def tiny_cfg():
    return build_config(tiny_raw())


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evo_pai", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def cli_inproc(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI's `main()` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from evo_pai.cli.app import main

    old = sys.argv
    sys.argv = ["evo-pai", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """GPU tests are collected everywhere and skipped, with the reason, where torch sees no CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run `python -m pytest -m gpu` on a GPU machine (docs/gpu.md)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def crash_after(monkeypatch, n: int) -> None:
    """Fault injection: the process 'dies' (KeyboardInterrupt) right after the n-th checkpoint write."""
    import evo_pai.runs.runner as runner

    real, calls = runner.save_checkpoint, []

    def save_then_crash(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "save_checkpoint", save_then_crash)


def assert_same_training(a, b, tol: float = 1e-10) -> None:
    """Two BurstResults of one task on two backends: weights, optimizer state and val loss within `tol`."""
    for k in a.state:
        assert float((a.state[k] - b.state[k]).abs().max()) <= tol, k
    for name in a.opt_state:
        for key in a.opt_state[name]:
            assert float((a.opt_state[name][key].double() - b.opt_state[name][key].double()).abs().max()) <= tol
    assert abs(a.metrics["val_loss"] - b.metrics["val_loss"]) <= tol


def search_outcome(raw: dict):
    """(SearchOutcome, generation log records) of the config's method on a fresh evaluator."""
    from evo_pai.core.registry import METHOD
    from evo_pai.data.datasets import load_data
    from evo_pai.evaluation.base import make_evaluator
    from evo_pai.runs.runner import seed_everything
    from evo_pai.search.experiment import Experiment

    cfg = build_config(raw)
    data = load_data(cfg.data)
    seed_everything(cfg.seed)
    records: list[dict] = []
    with make_evaluator(cfg, data) as ev:
        outcome = METHOD.get(cfg.search.method)(Experiment(cfg, ev, data, log=records.append))
    return outcome, records


TIMING = {"search_seconds", "final_seconds", "wall_seconds"}


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING}


def whole_and_interrupted(cfg, tmp_path: Path, monkeypatch, n: int):
    """(summary of an uninterrupted run in tmp_path/whole, checkpoint of the same run killed right after
    its n-th checkpoint in tmp_path/run): the two halves of every resume-equals-uninterrupted test."""
    from evo_pai.runs.checkpoint import FILENAME, load_checkpoint
    from evo_pai.runs.runner import run_experiment

    for name in ("whole", "run"):
        (tmp_path / name).mkdir()
    whole = run_experiment(cfg, tmp_path / "whole")
    with monkeypatch.context() as m:
        crash_after(m, n)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, tmp_path / "run")
    return whole, load_checkpoint(tmp_path / "run" / FILENAME, cfg)


@pytest.fixture(scope="module")
def local_ray(one_thread):
    """A Ray instance on this machine for the in-process tests of a module; the evaluator reuses it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny models on a shared 2-core machine run much faster on one,
    and it is what a 1-CPU Ray actor uses (identical floats)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Pairs(torch.utils.data.Dataset):
    """A map-style Dataset of (x, label) pairs, labels as Python ints."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])

"""The default torch thread count: usable CPUs (affinity, cgroup quota), work per step, load; and the
ways to fix it (train.threads, --threads, OMP_NUM_THREADS). No timing is asserted here
(benchmarks/threads.py measures; tests/test_benchmarks.py runs its --quick mode)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import ROOT, run_cli, tiny_raw
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.runs.progress import RunProgress
from evo_pai.runs.runner import run_experiment
from evo_pai.training.threads import (ThreadChoice, ThreadGovernor, auto_threads, cgroup_cpu_quota, choose_threads,
                                      fit_threads, usable_cpus)

BURN = "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def test_small_models_train_on_one_thread_whatever_the_cpus():
    assert auto_threads(4e7, cpus=16, busy=0.0).threads == 1
    assert "small model" in auto_threads(4e7, cpus=16, busy=0.0).reason
    assert auto_threads(1e12, cpus=1).reason == "auto: 1 CPU available"


def test_bigger_models_use_the_cpus_other_processes_leave_free():
    assert auto_threads(2e8, cpus=2, busy=0.0).threads == 2  # LeNet-300-100 on 28x28 at batch 128
    assert auto_threads(2e8, cpus=2, busy=1.0).threads == 1  # one other process on one of two cores
    assert auto_threads(6e10, cpus=8, busy=3.0).threads == 5
    assert auto_threads(3e8, cpus=8, busy=0.0).threads == 3  # one thread per 1e8 FLOPs of work per step
    assert fit_threads(4, 4, 3.9) == 1 and fit_threads(4, 4, 0.5) == 3 and fit_threads(4, 4, 0.2) == 4


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 0.5


@pytest.mark.skipif(not shutil.which("taskset"), reason="taskset (util-linux) not installed")
def test_affinity_limits_the_usable_cpus():
    code = "from evo_pai.training.threads import usable_cpus, auto_threads; print(usable_cpus(), auto_threads(1e12).threads)"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_configured_threads_win_then_the_callers_then_the_environment(monkeypatch):
    model = torch.nn.Linear(4, 2)
    assert choose_threads(3, model, (4,), 8, default=2) == ThreadChoice(3, "train.threads")
    assert choose_threads(None, model, (4,), 8, default=2) == ThreadChoice(2, "set by the caller")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert choose_threads(None, model, (4,), 8) == ThreadChoice(4, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert choose_threads(None, model, (4,), 8).reason.startswith("auto: small model")


def test_train_threads_is_validated_and_auto_means_none():
    assert build_config({"train": {"threads": "auto"}}).train.threads is None
    for bad in [0, -1, True, 1.5, "two"]:
        with pytest.raises(EvoPaiError, match="train.threads"):
            build_config({"train": {"threads": bad}})


class ThreadsSeen(RunProgress):
    """The torch thread count at every finished task and final epoch of a run."""

    def __init__(self):
        self.seen: list[int] = []

    def advance(self, n: int = 1) -> None:
        self.seen.append(torch.get_num_threads())

    def epoch(self, done: int, total: int) -> None:
        self.seen.append(torch.get_num_threads())


def test_a_run_uses_the_choice_reports_it_and_gives_the_callers_threads_back(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's count: not the run's choice, so a run that kept it would show
    try:
        seen = ThreadsSeen()
        summary = run_experiment(build_config({**tiny_raw("kstarts"), "train": {**tiny_raw()["train"], "threads": 1}}),
                                 None, seen)
        assert summary["threads"] == {"count": 1, "reason": "train.threads", "adjusted": []}
        assert len(seen.seen) == 4 + 2 and set(seen.seen) == {1}  # 4 bursts, 2 final epochs: all on one thread
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cli_threads_option_on_run_and_resume(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw("kstarts")))
    proc = run_cli("run", str(cfg), "--out", str(tmp_path / "run"), "--threads", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["threads"]["count"] == 1 and summary["threads"]["reason"] == "train.threads"
    assert "torch threads" in proc.stdout
    bad = run_cli("run", str(cfg), "--out", str(tmp_path / "run2"), "--threads", "0")
    assert bad.returncode == 2 and "train.threads" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "run" / "summary.json").unlink()  # pretend it was interrupted: resume may change the threads
    again = run_cli("resume", str(tmp_path / "run"), "--threads", "2", "--quiet")
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["threads"] == 2


def test_governor_drops_threads_when_other_processes_take_the_cpus():
    if usable_cpus() < 2:
        pytest.skip("needs 2 usable CPUs")
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(usable_cpus())]
    before = torch.get_num_threads()
    try:
        gov = ThreadGovernor(ThreadChoice(2, "auto: test", limit=2))
        gov.CHECK_SECONDS = 0.5
        torch.set_num_threads(2)
        deadline = time.time() + 30
        while gov.threads == 2 and time.time() < deadline:
            time.sleep(0.6)
            gov.check()
        assert gov.threads == 1 and gov.changes and gov.changes[-1][1] == 1
        assert torch.get_num_threads() == 1
    finally:
        for p in burners:
            p.kill()
            p.wait()
        torch.set_num_threads(before)

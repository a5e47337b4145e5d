"""The benchmark scripts run (--quick, one round) and print their ratios. No timing is asserted."""
from __future__ import annotations

import re
import subprocess
import sys

from pathlib import Path

import pytest

from conftest import ROOT

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist/")

EXPECTED = {
    "population_throughput.py": r"ratio speedup mlp K=8: \d+\.\d+x",  # default models; the plugin ones: --models
    "efficiency.py": r"ratio efficiency vectorized K=16: \d+%",
    "overhead.py": r"ratio overhead framework/hand_loop: \d+\.\d+",
    "threads.py": r"ratio default/best loaded quickstart \(digits, LeNet-300-100\): \d+\.\d+",
    "inference.py": r"ratio speedup compact/dense structured 0\.98 b1: \d+\.\d+x",
    "structured_speed.py": r"ratio speedup pruned/dense resnet20 2x random b64 t\d+: \d+\.\d+x(.|\n)*"
                           r"ratio speedup pruned/dense vgg16 4x uniform b64 t\d+: \d+\.\d+x",
    "data_cost.py": r"ratio augmented/plain LeNet-5 .*: \d+\.\d+\n(.|\n)*ratio stream_w2/memory .*: \d+\.\d+"
                    r"(.|\n)*ratio stream_w2_restart/stream_w2: \d+\.\d+(.|\n)*ratio RSS growth/on-disk size",
}


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_quick_mode_prints_ratios(script):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--repeats", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(EXPECTED[script], proc.stdout), proc.stdout


def test_gpu_check_smoke_runs_every_section(tmp_path):
    """benchmarks/gpu_check.py --smoke: every section at tiny sizes on this CPU (Ray included), both
    report files written. Keeps the prepared GPU check working; it measures nothing about GPUs."""
    import json
    import os

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    sections = report["sections"]
    assert {n: s["status"] for n, s in sections.items()} == {n: "ok" for n in
                                                            ["environment", "agreement", "throughput", "runs", "precision", "ray"]}
    assert sections["agreement"]["result"]["met"]  # CPU vs CPU here: exactly equal
    rows = sections["throughput"]["result"]["rows"]
    assert [(r["model"], r["K"], r["status"]) for r in rows] == [("mlp", 1, "ok"), ("mlp", 2, "ok"), ("conv4", 2, "ok"),
                                                                     ("resnet20", 2, "ok")]
    assert all(r["model_epochs_per_s"] > 0 and r["achieved_tflops"] > 0 for r in rows)
    assert set(sections["precision"]["result"]) >= {"fp32", "tf32", "bf16"}
    md = (tmp_path / "gpu_report.md").read_text()
    assert "--smoke: tiny sizes, not a GPU measurement" in md and "## throughput — ok" in md


def test_gpu_check_without_gpu_asks_for_smoke(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "run with --smoke" in proc.stderr

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
    "population_throughput.py": r"ratio speedup mlp K=8: \d+\.\d+x",
    "efficiency.py": r"ratio efficiency vectorized K=16: \d+%",
    "overhead.py": r"ratio overhead framework/hand_loop: \d+\.\d+",
    "inference.py": r"ratio speedup compact/dense structured 0\.98 b1: \d+\.\d+x",
}


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_quick_mode_prints_ratios(script):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--repeats", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(EXPECTED[script], proc.stdout), proc.stdout

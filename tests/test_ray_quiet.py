"""A Ray that evo-pai starts listens only on loopback and serves no metrics; a healthy Ray run prints
nothing of Ray's; a real fault is reported once, in our words (real Ray, no mocks)."""
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

from conftest import ROOT, tiny_raw

pytest.importorskip("ray")

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
RAY_CHATTER = ["(raylet)", "Token authentication", "running far longer", "killed by `ray.kill`", "WARNING",
               "Traceback", "\x1b["]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def ray_raw(**evaluation) -> dict:
    raw = tiny_raw(population=4, generations=2, burst_epochs=1)
    raw["evaluation"] = {"backend": "ray", "num_actors": 2, "cpus_per_actor": 1, **evaluation}
    return raw


def test_local_ray_listens_on_loopback_only_and_serves_no_metrics():
    probe = subprocess.run([sys.executable, str(ROOT / "tests" / "ray_listen_probe.py"), json.dumps(ray_raw())],
                           cwd=ROOT, capture_output=True, text=True, timeout=240, env=ENV)
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["device"].startswith("ray: 2 actors")
    processes = {s["process"] for s in report["listening"]}
    assert any("gcs_server" in p for p in processes) and any("raylet" in p for p in processes), processes
    public = [s for s in report["listening"] if s["ip"] not in LOOPBACK]
    assert not public, f"Ray sockets on non-loopback addresses: {public}"
    assert report["metrics"] == [], f"a Prometheus endpoint answers on port(s) {report['metrics']}"
    assert report["fixed_ports"] == [], f"Ray's metrics/dashboard ports are open: {report['fixed_ports']}"
    for text in RAY_CHATTER[:3]:
        assert text not in probe.stdout + probe.stderr, (text, probe.stderr[-2000:])


def run_cli(tmp_path: Path, raw: dict, during=None) -> tuple[subprocess.Popen, str, str]:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out, err = open(tmp_path / "out.txt", "w"), open(tmp_path / "err.txt", "w")
    run = subprocess.Popen([sys.executable, "-m", "evo_pai", "run", str(cfg), "--out", str(tmp_path / "run"),
                            "--quiet"], cwd=ROOT, env=ENV, stdout=out, stderr=err)
    if during:
        during(run)
    run.wait(timeout=300)
    return run, (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()


def test_healthy_ray_run_prints_nothing_of_rays(tmp_path):
    run, out, err = run_cli(tmp_path, ray_raw())
    assert run.returncode == 0, err[-3000:]
    assert "evo-pai run" in out and err == "", err
    for text in RAY_CHATTER:
        assert text not in out, (text, out[-2000:])


def actor_pids(root: int) -> list[int]:
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
    import psutil

    found = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            if "BurstWorker" in " ".join(p.cmdline()):
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def test_actor_killed_is_reported_once_in_our_words(tmp_path):
    """max_retries=0: an actor SIGKILLed mid-search is gone for good; the run finishes on the other actor,
    says so in one line of its own and shows none of Ray's raylet lines."""
    raw = ray_raw(max_retries=0)
    raw["search"].update(generations=3)
    raw["data"]["params"]["n_train"] = 4000  # bursts long enough to be killed mid-way
    log = tmp_path / "run" / "log.jsonl"
    killed: list[int] = []

    def kill_one(run: subprocess.Popen) -> None:
        deadline = time.time() + 240
        while not (log.exists() and log.read_text().strip()) and run.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        pids = actor_pids(run.pid)
        if pids:
            killed.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)

    run, out, err = run_cli(tmp_path, raw, kill_one)
    assert killed, "no actor process found"
    assert run.returncode == 0, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("Ray: actor")]
    assert len(ours) == 1 and "lost" in ours[0], err
    for text in ["(raylet)", "\x1b[", "Traceback", "killed by `ray.kill`"]:
        assert text not in out + err, (text, (out + err)[-2000:])

"""The Ray backend on real Ray clusters (no mocks): agreement with the local backend, a two-node
cluster started with `ray start`, actors killed mid-generation, and the quick benchmark.

Float results depend on the thread count, so the local reference runs with one torch thread,
like the 1-CPU actors; masks must then be identical and metrics equal within 1e-6. Those tests pin
the actors to the sequential trainer (the local backend's arithmetic); actors with the vectorized
trainer are checked in float64, where batched and one-by-one training agree to 1e-10.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, tiny_raw
from evo_pai.core.config import build_config
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import make_evaluator
from evo_pai.search.experiment import Experiment
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.core.registry import METHOD
from evo_pai.training.tasks import BurstTask
from evo_pai.runs.runner import run_experiment, seed_everything

ray = pytest.importorskip("ray")

TOL = 1e-6  # local (1 thread) vs Ray actors (1 CPU each): measured bitwise equal; allowed slack


def raw_config(**evaluation) -> dict:
    raw = tiny_raw(population=6, generations=3, burst_epochs=2)
    raw["data"]["params"] = {"n_train": 1500, "n_test": 200, "dim": 16, "classes": 4}
    raw["evaluation"] = {"backend": "ray", "num_actors": 2, "cpus_per_actor": 1, "actor_trainer": "sequential",
                         **evaluation}
    return raw


def local_config() -> dict:
    raw = raw_config()
    raw["evaluation"] = {"backend": "local", "device": "cpu"}
    return raw


@pytest.fixture(scope="module")
def reference(one_thread, tmp_path_factory):
    """The undisturbed local run: summary and winning mask."""
    out = tmp_path_factory.mktemp("local")
    summary = run_experiment(build_config(local_config()), out)
    return summary, MaskSet.load(out / "mask.safetensors")


def search(cfg, on_progress=None):
    """The combined search on a fresh evaluator; on_progress(evaluator, tasks_done) can inject faults."""
    data = load_data(cfg.data)
    seed_everything(cfg.seed)
    records: list[dict] = []
    with make_evaluator(cfg, data) as ev:
        exp = Experiment(cfg, ev, data, log=records.append)
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            if on_progress:
                on_progress(ev, done[0])

        exp.progress = progress
        outcome = METHOD.get("combined")(exp)
        return outcome.mask, exp, {"live_actors": getattr(ev, "live_actors", None),
                                    "failures": list(getattr(ev, "failures", [])), "records": records}


def close(a: dict, b: dict, keys) -> None:
    for k in keys:
        assert abs(a[k] - b[k]) <= TOL, (k, a[k], b[k])


def test_ray_backend_matches_local(local_ray, reference, tmp_path):
    ref, ref_mask = reference
    summary = run_experiment(build_config(raw_config()), tmp_path)
    assert MaskSet.load(tmp_path / "mask.safetensors") == ref_mask
    close(summary, ref, ["test_accuracy", "test_loss", "val_accuracy", "sparsity"])
    for k in ["search_model_epochs", "cache_hits", "fitness_failures", "generations_logged", "layer_sparsity"]:
        assert summary[k] == ref[k], k
    assert summary["device"].startswith("ray: 2 actors x cpu") and "sequential trainer" in summary["device"]


def float64(raw: dict) -> dict:
    raw["train"] = {**raw["train"], "dtype": "float64"}
    return raw


def test_vectorized_actors_match_local_float64(local_ray):
    """Each actor trains its share of the population in one batched pass; a search gives the local
    backend's mask and metrics (float64: batched == one by one to 1e-10)."""
    local_mask, _, local_info = search(build_config(float64(local_config())))
    cfg = build_config(float64(raw_config(actor_trainer="auto")))  # auto: an mlp is batched
    data = load_data(cfg.data)
    records: list[dict] = []
    with make_evaluator(cfg, data) as ev:
        assert ev.trainer == "vectorized" and "vectorized trainer" in ev.device_name
        assert [len(u) for u in ev._units(6)] == [3, 3]  # one share per actor
        exp = Experiment(cfg, ev, data, log=records.append)
        seed_everything(cfg.seed)
        mask = METHOD.get("combined")(exp).mask
    assert mask == local_mask
    a, b = records, local_info["records"]
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert abs(x["best_fitness"] - y["best_fitness"]) <= 1e-10, (x, y)


@pytest.mark.parametrize("trainer", ["sequential", "vectorized"])
def test_rigl_on_ray_actors_matches_local(local_ray, trainer):
    """The dynamic run (the final training of `rigl`) runs on an actor: the same last mask and numbers."""
    def rigl(evaluation: dict) -> dict:
        raw = tiny_raw("rigl")
        raw["evaluation"] = evaluation
        return raw

    ref = run_experiment(build_config(rigl({"backend": "local", "device": "cpu"})), None)
    got = run_experiment(build_config(rigl({"backend": "ray", "num_actors": 1, "cpus_per_actor": 1,
                                            "actor_trainer": trainer})), None)
    close(got, ref, ["test_accuracy", "test_loss", "val_accuracy", "sparsity", "mask_turnover"])
    assert got["mask_updates"] == ref["mask_updates"] > 0 and got["layer_sparsity"] == ref["layer_sparsity"]


def test_vectorized_actor_killed_mid_share_is_retried(local_ray):
    """SIGKILL an actor while it trains its share: Ray restarts it and re-runs the whole share."""
    cfg = build_config(float64(raw_config(actor_trainer="vectorized", max_retries=1)))
    ref_mask, _, _ = search(build_config(float64(local_config())))
    data = load_data(cfg.data)
    killed: list[int] = []
    with make_evaluator(cfg, data) as ev:
        pids = ev.actor_pids()  # before any work: pid() would wait behind a running share
        exp = Experiment(cfg, ev, data)

        def kill(n: int) -> None:
            running = [a for a, u, _ in ev._inflight.values() if u is not None]
            if not killed and running:  # one share finished, the other still training
                killed.append(pids[running[0]])
                os.kill(killed[0], signal.SIGKILL)

        exp.progress = kill
        seed_everything(cfg.seed)
        mask = METHOD.get("combined")(exp).mask
        assert killed and ev.live_actors == 2 and ev.actor_pids()[pids.index(killed[0])] != killed[0]
    assert mask == ref_mask and exp.fitness_failures == []


def test_killed_actor_restarts_then_dead_actor_tasks_move(local_ray, reference):
    """max_retries=1: the first kill is absorbed by Ray (restart + task retry); the second kill of the
    same actor exhausts its restarts, so its tasks are resubmitted to the live actor."""
    ref_mask = reference[1]
    k = 6  # population
    pids: list[int] = []

    def kill(ev, done: int) -> None:
        if done > k and not pids:  # generation 1, both actors busy
            pids.append(ev.actor_pids()[0])
            os.kill(pids[0], signal.SIGKILL)
        elif done > 2 * k and len(pids) == 1:  # generation 2: the restarted process
            pids.append(ray.get(ev.actors[0].pid.remote()))
            os.kill(pids[1], signal.SIGKILL)

    mask, exp, ev = search(build_config(raw_config(max_retries=1)), kill)
    assert len(pids) == 2 and pids[0] != pids[1], "Ray restarted the first killed actor in a new process"
    assert mask == ref_mask, "same winning mask as the undisturbed run"
    assert exp.fitness_failures == []
    assert ev["live_actors"] == 1 and len(ev["failures"]) == 1  # the twice-killed actor was given up


def test_retries_exhausted_gives_worst_fitness_with_cause(local_ray):
    killed: list[int] = []

    def kill(ev, done: int) -> None:
        if done > 6 and not killed:
            killed.append(ev.actor_pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    raw = raw_config(max_retries=0)
    raw["search"]["generations"] = 2
    mask, exp, ev = search(build_config(raw), kill)
    assert killed and ev["live_actors"] == 1
    causes = [f["reason"] for f in exp.fitness_failures]
    assert causes and all("Ray actor" in c for c in causes), causes
    assert mask.sparsity() == pytest.approx(0.8, abs=0.01)  # the search still finished


# -- GPUs asked for on a cluster without any: the CPU-only fall-back ----------------------------------
def test_gpus_asked_for_on_a_cpu_cluster_is_one_line_error(local_ray):
    """A real local Ray cluster with no GPUs: an explicit GPU share is refused, never run on CPU silently."""
    for evaluation, match in [({"gpus_per_actor": 0.25}, "0.25 GPU per actor asked for but the Ray cluster has 0"),
                              ({"device": "cuda"}, "1 GPU per actor asked for but the Ray cluster has 0")]:
        cfg = build_config(raw_config(**evaluation))
        with pytest.raises(EvoPaiError, match=f"^evaluation.gpus_per_actor: {match}") as exc:
            make_evaluator(cfg, load_data(cfg.data))
        assert "\n" not in str(exc.value)
    assert ray.is_initialized()  # the caller's Ray is left as it was


def test_device_auto_without_gpus_falls_back_to_cpu_actors(local_ray):
    cfg = build_config(raw_config())  # device auto, gpus_per_actor unset
    data = load_data(cfg.data)
    with make_evaluator(cfg, data) as ev:
        assert ev.device_name.startswith("ray: 2 actors x cpu (1 CPU, 0 GPU each, ")
        assert ev.gpu_ids == [[], []]
        exp = Experiment(cfg, ev, data)
        results = ev.evaluate([BurstTask(exp.random_mask(0.5, i), 1.0, i) for i in range(2)])
    tensors = [t for r in results for layer in r.traits.values() for t in layer.values()]
    assert tensors and all(t.device.type == "cpu" for t in tensors)


@pytest.mark.parametrize("setting,match", [
    ("evaluation.gpus_per_actor=0.25", "0.25 GPU per actor asked for, but Ray would start on this machine"),
    ("evaluation.device=cuda:1", "'cuda:1' names one GPU, but Ray assigns each actor its own GPU"),
])
def test_cli_refuses_gpu_requests_before_a_run_folder_exists(tmp_path, setting, match):
    if setting.startswith("evaluation.gpus") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: Ray would use it")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "evo_pai", "run", "configs/quickstart.yaml", "--out", str(out),
                           "--quiet", "--set", "evaluation.backend=ray", "--set", setting],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and match in lines[0], proc.stderr[-2000:]
    assert not out.exists()


# -- a two-node cluster started with `ray start` -------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(roots: set[int]) -> set[int]:
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, grew = set(roots), True
    while grew:
        new = {p for p, pp in parent.items() if pp in found and p not in found}
        found |= new
        grew = bool(new)
    return found


class RayNodes:
    """`ray start --block` processes in their own sessions; stopped by killing them and their children."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, []
        token = tmp / "token"
        token.write_text(secrets.token_hex(32))
        # token authentication on, with a token private to this test (not ~/.ray/auth_token)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}

    def start(self, *args: str) -> None:
        log = self.tmp / f"node{len(self.procs)}.log"
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--block", "--num-cpus=1",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}", *args]
        self.procs.append(subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text():
            assert self.procs[-1].poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)

    def kill(self, *procs: subprocess.Popen) -> None:
        """SIGKILL the nodes' processes and every process they started (raylet, workers, actors)."""
        for pid in descendants({p.pid for p in procs}):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            p.wait(timeout=30)

    def stop(self) -> None:
        self.kill(*self.procs)


def test_two_node_cluster_survives_losing_the_worker_node(reference, tmp_path):
    """`evo-pai run` against a head + worker started with `ray start`; the worker node is killed after
    generation 0. Its actor cannot be restarted (no free CPU left), so the head's actor re-runs the
    stuck task (straggler rule, or resubmission if Ray reports the actor dead) and carries on alone:
    same winning mask as the undisturbed run."""
    port = free_port()
    nodes = RayNodes(tmp_path)
    ray_tmp = tempfile.mkdtemp(prefix="evr", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    try:
        nodes.start("--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                    f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
                    f"--temp-dir={ray_tmp}")
        nodes.start(f"--address=127.0.0.1:{port}")
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(raw_config(address=f"127.0.0.1:{port}")))
        out = tmp_path / "run"
        err = open(tmp_path / "run.err", "w")
        run = subprocess.Popen([sys.executable, "-m", "evo_pai", "run", str(cfg), "--out", str(out), "--quiet"],
                               cwd=ROOT, env=nodes.env, stdout=subprocess.DEVNULL, stderr=err)
        log = out / "log.jsonl"
        while not (log.exists() and log.read_text().strip()) and run.poll() is None:
            time.sleep(0.02)
        nodes.kill(nodes.procs[1])  # the whole worker node, mid-search
        assert run.wait(timeout=300) == 0, (tmp_path / "run.err").read_text()[-3000:]
    finally:
        nodes.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("ray: 2 actors")  # 1 CPU per node: one actor on each node
    assert MaskSet.load(out / "mask.safetensors") == reference[1]
    close(summary, reference[0], ["test_accuracy", "test_loss", "val_accuracy"])
    assert summary["fitness_failures"] == []
    err = (tmp_path / "run.err").read_text()
    assert "(raylet)" not in err and "Traceback" not in err, err[-2000:]  # faults in our words only


def test_worker_node_raylet_killed_while_actors_start(tmp_path):
    """The worker node's raylet is SIGKILLed while both actors are still starting (loading their data):
    the driver does not wait forever in the start-up; within evaluation.actor_start_timeout_s it drops
    the actor that cannot start (no free CPU for its restart on the head) with one line naming the dead
    node, and the run finishes on the head's actor."""
    port = free_port()
    nodes = RayNodes(tmp_path)
    nodes.env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), nodes.env.get("PYTHONPATH", "")])
    ray_tmp = tempfile.mkdtemp(prefix="evr", dir="/tmp")
    timeout = 40.0
    try:
        nodes.start("--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                    f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
                    f"--temp-dir={ray_tmp}")
        nodes.start(f"--address=127.0.0.1:{port}")
        raw = raw_config(address=f"127.0.0.1:{port}", actor_start_timeout_s=timeout)
        raw["plugins"], raw["data"]["name"] = ["slow_start_plugin"], "slow_start_synthetic"
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        out = tmp_path / "run"
        err = open(tmp_path / "run.err", "w")
        run = subprocess.Popen([sys.executable, "-m", "evo_pai", "run", str(cfg), "--out", str(out), "--quiet"],
                               cwd=ROOT, env=nodes.env, stdout=subprocess.DEVNULL, stderr=err)
        worker = nodes.procs[1].pid
        deadline = time.time() + 120
        while not any("BurstWorker" in cmdline(p) for p in descendants({worker})):  # its actor is starting
            assert run.poll() is None and time.time() < deadline, (tmp_path / "run.err").read_text()[-2000:]
            time.sleep(0.05)
        raylet = [p for p in descendants({worker}) if "raylet/raylet" in cmdline(p)]
        assert raylet, "no raylet process on the worker node"
        killed_at = time.time()
        os.kill(raylet[0], signal.SIGKILL)
        code = run.wait(timeout=timeout + 150)
        took = time.time() - killed_at
    finally:
        nodes.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    err = (tmp_path / "run.err").read_text()
    assert code == 0, err[-3000:]
    assert took < timeout + 120, took  # the deadline, then a short search on one actor
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("ray: 1 actor "), summary["device"]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Ray: 1 of 2 actors were not ready within"), err
    assert "died" in lines[0] or "CPU free" in lines[0], lines[0]  # names the node, or the missing CPU


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed (scripts/install.sh installs it)")
def test_benchmark_quick_runs():
    """The benchmark's --quick mode: starts and stops its own local Ray (the address=None path)."""
    run = subprocess.run([sys.executable, "benchmarks/ray_scaling.py", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ratio" in run.stdout and "fixed cost" in run.stdout and "same winners: yes" in run.stdout, run.stdout

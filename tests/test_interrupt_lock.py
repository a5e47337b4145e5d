"""Real processes: Ctrl-C (exit 130, the resume line, never a traceback), one owner per run folder,
and a disk that fills up or turns read-only in the middle of a run (one line; what was written stays).

The disk tests mount a small tmpfs (this machine's tests run as root); where mounting is not
allowed they are skipped with the reason.
"""
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

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def long_config(tmp_path: Path, generations: int = 60, **search) -> Path:
    """The tiny synthetic search with many short generations: time to interrupt it mid-search."""
    raw = tiny_raw("combined", generations=generations, **search)
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evo_pai", *args], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evo_pai", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


def wait_for_generations(proc: subprocess.Popen, run: Path, n: int, deadline_s: float = 120) -> None:
    log, deadline = run / "log.jsonl", time.time() + deadline_s
    while not (log.exists() and len(log.read_text().splitlines()) >= n):
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.time() < deadline, "no generation logged in time"
        time.sleep(0.01)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# -- Ctrl-C --------------------------------------------------------------------------------------
def test_ctrl_c_exits_130_with_the_resume_line_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    proc = start("run", str(long_config(tmp_path, generations=40)), "--out", str(run), "--quiet")
    wait_for_generations(proc, run, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert error_lines(err) == [f"interrupted; resume with: evo-pai resume {run}"], err
    done = cli("resume", str(run), "--quiet")  # the line says the truth: the run continues and ends
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "summary.json").read_text())["generations_logged"] == 40


def test_a_second_ctrl_c_during_the_clean_up_prints_no_traceback(tmp_path):
    """Deterministic: the clean-up of the first Ctrl-C receives the second one."""
    script = tmp_path / "slow.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "import typer\n"
        "from evo_pai.cli.one_line import resumable, run_app\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "def slow():\n"
        "    with resumable(lambda: 'evo-pai resume RUN'):\n"
        "        try:\n"
        "            print('ready', flush=True)\n"
        "            time.sleep(60)\n"
        "        finally:\n"
        "            os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C\n"
        "            time.sleep(30)\n"
        "@app.command()\n"
        "def other():\n"
        "    pass\n"
        "run_app(app)\n")
    proc = subprocess.Popen([sys.executable, str(script), "slow"], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.time() - t0 < 20, err  # did not sit out the clean-up's sleep
    assert error_lines(err) == ["interrupted; resume with: evo-pai resume RUN"], err


def test_two_quick_ctrl_c_on_a_real_run(tmp_path):
    run = tmp_path / "run"
    proc = start("run", str(long_config(tmp_path)), "--out", str(run), "--quiet")
    wait_for_generations(proc, run, 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert error_lines(err) == [f"interrupted; resume with: evo-pai resume {run}"], err


# -- one owner per run folder ----------------------------------------------------------------------
def snapshot(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}


def test_a_second_run_on_the_same_folder_is_refused_and_touches_nothing(tmp_path):
    run = tmp_path / "run"
    cfg = long_config(tmp_path, generations=5000)  # runs until this test stops it
    first = start("run", str(cfg), "--out", str(run), "--quiet")
    wait_for_generations(first, run, 1)
    before = snapshot(run, ("config.yaml",))
    names_before = {p.name for p in run.iterdir()}
    second = cli("run", str(cfg), "--out", str(run), "--overwrite", "--quiet", "--set", "seed=7")
    third = cli("resume", str(run), "--quiet")
    for r in (second, third):
        assert r.returncode == 2, r.stderr
        lines = error_lines(r.stderr)
        assert len(lines) == 1 and "another evo-pai process" in lines[0] and f"pid {first.pid}" in lines[0], r.stderr
    assert first.poll() is None, "the first run must still be running for this test to mean anything"
    assert snapshot(run, ("config.yaml",)) == before
    assert {p.name for p in run.iterdir()} <= names_before | {"checkpoint.safetensors", ".checkpoint.safetensors.tmp"}
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 0
    assert [r["generation"] for r in records] == list(range(len(records)))  # one writer: no interleaved lines


def test_lock_is_released_when_the_holder_dies(tmp_path):
    run = tmp_path / "run"
    proc = start("run", str(long_config(tmp_path, generations=5000)), "--out", str(run), "--quiet")
    wait_for_generations(proc, run, 1)
    proc.kill()
    proc.wait()
    from evo_pai.runs.lock import FolderLock

    with FolderLock(run):  # the kernel dropped the dead process's lock
        pass


# -- the disk fills up or turns read-only mid-run ------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted for this test; its size is set by the test (remount). Skipped where mounting is refused."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); needs root with CAP_SYS_ADMIN")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def assert_intact(run: Path) -> list[dict]:
    """Every file the run wrote is whole: valid config, whole log lines, no temp file left over."""
    yaml.safe_load((run / "config.yaml").read_text())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert not list(run.glob(".*.tmp"))
    return records


def test_full_disk_mid_run_is_one_line_and_what_was_written_stays(small_disk, tmp_path):
    # 40 KB: config.yaml, the log and a checkpoint or two fit, the rest of the run does not.
    subprocess.run(["mount", "-o", "remount,size=40k", str(small_disk)], check=True)
    run = small_disk / "run"
    r = cli("run", str(long_config(tmp_path, generations=30)), "--out", str(run), "--quiet")
    lines = error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "No space left on device (ENOSPC)" in lines[0] and f"resume with: evo-pai resume {run}" in lines[0], r.stderr
    records = assert_intact(run)
    assert records and [rec["generation"] for rec in records] == list(range(len(records)))  # mid-run, whole lines
    assert not (run / "summary.json").exists()


def test_read_only_folder_mid_run_is_one_line_and_what_was_written_stays(small_disk, tmp_path):
    run = small_disk / "run"
    proc = start("run", str(long_config(tmp_path, generations=5000)), "--out", str(run), "--quiet")
    wait_for_generations(proc, run, 2)
    deadline = time.time() + 30
    while subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True).returncode != 0:
        assert time.time() < deadline, "could not remount read-only"  # EBUSY while a write is open: retry
        time.sleep(0.005)
    _, err = proc.communicate(timeout=120)
    lines = error_lines(err)
    assert proc.returncode == 2 and len(lines) == 1, err
    assert "Read-only file system (EROFS)" in lines[0] and "resume with" in lines[0], err
    records = assert_intact(run)
    assert len(records) >= 2
    from evo_pai.core.config import load_config
    from evo_pai.runs.checkpoint import FILENAME, load_checkpoint

    ckpt = load_checkpoint(run / FILENAME, load_config(run / "config.yaml"))  # the last checkpoint is whole
    assert ckpt.generation is not None and ckpt.generation <= records[-1]["generation"]

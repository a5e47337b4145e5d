"""How many torch threads a run trains with: near the fastest choice whether the CPUs are idle or shared.

Measured (benchmarks/threads.py, docs/performance.md): a small model's step is a string of tiny
kernels, each ending in an OpenMP barrier. When another process holds a core, a barrier waits for a
descheduled thread, and a step on two threads takes 3-30x longer than on one. Extra threads pay off
only when a step has enough work *and* the CPUs are free. So the default (`train.threads: auto`) is

    min(CPUs this process may use           (sched_getaffinity, cgroup cpu quota),
        one thread per STEP_FLOPS_PER_THREAD of training work per step (small models: 1),
        CPUs not busy with other processes   (measured for LOAD_SAMPLE_SECONDS at the start))

and at least 1. `train.threads: N` or `--threads N` (or OMP_NUM_THREADS in the environment) decide
instead. The count is chosen once per run (float results depend on it) and reported in summary.json.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import psutil
import torch
from torch import nn

# One thread per 1e8 FLOPs of training work per step (forward + backward = 3x forward, x batch):
# LeNet-300-100 on 28x28 inputs at batch 128 (~2e8) may use 2; the 8x8 digits quick start (~4e7) uses 1.
STEP_FLOPS_PER_THREAD = 1e8
LOAD_SAMPLE_SECONDS = 0.15
BUSY_SLACK = 0.3  # a CPU counts as free when other processes use less than 70 % of it


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # one short line for the summary: why this many
    limit: int = 0  # auto only: the most threads the CPUs and the work allow (0: fixed, never adjusted)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity set, capped by a cgroup CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(n, math.ceil(quota)) if quota else n)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time the cgroup may use (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`); None: no limit."""
    candidates: list[tuple[Path, Path | None]] = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hier, _, path = line.split(":", 2)
            if hier == "0":
                candidates.append((root / path.lstrip("/") / "cpu.max", None))
    except OSError:
        pass
    candidates += [(root / "cpu.max", None), (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us")]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, ValueError):
            continue
        if quota in ("max", "-1"):
            return None
        try:
            return max(float(quota) / float(period), 0.01)
        except (ValueError, ZeroDivisionError):
            continue
    return None


def _cpu_ticks(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the given CPUs since boot (psutil: /proc/stat on Linux)."""
    try:
        per_cpu = psutil.cpu_times(percpu=True)
    except (OSError, NotImplementedError):
        return None
    busy = total = 0.0
    for i in cpus:
        if i >= len(per_cpu):
            continue
        t = per_cpu[i]
        # guest and guest_nice are already inside user and nice; steal counts as busy (a hypervisor uses the CPU)
        spent = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"))
        total += spent
        busy += spent - t.idle - getattr(t, "iowait", 0.0)
    return (busy, total) if total else None


def busy_cpus_elsewhere(seconds: float = LOAD_SAMPLE_SECONDS) -> float | None:
    """CPUs of our affinity set kept busy by *other* processes, measured over `seconds`; None: unknown."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    t0, own0, ticks0 = time.perf_counter(), _own_cpu_seconds(), _cpu_ticks(cpus)
    if ticks0 is None:
        return None
    time.sleep(seconds)
    t1, own1, ticks1 = time.perf_counter(), _own_cpu_seconds(), _cpu_ticks(cpus)
    if ticks1 is None or ticks1[1] <= ticks0[1]:
        return None
    fraction = (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1])
    own = (own1 - own0) / max(t1 - t0, 1e-9)
    return max(0.0, fraction * len(cpus) - own)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def step_flops(model: nn.Module, input_shape: Sequence[int], batch_size: int, models_per_step: int = 1) -> float:
    """Training FLOPs of one optimizer step: forward + backward (~3x forward) over a batch, K models at once."""
    from evo_pai.models.networks import count_flops

    return 3.0 * count_flops(model, input_shape)["dense"] * batch_size * max(1, models_per_step)


def auto_threads(flops_per_step: float, cpus: int | None = None, busy: float | None = None,
                 measure: bool = True) -> ThreadChoice:
    """The default thread count for a step of `flops_per_step` on `cpus` CPUs (default: usable_cpus())."""
    cpus = usable_cpus() if cpus is None else max(1, cpus)
    by_work = max(1, int(flops_per_step // STEP_FLOPS_PER_THREAD))
    limit = min(cpus, by_work)
    if limit == 1:
        why = "1 CPU available" if cpus == 1 else f"small model ({flops_per_step:.2g} FLOPs per step)"
        return ThreadChoice(1, f"auto: {why}")
    if busy is None and measure:
        busy = busy_cpus_elsewhere()
    n = fit_threads(limit, cpus, busy or 0.0)
    load = f", {busy:.1f} of {cpus} CPUs busy elsewhere" if busy is not None else ""
    return ThreadChoice(n, f"auto: {flops_per_step:.2g} FLOPs per step on {cpus} CPUs{load}", limit)


def fit_threads(limit: int, cpus: int, busy: float) -> int:
    """As many threads as the CPUs that other processes leave free, within [1, limit]."""
    return max(1, min(limit, math.floor(cpus - busy + BUSY_SLACK)))


class ThreadGovernor:
    """auto with more than one thread possible: follows the load while the run trains.

    Called at every finished task and final-training epoch (at most every CHECK_SECONDS it measures);
    other processes' CPU use over the last window is the CPUs' busy time minus this process's own.
    When they take CPUs the run counted on, it drops to fewer threads at once (a step waiting on a
    descheduled thread is what makes shared cores 3-30x slower); it goes back up only after two windows
    in a row with the CPUs free again. Floats depend on the thread count, so an adjusted run is not
    bit-reproducible: `--threads N` fixes the count."""

    CHECK_SECONDS = 2.0

    def __init__(self, choice: ThreadChoice):
        self.limit, self.threads = choice.limit, choice.threads
        self.changes: list[tuple[float, int]] = []  # (seconds since the start, threads from then on)
        self._cpus = usable_cpus()
        self._t0 = time.perf_counter()
        self._mark = self._sample()
        self._free_windows = 0

    @staticmethod
    def _sample():
        try:
            cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return None
        return time.perf_counter(), _own_cpu_seconds(), _cpu_ticks(cpus), len(cpus)

    def check(self) -> None:
        if self.limit <= 1 or self._mark is None or time.perf_counter() - self._mark[0] < self.CHECK_SECONDS:
            return
        now = self._sample()
        (t0, own0, ticks0, n), (t1, own1, ticks1, _) = self._mark, now
        self._mark = now
        if ticks0 is None or ticks1 is None or ticks1[1] <= ticks0[1]:
            return
        busy = max(0.0, (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1]) * n - (own1 - own0) / max(t1 - t0, 1e-9))
        want = fit_threads(self.limit, self._cpus, busy)
        self._free_windows = self._free_windows + 1 if want > self.threads else 0
        if want < self.threads or self._free_windows >= 2:
            self.threads, self._free_windows = want, 0
            torch.set_num_threads(want)
            self.changes.append((round(time.perf_counter() - self._t0, 1), want))


def env_threads() -> int | None:
    """OMP_NUM_THREADS from the environment (torch reads it at start-up): the user's explicit choice."""
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def choose_threads(configured: int | str | None, model: nn.Module, input_shape: Sequence[int], batch_size: int,
                   models_per_step: int = 1, default: int | None = None) -> ThreadChoice:
    """train.threads if set; else the caller's default (e.g. a study's threads); else OMP_NUM_THREADS; else auto."""
    if isinstance(configured, int):
        return ThreadChoice(configured, "train.threads")
    if default is not None:
        return ThreadChoice(default, "set by the caller")
    env = env_threads()
    if env is not None:
        return ThreadChoice(env, "OMP_NUM_THREADS")
    return auto_threads(step_flops(model, input_shape, batch_size, models_per_step))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Train with n intra-op threads; the caller's setting comes back afterwards (API users keep theirs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

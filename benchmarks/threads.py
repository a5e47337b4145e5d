"""The default torch thread count (train.threads: auto) against 1 and 2 threads, idle and loaded.

    python benchmarks/threads.py [--quick] [--repeats N] [--burner-threads N]

Each workload is a whole short run (`run_experiment`, no run folder): the search and the final
training of a shrunk shipped config. Three ways run it: `default` (auto: evo-pai chooses, including
its start-up load measurement, inside the timed region), `1` and `2` threads. Two conditions:
`idle` and `loaded` = two CPU-burning torch processes (spawned here, `--burner-threads` torch
threads each, stopped at the end) competing for the cores. The burners run all along and are
paused with SIGSTOP for the idle phases, so both conditions come in every round: round after
round the conditions alternate and the three ways rotate inside each (interleaved, repeated).
Reported per workload and condition: each way's best round, and default/best = the default's best
round over the best round of the faster fixed count (1.00 = the default was the best choice; the
target is <= 1.15); "paired" = the median over rounds of default / min(1, 2) timed in that round.
`--quick`: the quick-start workload only, shrunk further, one round (a few seconds idle).
"""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, parse, table  # noqa: E402

from evo_pai.core.config import load_config  # noqa: E402
from evo_pai.data.datasets import load_data  # noqa: E402
from evo_pai.runs.components import load_components  # noqa: E402
from evo_pai.runs.runner import run_experiment, thread_choice  # noqa: E402
from evo_pai.training.threads import step_flops, usable_cpus  # noqa: E402
from evo_pai.training.tasks import initial_model  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BURN = ("import sys, torch\ntorch.set_num_threads(int(sys.argv[1]))\na = torch.randn(256, 256)\n"
        "while True:\n    a = torch.tanh(a @ a)\n")

# name -> (config, overrides): shipped configs, shrunk so that one run takes seconds on 2 idle cores
WORKLOADS = {
    "quickstart (digits, LeNet-300-100)": ("quickstart.yaml", [
        "search.population=4", "search.generations=2", "search.burst_epochs=2", "final.epochs=3"]),
    "kstarts_fmnist (8k subset, LeNet-300-100)": ("kstarts_fmnist.yaml", [
        "data.train_subset=8192", "search.population=3", "final.epochs=1"]),
    "kstarts_fmnist + lenet5 (4k subset)": ("kstarts_fmnist.yaml", [
        "data.train_subset=4096", "model.name=lenet5", "search.population=3", "final.epochs=1"]),
}
QUICK = {"quickstart (digits, LeNet-300-100)": ("quickstart.yaml", [
    "search.population=2", "search.generations=1", "search.burst_epochs=1", "final.epochs=1"])}


class Burners:
    """Two CPU-burning torch processes, paused (SIGSTOP) or running (SIGCONT) on demand."""

    def __init__(self, threads: int, count: int = 2):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.procs = [subprocess.Popen([sys.executable, "-c", BURN, str(threads)], env=env) for _ in range(count)]
        self.pause()

    def _signal(self, sig: int) -> None:
        for p in self.procs:
            os.kill(p.pid, sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(timeout=30)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    args = parse(__doc__.splitlines()[0], lambda p: p.add_argument(
        "--burner-threads", type=int, default=1, help="torch threads of each competing process (default 1)"))
    os.environ.pop("OMP_NUM_THREADS", None)  # the default must be evo-pai's own choice, not the environment's
    load_components()
    workloads = {}
    for name, (path, overrides) in (QUICK if args.quick else WORKLOADS).items():
        cfg = load_config(CONFIGS / path, [*overrides, "evaluation.device=cpu"])
        data = load_data(cfg.data)
        flops = step_flops(initial_model(cfg, data), data.input_shape, cfg.train.batch_size)
        workloads[name] = (cfg, data, flops)
    ways = ["default", "1", "2"]
    conditions = ["idle", "loaded"]
    times = {(w, c, v): [] for w in workloads for c in conditions for v in ways}
    chosen = {(w, c): [] for w in workloads for c in conditions}
    choice_seconds: list[float] = []
    busy = {c: [] for c in conditions}  # CPUs the default saw busy elsewhere, per condition

    def run_way(name: str, condition: str, way: str) -> float:
        cfg, data, _ = workloads[name]
        t0 = time.perf_counter()
        if way == "default":  # the choice (and its load measurement) is part of what a run pays
            choice = thread_choice(cfg, data)
            choice_seconds.append(time.perf_counter() - t0)
            chosen[(name, condition)].append(choice.threads)
            if "busy elsewhere" in choice.reason:
                busy[condition].append(float(choice.reason.split(", ")[-1].split()[0]))
            run_experiment(cfg, None, data=data, threads=choice.threads)
        else:
            run_experiment(cfg, None, data=data, threads=int(way))
        return time.perf_counter() - t0

    print(f"threads: {machine()}, {usable_cpus()} usable CPUs, repeats={args.repeats}"
          f"{' (quick)' if args.quick else ''}, burners: 2 x {args.burner_threads} torch thread(s)")
    print(f"load average before: {loadavg()}", flush=True)
    burners = Burners(args.burner_threads)
    try:
        for name in workloads:  # warm-up: first runs pay allocator growth and kernel selection
            run_way(name, "idle", "1")
        for r in range(args.repeats):
            for condition in conditions[r % 2:] + conditions[: r % 2]:
                burners.resume() if condition == "loaded" else burners.pause()
                time.sleep(1.0)  # let the scheduler settle into the condition
                for name in workloads:
                    for way in ways[r % 3:] + ways[: r % 3]:
                        times[(name, condition, way)].append(run_way(name, condition, way))
                print(f"round {r + 1}/{args.repeats} {condition} done", file=sys.stderr, flush=True)
    finally:
        burners.stop()
    print(f"load average after: {loadavg()}")
    print(f"the default's choice took {statistics.median(choice_seconds):.3f} s (median; builds a probe model, "
          f"samples the load for the models that could use more than one thread)")
    for condition in conditions:
        if busy[condition]:
            print(f"CPUs busy elsewhere as the default saw them, {condition}: "
                  f"{', '.join(f'{b:.1f}' for b in busy[condition])}")
    rows, ratios = [], []
    for name, (_, _, flops) in workloads.items():
        for condition in conditions:
            best = {v: min(times[(name, condition, v)]) for v in ways}
            fixed = min(best["1"], best["2"])
            ratio = best["default"] / fixed
            paired = statistics.median(d / min(a, b) for d, a, b in zip(
                *(times[(name, condition, v)] for v in ways)))
            picks = sorted(set(chosen[(name, condition)]))
            rows.append([name, f"{flops:.2g}", condition, "/".join(map(str, picks)), best["1"], best["2"],
                         best["default"], f"{ratio:.2f}", f"{paired:.2f}"])
            ratios.append((name, condition, ratio, paired))
    print(table(["workload", "FLOPs/step", "condition", "default chose", "1 thread s", "2 threads s", "default s",
                 "default/best", "paired"], rows))
    for name, condition, ratio, paired in ratios:
        print(f"ratio default/best {condition} {name}: {ratio:.2f} (paired {paired:.2f})")


if __name__ == "__main__":
    main()

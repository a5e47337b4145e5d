"""Population evaluation on Ray actors: a laptop (Ray started here) or an existing cluster.

One cluster connection and one set of actors per search. Each actor builds data and model
from the config once; θ0 goes through the object store once, so every node trains from the
driver's exact tensors. Ray restarts dead actors and retries their tasks; when Ray gives up,
the driver resubmits the task to a live actor; only then does the individual get the worst
fitness, with the cause. Results come back in task order, and seeds come from the tasks
(derived from each individual's identity), so Ray and the local backend agree.
"""
from __future__ import annotations

import logging
import math
import os
import random
import socket
import statistics
import time
from collections import deque
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..config import Config, to_dict
from ..data import DataSplits, load_data
from ..errors import EvoPaiError
from ..registry import register_backend
from ..training.burst import BurstResult
from ..training.tasks import BurstTask, Evaluator, Progress, dtype_of, initial_model
from .payload import split_payload
from .ray_checks import local_plan_check
from .ray_plan import check_device, plan_actors
from .ray_worker import BurstWorker, actor_trainer, failed_result, on_cpu

__all__ = ["BurstWorker", "RayEvaluator", "actor_trainer", "failed_result", "on_cpu", "plan_actors"]

log = logging.getLogger(__name__)

# An idle actor re-runs a task in flight for longer than both of these (a dead node's actor may wait
# for resources forever; Ray itself never gives up on it).
STRAGGLER_FACTOR = 3.0  # x the median task time
STRAGGLER_SECONDS = 5.0
POLL_SECONDS = 0.5  # how often the dispatcher looks for stragglers while it waits
ACTOR_START_SECONDS = 600.0  # actors build data and model in ready(); one that cannot be placed waits forever


@contextmanager
def preserved_rng():
    """ray.init draws from Python's `random`; DEAP's selection must not notice Ray was started."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


def reachable(address: str, timeout: float = 5.0) -> bool:
    """Ray retries an unreachable GCS for minutes; a TCP connect answers in seconds."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise EvoPaiError(f"evaluation.address: '{address}' is not HOST:PORT (or 'auto', or empty to start Ray here)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return True
    except OSError:
        return False


def one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return " | ".join(lines[:3]) if lines else "unknown error"


@register_backend("ray", "Ray actors on this machine or an existing cluster (evaluation.address)")
class RayEvaluator(Evaluator):
    def __init__(self, cfg: Config, data: DataSplits | None = None):
        super().__init__(cfg)
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray is a dependency
            raise EvoPaiError("evaluation.backend: 'ray' needs the ray package; pip install 'ray>=2.9'") from exc
        self._ray = ray
        self._owns_ray = False
        self.actors: list[Any] = []  # None marks an actor Ray gave up on
        self._inflight: dict[Any, tuple[int, int | None, float]] = {}  # ref -> (actor, task index, start)
        self._durations: list[float] = []
        self.failures: list[dict] = []  # actor deaths seen by the driver, with causes
        self.trainer = "sequential"  # set with the actors: how each trains its share
        self.timings: dict[str, float] = {}  # seconds: ray_init, actors, shutdown (benchmarks read them)
        try:
            with preserved_rng():
                t0 = time.perf_counter()
                self._connect()
                t1 = time.perf_counter()
                self._start_actors(data)
                self.timings.update(ray_init=t1 - t0, actors=time.perf_counter() - t1)
        except BaseException:
            self.close()
            raise

    # -- set-up -----------------------------------------------------------------------
    @staticmethod
    def preflight(cfg: Config, data: DataSplits | None = None, model: torch.nn.Module | None = None) -> None:
        """Checked before the run folder is made: a wrong address fails in seconds, not minutes; a Ray
        that evo-pai starts here must fit this machine; the actors' trainer must suit the model."""
        ev = cfg.evaluation
        check_device(ev)  # cuda:N, GPUs with device cpu, 0 GPUs with device cuda
        if ev.address not in (None, "auto") and not reachable(ev.address):
            raise EvoPaiError(f"evaluation.address: nothing answers at {ev.address}; start the head with "
                              "`ray start --head --port=PORT` or use address 'auto' on a cluster node")
        if ev.address is None and not os.environ.get("RAY_ADDRESS"):
            local_plan_check(cfg)
        if model is not None and data is not None:
            actor_trainer(cfg, model, data)  # e.g. actor_trainer=vectorized with a BatchNorm model

    def _connect(self) -> None:
        ray, address = self._ray, self.cfg.evaluation.address
        if ray.is_initialized():
            return  # the caller owns the connection (e.g. a notebook or `ray job submit`)
        self.preflight(self.cfg)
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs["include_dashboard"] = False  # a private local cluster: no HTTP port opened
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:
            where = f"at {address}" if address else "locally"
            hint = ("is the cluster up (`ray status`)? With token authentication, set RAY_AUTH_MODE=token "
                    "and make the cluster's token available (~/.ray/auth_token)") if address else "see `ray start --help`"
            raise EvoPaiError(f"evaluation.address: cannot start or reach Ray {where} ({one_line(exc)}); {hint}") from None
        self._owns_ray = True

    def _start_actors(self, data: DataSplits | None) -> None:
        ray, ev = self._ray, self.cfg.evaluation
        plan = plan_actors(ev, self.cfg.search.population, ray.cluster_resources(), ray.available_resources())
        n, cpus, gpus, device = plan.actors, plan.cpus, plan.gpus, plan.device
        data = data if data is not None else load_data(self.cfg.data)
        model = initial_model(self.cfg, data)  # θ0 built here once; actors receive these exact tensors
        theta0 = ray.put({k: v.detach().to("cpu", dtype_of(self.cfg)).clone() for k, v in model.state_dict().items()})
        self._theta0 = [theta0]  # sent (as a reference) with every task; fetched once per actor
        self.trainer = actor_trainer(self.cfg, model, data)
        remote = ray.remote(BurstWorker).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=ev.max_retries, max_task_retries=ev.max_retries,
        )
        threads = max(1, int(cpus))
        self.actors = [remote.remote(to_dict(self.cfg), threads, device, self.trainer, gpus) for _ in range(n)]
        try:
            ready = ray.get([a.ready.remote(self._theta0) for a in self.actors], timeout=ACTOR_START_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise EvoPaiError(f"evaluation.num_actors: {n} Ray actors ({cpus:g} CPU, {gpus:g} GPU each) did not start "
                              f"within {ACTOR_START_SECONDS:g} s; the cluster may lack free resources (`ray status`): "
                              "use fewer actors, or smaller cpus_per_actor / gpus_per_actor") from None
        for _pid, error, _gpu_ids in ready:
            if error:
                raise EvoPaiError(f"a Ray actor could not build the data and model: {error} "
                                  "(every node needs evo-pai, its plugins and the dataset files)")
        self.gpu_ids = [ids for _, _, ids in ready]  # per actor, as Ray assigned them (CUDA_VISIBLE_DEVICES)
        where = f", GPU ids {self.gpu_ids}" if gpus > 0 else ""
        self.device_name = (f"ray: {n} actor{'s' if n > 1 else ''} x {device} ({cpus:g} CPU, {gpus:g} GPU each"
                            f"{where}, {self.trainer} trainer)")

    # -- running ----------------------------------------------------------------------
    def actor_pids(self) -> list[int | None]:
        """Process id of each actor (None for one Ray gave up on); tests use it to kill one."""
        refs = [a.pid.remote() if a is not None else None for a in self.actors]
        return [self._ray.get(r) if r is not None else None for r in refs]

    @property
    def live_actors(self) -> int:
        return sum(a is not None for a in self.actors)

    def _units(self, n: int) -> list[list[int]]:
        """Task indices per actor call: one each for sequential actors (load balances task by task),
        an even share per live actor for vectorized ones (at most evaluation.chunk_size), trained together."""
        if self.trainer != "vectorized":
            return [[i] for i in range(n)]
        size = self.cfg.evaluation.chunk_size or math.ceil(n / max(1, self.live_actors))
        return [list(range(lo, min(lo + size, n))) for lo in range(0, n, size)]

    def _run(self, tasks: list[BurstTask], progress: Progress | None) -> list[BurstResult]:
        from ray.exceptions import RayActorError, RayTaskError

        ray, limit = self._ray, self.cfg.evaluation.max_retries
        units = self._units(len(tasks))
        done_units: list[list[BurstResult] | None] = [None] * len(units)
        resubmits = [0] * len(units)
        queue = deque(range(len(units)))
        busy = {a for a, _, _ in self._inflight.values()}  # copies left over from an earlier call
        idle = deque(i for i, a in enumerate(self.actors) if a is not None and i not in busy)
        remaining, finished, reported = len(units), 0, 0

        # Start weights / optimizer states go to the object store once per payload (children of one
        # parent share theirs); a resubmitted or duplicated share reuses the references.
        light, refs, put = [], [], {}
        for t in tasks:
            bare, payload = split_payload(t)
            light.append(bare)
            key = (id(t.start), id(t.opt_state))
            if payload is not None and key not in put:
                put[key] = ray.put(payload)
            refs.append(put[key] if payload is not None else None)

        def submit(actor: int, u: int) -> None:
            ref = self.actors[actor].run.remote([light[i] for i in units[u]], self._theta0, [refs[i] for i in units[u]])
            self._inflight[ref] = (actor, u, time.perf_counter())

        def finish(u: int, res: list[BurstResult]) -> None:
            nonlocal remaining, finished
            done_units[u] = res
            remaining -= 1
            finished += len(units[u])

        while remaining:
            while idle and queue:
                u = queue.popleft()
                if done_units[u] is None:
                    submit(idle.popleft(), u)
            if idle and not queue:
                straggler = self._straggler(done_units)
                if straggler is not None:
                    log.warning("a share of %d task(s) is running far longer than usual (dead node or restarting "
                                "actor?); running it again on actor %d, first result wins", len(units[straggler]), idle[0])
                    submit(idle.popleft(), straggler)
            if progress and reported < finished:  # after refilling: no actor waits on the bar
                progress(finished - reported)
                reported = finished
            if not self._inflight:
                raise EvoPaiError(f"all Ray actors are gone ({self.failures[-1]['cause'] if self.failures else 'unknown cause'}); "
                                  "the last checkpoint is kept: `evo-pai resume RUN_DIR` after fixing the cluster")
            done, _ = ray.wait(list(self._inflight), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                actor, u, started = self._inflight.pop(ref)
                try:
                    res = ray.get(ref)
                except RayActorError as exc:
                    self._retire(actor, exc)
                    if u is None or done_units[u] is not None or any(j == u for _, j, _ in self._inflight.values()):
                        continue  # another copy of this share is still running or already finished
                    resubmits[u] += 1
                    if resubmits[u] > limit:
                        cause = (f"gave up after {resubmits[u]} Ray actor failure(s) on this share "
                                 f"(evaluation.max_retries={limit}): {one_line(exc)}")
                        log.warning("individual(s) %s get the worst fitness: %s", units[u], cause)
                        finish(u, [failed_result(tasks[i], cause) for i in units[u]])
                    else:
                        queue.appendleft(u)  # resubmit to the next live actor
                    continue
                except RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                    if isinstance(cause, EvoPaiError):
                        raise EvoPaiError(str(cause)) from None
                    raise
                idle.append(actor)
                if u is not None and done_units[u] is None:
                    self._durations.append(time.perf_counter() - started)
                    finish(u, res)
        if progress and reported < finished:
            progress(finished - reported)
        # copies still running belong to no task now; their actors stay busy until they finish
        self._inflight = {ref: (a, None, t) for ref, (a, _, t) in self._inflight.items()}
        results: list[BurstResult | None] = [None] * len(tasks)
        for members, res in zip(units, done_units):
            for i, r in zip(members, res):  # type: ignore[arg-type]
                results[i] = r
        return results  # type: ignore[return-value]

    def _straggler(self, done_units: list) -> int | None:
        """A unit of work running far longer than usual (its actor may wait for a dead node): run it again."""
        if not self._durations:
            return None
        limit = max(STRAGGLER_FACTOR * statistics.median(self._durations[-64:]), STRAGGLER_SECONDS)
        now, copies = time.perf_counter(), {}
        for _, u, started in self._inflight.values():
            if u is not None and done_units[u] is None:
                copies.setdefault(u, []).append(now - started)
        late = [(min(ages), u) for u, ages in copies.items() if len(ages) == 1 and min(ages) > limit]
        return max(late)[1] if late else None

    def _retire(self, actor: int, exc: Exception) -> None:
        if self.actors[actor] is not None:
            cause = one_line(exc)
            log.warning("Ray actor %d dropped (Ray gave up on its restarts or task retries): %s", actor, cause)
            self.failures.append({"actor": actor, "cause": cause})
            self.actors[actor] = None

    def close(self) -> None:
        ray, t0 = self._ray, time.perf_counter()
        for a in self.actors:
            if a is not None:
                try:
                    ray.kill(a)
                except Exception:  # already dead
                    pass
        self.actors, self._inflight = [], {}
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()  # stops a Ray we started; only disconnects from an existing cluster
        self._owns_ray = False
        self.timings.setdefault("shutdown", time.perf_counter() - t0)

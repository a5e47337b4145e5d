"""Population evaluation on Ray actors: a laptop (Ray started here) or an existing cluster.

One cluster connection and one set of actors per search (ray_cluster.py: the connection, bound to
127.0.0.1 when we start Ray; ray_actors.py: the actors and their start-up deadline). Each actor builds
data and model from the config once; θ0 goes through the object store once, so every node trains
from the driver's exact tensors. Ray restarts dead actors and retries their tasks; when Ray gives up,
or the actor's node is marked dead, the driver resubmits the task to a live actor; only then does the
individual get the worst fitness, with the cause. Results come back in task order, and seeds come
from the tasks (derived from each individual's identity), so Ray and the local backend agree.
Faults are reported once, in our words; Ray's own `(raylet)` console lines are kept out of the run.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from typing import Any

import torch

from evo_pai.core.config import Config, to_dict
from evo_pai.data.datasets import DataSplits, load_data
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import register_backend
from evo_pai.training.burst import BurstResult
from evo_pai.training.tasks import BurstTask, Evaluator, Progress, dtype_of, initial_model
from evo_pai.evaluation.payload import split_payload
from evo_pai.evaluation.ray_actors import dead_nodes, log, start_actors, stop_actor
from evo_pai.evaluation.ray_checks import local_plan_check
from evo_pai.evaluation.ray_cluster import RaylineFilter, connect, one_line, preserved_rng, reachable
from evo_pai.evaluation.ray_plan import check_device, plan_actors
from evo_pai.evaluation.ray_worker import BurstWorker, actor_trainer, failed_result, on_cpu, shipped_components

__all__ = ["BurstWorker", "RayEvaluator", "actor_trainer", "failed_result", "on_cpu", "one_line", "plan_actors",
           "reachable"]

# An idle actor re-runs a unit of work in flight for longer than both of these (a hung actor, or one
# whose node is gone before Ray notices). Time is per epoch of work, so a 30-epoch final training is
# not "late" next to 1-epoch bursts. Silent: a healthy run that happens to be slow shows nothing.
STRAGGLER_FACTOR = 4.0  # x the median seconds per epoch of work, times this unit's epochs
STRAGGLER_SECONDS = 10.0
POLL_SECONDS = 0.5  # how often the dispatcher looks for stragglers while it waits
NODE_CHECK_SECONDS = 2.0  # how often it asks the cluster which nodes are dead


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
        self.nodes: list[tuple[str, str] | None] = []  # (node id, IP) of each actor
        self._inflight: dict[Any, tuple[int, int | None, float]] = {}  # ref -> (actor, unit index, start)
        self._unit_epochs: dict[int, float] = {}  # unit index -> epochs of work in it (this call)
        self._per_epoch: list[float] = []  # seconds per epoch of work of finished units
        self._rayline = RaylineFilter(ray)  # before ray.init: its error listener starts there
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
            shipped_components(cfg)  # a module handed to evo_pai.search() that cannot be pickled

    def _connect(self) -> None:
        if not self._ray.is_initialized():
            self.preflight(self.cfg)
        self._owns_ray = connect(self._ray, self.cfg)

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
        shipped = shipped_components(self.cfg)
        shipped = ray.put(shipped) if shipped else None  # once, whatever the number of actors (and restarts)
        self.actors, self.nodes, gpu_ids = start_actors(
            ray, lambda: remote.remote(to_dict(self.cfg), threads, device, self.trainer, gpus, shipped), n, self._theta0,
            ev.actor_start_timeout_s, self._rayline.last)
        self.gpu_ids = [ids for a, ids in zip(self.actors, gpu_ids) if a is not None]  # as Ray assigned them
        n = self.live_actors
        where = f", GPU ids {self.gpu_ids}" if gpus > 0 else ""
        self.device_name = (f"ray: {n} actor{'s' if n > 1 else ''} x {device} ({cpus:g} CPU, {gpus:g} GPU each"
                            f"{where}, {self.trainer} trainer)")

    # -- running ----------------------------------------------------------------------
    def actor_pids(self) -> list[int | None]:
        """Process id of each actor (None for one Ray gave up on); tests use it to kill one."""
        refs = [a.pid.remote() if a is not None else None for a in self.actors]
        return [self._ray.get(r, timeout=60) if r is not None else None for r in refs]

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
        self._unit_epochs = {u: sum(float(tasks[i].epochs) for i in members) for u, members in enumerate(units)}
        done_units: list[list[BurstResult] | None] = [None] * len(units)
        resubmits = [0] * len(units)
        queue = deque(range(len(units)))
        busy = {a for a, _, _ in self._inflight.values()}  # copies left over from an earlier call
        idle = deque(i for i, a in enumerate(self.actors) if a is not None and i not in busy)
        remaining, finished, reported = len(units), 0, 0
        next_node_check = time.monotonic() + NODE_CHECK_SECONDS

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

        def lost(actor: int, u: int | None, cause: str) -> None:
            """The actor is gone (Ray gave up on it, or its node died): its unit goes to a live actor."""
            self._retire(actor, cause)
            if u is None or done_units[u] is not None or any(j == u for _, j, _ in self._inflight.values()):
                return  # another copy of this share is still running or already finished
            resubmits[u] += 1
            if resubmits[u] > limit:
                why = (f"gave up after {resubmits[u]} Ray actor failure(s) on this share "
                       f"(evaluation.max_retries={limit}): {cause}")
                log.warning("Ray: individual(s) %s get the worst fitness: %s", units[u], why)
                finish(u, [failed_result(tasks[i], why) for i in units[u]])
            else:
                queue.appendleft(u)  # resubmit to the next live actor

        while remaining:
            while idle and queue:
                u = queue.popleft()
                if done_units[u] is None:
                    submit(idle.popleft(), u)
            if idle and not queue:
                straggler = self._straggler(done_units)
                if straggler is not None:  # first result wins; said only if it turns out to matter
                    log.debug("re-running share %d on actor %d", straggler, idle[0])
                    submit(idle.popleft(), straggler)
            if progress and reported < finished:  # after refilling: no actor waits on the bar
                progress(finished - reported)
                reported = finished
            if not self._inflight:
                raise EvoPaiError(f"all Ray actors are gone ({self.failures[-1]['cause'] if self.failures else 'unknown cause'}); "
                                  "the last checkpoint is kept: `evo-pai resume RUN_DIR` after fixing the cluster")
            done, _ = ray.wait(list(self._inflight), num_returns=1, timeout=POLL_SECONDS)
            if time.monotonic() >= next_node_check:
                next_node_check = time.monotonic() + NODE_CHECK_SECONDS
                self._drop_dead_nodes(lost)
            for ref in done:
                if ref not in self._inflight:
                    continue  # dropped with its node in this round
                actor, u, started = self._inflight.pop(ref)
                try:
                    res = ray.get(ref, timeout=60)  # ready: returns at once
                except RayActorError as exc:
                    lost(actor, u, f"Ray gave up on its restarts or task retries: {one_line(exc)[:200]}")
                    continue
                except RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                    if isinstance(cause, EvoPaiError):
                        raise EvoPaiError(str(cause)) from None
                    raise
                idle.append(actor)
                if u is not None and done_units[u] is None:
                    self._per_epoch.append((time.perf_counter() - started) / max(self._unit_epochs[u], 1e-9))
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

    def _drop_dead_nodes(self, lost) -> None:
        """Actors on a node the cluster marked dead are lost now, not after Ray's restart waits for a CPU."""
        dead = dead_nodes(self._ray)
        for i, where in enumerate(self.nodes):
            if self.actors[i] is not None and where is not None and where[0] in dead:
                refs = [r for r, (a, _, _) in self._inflight.items() if a == i]
                units = [self._inflight.pop(r)[1] for r in refs]
                stop_actor(self._ray, self.actors[i], refs)
                for u in units or [None]:
                    lost(i, u, f"its node {where[1]} ({where[0][:8]}) died")

    def _straggler(self, done_units: list) -> int | None:
        """A unit of work running far longer than its epochs should take (a hung actor): run it again."""
        if not self._per_epoch:
            return None
        per_epoch = statistics.median(self._per_epoch[-64:])
        now, copies = time.perf_counter(), {}
        for _, u, started in self._inflight.values():
            if u is not None and done_units[u] is None:
                copies.setdefault(u, []).append(now - started)
        late = [(min(ages), u) for u, ages in copies.items() if len(ages) == 1 and
                min(ages) > max(STRAGGLER_FACTOR * per_epoch * self._unit_epochs[u], STRAGGLER_SECONDS)]
        return max(late)[1] if late else None

    def _retire(self, actor: int, cause: str) -> None:
        if self.actors[actor] is not None:
            where = self.nodes[actor][1] if actor < len(self.nodes) and self.nodes[actor] else "?"
            log.warning("Ray: actor %d on %s lost (%s); its work moves to the other actors", actor, where, cause)
            self.failures.append({"actor": actor, "cause": cause})
            stop_actor(self._ray, self.actors[actor])
            self.actors[actor] = None

    def close(self) -> None:
        ray, t0 = self._ray, time.perf_counter()
        for i, a in enumerate(self.actors):
            if a is not None:
                stop_actor(ray, a, [r for r, (j, _, _) in self._inflight.items() if j == i])
        self.actors, self._inflight = [], {}
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()  # stops a Ray we started; only disconnects from an existing cluster
        self._owns_ray = False
        self._rayline.remove()
        self.timings.setdefault("shutdown", time.perf_counter() - t0)

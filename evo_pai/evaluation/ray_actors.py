"""The Ray actors of a search: what runs inside one, and starting them under a deadline.

Start-up is the one wait on Ray that nothing else bounds: an actor placed on a node that dies while
it starts is restarted by Ray elsewhere, and where no CPU is free that restart waits for resources
forever. So every actor must answer `ready()` within `evaluation.actor_start_timeout_s`; one that
dies on the way is started again elsewhere (once per actor), one that is still not ready at the
deadline is dropped, and the search goes on with the actors that did start. If none did, the run
stops with one line naming the dead nodes and the cause.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable

import torch

from ..config import Config, build_config
from ..data import DataSplits, load_data
from ..errors import EvoPaiError
from ..registry import import_plugins
from ..training.burst import BurstResult
from ..training.stacked import StackedForward
from ..training.tasks import BurstTask
from .base import WorkerContext
from .ray_cluster import one_line
from .vectorized import BatchedTrainer

log = logging.getLogger("evo_pai.evaluation.ray")


class BurstWorker:
    """The body of one Ray actor. Plain class: wrapped with `ray.remote` at run time."""

    def __init__(self, cfg_raw: dict, threads: int, device: str, trainer: str = "sequential"):
        torch.set_num_threads(threads)  # Ray sets OMP threads to 1 in workers; use the CPUs we reserved
        self.device, self.trainer, self.error, self.context = device, trainer, None, None
        try:
            self.cfg = build_config(cfg_raw)
            import_plugins(self.cfg.plugins)
            self.data = load_data(self.cfg.data)  # from this node's files, never shipped per task
        except Exception as exc:  # reported by ready(): one line on the driver, not a dead actor
            self.error = str(exc) if isinstance(exc, EvoPaiError) else f"{type(exc).__name__}: {exc}"

    def ready(self, theta0_ref: list) -> tuple[int, str, str, str | None]:
        """Build model and θ0 now, so start-up cost is not counted as the first task's time.
        Returns (pid, node id, node IP, error or None)."""
        import ray

        if self.error is None:
            try:
                self._build(theta0_ref)
            except Exception as exc:
                self.error = str(exc) if isinstance(exc, EvoPaiError) else f"{type(exc).__name__}: {exc}"
        ctx = ray.get_runtime_context()
        return os.getpid(), ctx.get_node_id(), ray.util.get_node_ip_address(), self.error

    def pid(self) -> int:
        return os.getpid()

    def _build(self, theta0_ref: list) -> None:
        if self.context is None:  # θ0 from the object store (wrapped in a list: Ray passes the reference)
            import ray

            self.context = WorkerContext(self.cfg, self.device, self.data, theta0=ray.get(theta0_ref[0]))
            self.data = None  # the context holds its own copy on the device
            # planned here, so a share too large for this node's memory is refused by ready()
            self.batched = BatchedTrainer(self.context) if self.trainer == "vectorized" else None

    def run(self, tasks: list[BurstTask], theta0_ref: list) -> list[BurstResult]:
        """One unit of work: this actor's share of a population, trained together or one by one."""
        if self.error:  # a restarted actor whose set-up failed on this node
            raise EvoPaiError(f"a Ray actor could not build the data and model: {self.error}")
        self._build(theta0_ref)  # after a restart Ray re-runs __init__ only
        if self.batched is not None:
            return self.batched.run(tasks)
        return [self.context.run(t) for t in tasks]


def failed_result(task: BurstTask, cause: str) -> BurstResult:
    """Worst fitness (finite=0) with the cause; zero traits so variation operators still work."""
    zeros = {k: torch.zeros(m.shape) for k, m in task.mask.items()}
    return BurstResult(
        metrics={"finite": 0.0, "error": cause},
        traits={"weight": zeros, "rel_change": dict(zeros), "grad_accum": dict(zeros)},
    )


def on_cpu(task: BurstTask) -> BurstTask:
    """CUDA tensors never cross to an actor: a start state from a GPU driver is moved first."""
    if task.start is None or all(v.device.type == "cpu" for v in task.start.values()):
        return task
    return dataclasses.replace(task, start={k: v.to("cpu") for k, v in task.start.items()})


def actor_trainer(cfg: Config, model: torch.nn.Module, data: DataSplits) -> str:
    """evaluation.actor_trainer resolved: 'auto' is vectorized when the model can be batched."""
    choice = cfg.evaluation.actor_trainer
    if choice == "sequential":
        return choice
    try:
        StackedForward(model, cfg.model.name, data.input_shape, cfg.train.batch_size)
    except EvoPaiError:
        if choice == "vectorized":
            raise
        return "sequential"  # e.g. BatchNorm models: trained one by one, as the local backend does
    return "vectorized"


def stop_actor(ray, actor: Any, refs: list = ()) -> None:
    """Cancel the actor's tasks in flight, then kill it: a kill with a task in flight makes the raylet
    print `Task ... failed ... killed by ray.kill` on the driver; a cancelled task does not."""
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:  # already finished or its actor already dead
            pass
    try:
        ray.kill(actor)
    except Exception:  # already dead
        pass


def dead_nodes(ray) -> dict[str, str]:
    """node id -> IP of every node the cluster has marked dead."""
    try:
        return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if not n.get("Alive", True)}
    except Exception:  # the GCS itself is unreachable: nothing to name
        return {}


def start_actors(ray, make: Callable[[], Any], n: int, theta0: list, timeout: float,
                 last_raylet_line: Callable[[], str | None]) -> tuple[list, list[tuple[str, str] | None]]:
    """Start n actors; returns (actors, their (node id, IP)), None for one that did not start in time."""
    from ray.exceptions import RayActorError

    actors = [make() for _ in range(n)]
    where: list[tuple[str, str] | None] = [None] * n
    pending = {a.ready.remote(theta0): i for i, a in enumerate(actors)}
    started_again = [False] * n
    causes: list[str] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        for ref in done:
            i = pending.pop(ref)
            try:
                _, node, ip, error = ray.get(ref, timeout=30)
            except RayActorError as exc:  # died while starting: its node or its process
                causes.append(one_line(exc)[:200])
                stop_actor(ray, actors[i])
                if started_again[i]:
                    actors[i] = None
                else:  # start it again: Ray places it on a live node with free resources
                    started_again[i] = True
                    actors[i] = make()
                    pending[actors[i].ready.remote(theta0)] = i
                continue
            if error:
                raise EvoPaiError(f"a Ray actor could not build the data and model: {error} "
                                  "(every node needs evo-pai, its plugins and the dataset files)")
            where[i] = (node, ip)
    for ref, i in pending.items():  # not ready by the deadline: never given work
        stop_actor(ray, actors[i], [ref])
        actors[i] = None
    live = sum(a is not None for a in actors)
    if live < n:
        cause = startup_cause(ray, causes, last_raylet_line())
        if live == 0:
            raise EvoPaiError(f"Ray: no actor was ready within evaluation.actor_start_timeout_s={timeout:g} s "
                              f"({cause}); check the cluster (`ray status`) and resume the run")
        log.warning("Ray: %d of %d actors were not ready within %g s (%s); continuing with %d",
                    n - live, n, timeout, cause, live)
    return actors, where


def startup_cause(ray, causes: list[str], raylet: str | None) -> str:
    dead = dead_nodes(ray)
    parts = [f"node {ip} ({node[:8]}) died" for node, ip in dead.items()]
    if not parts:
        free = ray.available_resources().get("CPU", 0.0)
        parts.append(f"waiting for resources, {free:g} CPU free" if not causes else causes[-1])
    elif causes:
        parts.append(causes[-1][:120])
    if raylet and not dead:
        parts.append(f"Ray says: {raylet[:160]}")
    return "; ".join(parts)

"""The Ray actors of a search (their body is ray_worker.BurstWorker): starting them under a deadline,
stopping them quietly, and which nodes are dead.

Start-up is the one wait on Ray that nothing else bounds: an actor placed on a node that dies while
it starts is restarted by Ray elsewhere, and where no CPU is free that restart waits for resources
forever. So every actor must answer `ready()` within `evaluation.actor_start_timeout_s`; one that
dies on the way is started again elsewhere (once per actor), one that is still not ready at the
deadline is dropped, and the search goes on with the actors that did start. If none did, the run
stops with one line naming the dead nodes and the cause.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from evo_pai.core.errors import EvoPaiError
from evo_pai.evaluation.ray_cluster import one_line

log = logging.getLogger("evo_pai.evaluation.ray")


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
                 last_raylet_line: Callable[[], str | None]) -> tuple[list, list[tuple[str, str] | None], list[list]]:
    """Start n actors; returns (actors, their (node id, IP), their GPU ids); None for one not ready in time."""
    from ray.exceptions import RayActorError

    actors = [make() for _ in range(n)]
    where: list[tuple[str, str] | None] = [None] * n
    gpu_ids: list[list] = [[] for _ in range(n)]
    pending = {a.ready.remote(theta0): i for i, a in enumerate(actors)}
    started_again = [False] * n
    causes: list[str] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        for ref in done:
            i = pending.pop(ref)
            try:
                _, error, ids, node, ip = ray.get(ref, timeout=30)
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
            where[i], gpu_ids[i] = (node, ip), list(ids)
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
    return actors, where, gpu_ids


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

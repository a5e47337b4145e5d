"""The Ray connection of a search: start a private local Ray (127.0.0.1 only, no metrics) or join a
cluster; keep Ray's own console chatter out of the run; shut down what we started.

A local Ray started by `ray.init()` binds its GCS, raylet, workers and agents to the machine's
routable address (0.0.0.0/[::] for the gRPC servers in Ray 2.60) and runs three Prometheus endpoints
without authentication: the per-node metrics agent, the autoscaler monitor (port 44217) and the
dashboard head (44227). `ray.init(_node_ip_address="127.0.0.1")` does not help: Ray resolves a loopback
address to the routable one (`services.resolve_ip_for_localhost`). What does work in Ray 2.60:

- node IP = 127.0.0.1: Ray's own single-machine mode (`ray_constants.ENABLE_RAY_CLUSTER` false, the
  default on macOS/Windows, env `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`); every server then binds
  to 127.0.0.1 (Ray binds gRPC servers to the node IP since ray-project/ray#55484);
- metrics off: `_system_config={"enable_metrics_collection": False}` (the node's metrics agent), and
  the two fixed-port endpoints pointed at port -1 (`AUTOSCALER_METRIC_PORT`, `DASHBOARD_METRIC_PORT`):
  they fail to bind, log that in Ray's session logs, and Ray carries on;
- token authentication stays on (Ray's default for a cluster it starts); its WARNING saying so is not
  shown (the `authentication_token_setup` logger is raised to ERROR during `ray.init`).

Ray 2.60 always starts its API server process (`dashboard.py` without the dashboard UI) next to the
GCS; with the settings above it listens on nothing. tests/test_ray_quiet.py checks what listens.
"""
from __future__ import annotations

import logging
import os
import random
import socket
from collections import deque
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import numpy as np
import torch

from evo_pai.core.config import Config
from evo_pai.core.errors import EvoPaiError

LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single-machine mode: node IP 127.0.0.1
    "AUTOSCALER_METRIC_PORT": "-1",  # no autoscaler Prometheus endpoint
    "DASHBOARD_METRIC_PORT": "-1",  # no dashboard-head Prometheus endpoint
    "RAY_USAGE_STATS_ENABLED": "0",  # a private run reports nothing anywhere
}
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def one_line(text: object) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return " | ".join(lines[:3]) if lines else "unknown error"


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


@contextmanager
def preserved_rng() -> Iterator[None]:
    """ray.init draws from Python's `random`; DEAP's selection must not notice Ray was started."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set env vars for the processes ray.init spawns (they inherit them), then put ours back."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _single_machine(ray) -> Iterator[None]:
    """Ray's own single-machine switch, also for a driver that imported ray before we set the env."""
    consts = ray._private.ray_constants
    before = getattr(consts, "ENABLE_RAY_CLUSTER", None)
    consts.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before is not None:
            consts.ENABLE_RAY_CLUSTER = before


def connect(ray, cfg: Config) -> bool:
    """ray.init for this search; True when we started Ray (so we also stop it)."""
    address = cfg.evaluation.address
    if ray.is_initialized():
        return False  # the caller owns the connection (a notebook, `ray job submit`)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if local:
        kwargs.update(include_dashboard=False, _system_config={"enable_metrics_collection": False})
    auth_log = logging.getLogger(AUTH_LOGGER)
    level = auth_log.level
    # Ray turns token authentication on for a cluster it starts (and when a token exists) and says so
    # with a WARNING on every run; we keep it on, document it (docs/distributed.md) and skip the notice
    auth_log.setLevel(logging.ERROR)
    try:
        with _environment(LOCAL_ENV if local else {}), (_single_machine(ray) if local else nullcontext()):
            ray.init(address=address, **kwargs)
    except Exception as exc:
        where = f"at {address}" if address else "locally"
        hint = ("is the cluster up (`ray status`)? With token authentication, set RAY_AUTH_MODE=token "
                "and make the cluster's token available (~/.ray/auth_token)") if address else "see `ray start --help`"
        raise EvoPaiError(f"evaluation.address: cannot start or reach Ray {where} ({one_line(exc)}); {hint}") from None
    finally:
        auth_log.setLevel(level)
    return True


class RaylineFilter:
    """Keeps Ray's `(raylet) ...` console lines out of a run while it is installed.

    Ray prints every error the raylet publishes for this job on the driver's stdout, with ANSI colour,
    whatever `log_to_driver` says (`ray._private.worker.listen_error_messages`): a task retried after
    an actor restart, a worker killed by ray.kill, an OOM kill. The evaluator reports such faults
    itself, once and in its own words; the raylet's lines are kept here (the last 20) so that an error
    message can quote the newest one as the cause."""

    def __init__(self, ray):
        self.lines: deque[str] = deque(maxlen=20)
        self._module = getattr(getattr(ray, "_private", None), "worker", None)
        self._original = getattr(self._module, "print_to_stdstream", None)
        if self._original is not None:
            self._module.print_to_stdstream = self._print

    def _print(self, data: dict, *args, **kwargs):
        if data.get("pid") == "raylet":
            self.lines.extend(one_line(line) for line in data.get("lines", []))
            return None
        return self._original(data, *args, **kwargs)

    def last(self) -> str | None:
        return self.lines[-1] if self.lines else None

    def remove(self) -> None:
        if self._original is not None and getattr(self._module, "print_to_stdstream", None) == self._print:
            self._module.print_to_stdstream = self._original
        self._original = None

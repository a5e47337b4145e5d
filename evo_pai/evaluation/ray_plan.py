"""How many Ray actors, with which resources, on which device: a pure function of the config and the
cluster's resources, so every rule is testable without a cluster that has GPUs.

GPUs: `gpus_per_actor` unset means 1 per actor when the cluster has GPUs (and evaluation.device is
not cpu), else 0 (CPU actors: the documented fall-back of `device: auto`). GPUs asked for explicitly
(`gpus_per_actor > 0`, or `device: cuda`) on a cluster without them is a one-line error, never a
silent CPU run. Fractions pack several actors on one GPU (0.25 = four per GPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from evo_pai.core.config import EvaluationConfig
from evo_pai.core.errors import EvoPaiError

_SLACK = 1e-9  # Ray's resource sums are floats: 4 x 0.25 may be 0.9999999


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    cpus: float  # per actor
    gpus: float  # per actor
    device: str  # inside each actor: cuda (Ray's CUDA_VISIBLE_DEVICES picks the GPU) or cpu


def check_device(ev: EvaluationConfig) -> None:
    """Checked before a run folder exists."""
    if ev.device.startswith("cuda:"):
        raise EvoPaiError(f"evaluation.device: '{ev.device}' names one GPU, but Ray assigns each actor its own GPU; "
                          "use cuda or auto with evaluation.backend ray (or CUDA_VISIBLE_DEVICES on the nodes)")
    if ev.device == "cuda" and ev.gpus_per_actor == 0:
        raise EvoPaiError("evaluation.gpus_per_actor: 0 GPUs per actor with evaluation.device=cuda; "
                          "give actors a GPU share (e.g. 0.25) or use device cpu")
    if ev.device == "cpu" and ev.gpus_per_actor:
        raise EvoPaiError("evaluation.gpus_per_actor: GPUs were asked for with evaluation.device=cpu; "
                          "set device to auto or cuda")


def plan_actors(ev: EvaluationConfig, population: int, total: Mapping[str, float],
                free: Mapping[str, float]) -> ActorPlan:
    """`total` / `free`: ray.cluster_resources() / ray.available_resources()."""
    check_device(ev)
    cluster_gpus, cluster_cpus = float(total.get("GPU", 0.0)), float(total.get("CPU", 0.0))
    if ev.device == "cpu":
        gpus = 0.0
    elif ev.device == "auto":
        gpus = ev.gpus_per_actor if ev.gpus_per_actor is not None else (1.0 if cluster_gpus >= 1 else 0.0)
    else:  # cuda
        gpus = ev.gpus_per_actor if ev.gpus_per_actor is not None else 1.0
    if gpus > cluster_gpus + _SLACK:
        raise EvoPaiError(f"evaluation.gpus_per_actor: {gpus:g} GPU per actor asked for but the Ray cluster has "
                          f"{cluster_gpus:g}; use evaluation.device=cpu (or auto without gpus_per_actor) or a "
                          "cluster with GPUs")
    cpus = ev.cpus_per_actor
    if cpus > cluster_cpus:
        raise EvoPaiError(f"evaluation.cpus_per_actor: {cpus:g} CPUs per actor but the Ray cluster has "
                          f"{cluster_cpus:g}; lower it")
    if ev.num_actors == "auto":
        # one per free GPU (per GPU share), and never more than the free CPUs can hold: an actor that
        # cannot be placed would wait forever
        n = math.floor(free.get("CPU", 0.0) / cpus + _SLACK)
        if gpus > 0:
            n = min(n, math.floor(free.get("GPU", 0.0) / gpus + _SLACK))
        n = max(1, min(n, population))  # more actors than individuals would idle
    else:
        n = ev.num_actors
        if n < 1:
            raise EvoPaiError(f"evaluation.num_actors: {n} actors cannot train anything; use 1 or more, or auto")
        need_cpu, need_gpu = n * cpus, n * gpus
        if need_cpu > cluster_cpus + _SLACK or need_gpu > cluster_gpus + _SLACK:
            raise EvoPaiError(f"evaluation.num_actors: {n} actors need {need_cpu:g} CPUs and {need_gpu:g} GPUs; "
                              f"the cluster has {cluster_cpus:g} and {cluster_gpus:g}; use fewer actors or auto")
    return ActorPlan(n, cpus, gpus, "cuda" if gpus > 0 else "cpu")

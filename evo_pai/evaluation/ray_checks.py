"""Checks for a Ray that evo-pai starts on this machine, made before a run folder exists.

Kept apart from the backend (evaluation/ray.py) so they run without starting Ray: the CPUs Ray
would see here, and the device, against what the config asks of the actors.
"""
from __future__ import annotations

import os
import sys

import torch

from evo_pai.core.config import Config
from evo_pai.core.errors import EvoPaiError


def local_cpus() -> int:
    """The CPUs a Ray started here would offer (Ray's own count, which honours cgroup limits)."""
    try:
        from ray._private.utils import get_num_cpus

        return int(get_num_cpus())
    except Exception:  # pragma: no cover - a Ray without that helper
        return os.cpu_count() or 1


def local_plan_check(cfg: Config) -> None:
    """The `_plan` refusals for a Ray evo-pai starts on this machine, made before anything is created."""
    ev = cfg.evaluation
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return  # the caller started Ray with its own resources; `_plan` checks against those
    if ev.device.startswith("cuda") and not torch.cuda.is_available():
        raise EvoPaiError(f"evaluation.device: '{ev.device}' asked for but CUDA is not available; use cpu or auto")
    if ev.gpus_per_actor and not torch.cuda.is_available():  # never a silent CPU run (docs/gpu.md)
        raise EvoPaiError(f"evaluation.gpus_per_actor: {ev.gpus_per_actor:g} GPU per actor asked for, but Ray would "
                          "start on this machine, where torch sees no CUDA GPU; use evaluation.device=cpu (or auto "
                          "without gpus_per_actor) or join a GPU cluster with evaluation.address")
    cpus = local_cpus()
    if ev.cpus_per_actor > cpus:
        raise EvoPaiError(f"evaluation.cpus_per_actor: {ev.cpus_per_actor:g} CPUs per actor but this machine has {cpus}; lower it")
    if ev.num_actors != "auto" and ev.num_actors * ev.cpus_per_actor > cpus + 1e-9:
        raise EvoPaiError(f"evaluation.num_actors: {ev.num_actors} actors x {ev.cpus_per_actor:g} CPUs need "
                          f"{ev.num_actors * ev.cpus_per_actor:g} CPUs but this machine has {cpus}; use fewer actors or auto")

"""Ray actor planning (evaluation/ray_plan.py): how many actors, which resources, which device, for
cluster resources as Ray reports them. The CPU-only fall-back on a real cluster is in test_ray.py."""
from __future__ import annotations

import pytest

from evo_pai.core.config import EvaluationConfig
from evo_pai.core.errors import EvoPaiError
from evo_pai.evaluation.ray_plan import plan_actors

GPU_NODE = {"CPU": 16.0, "GPU": 1.0}
TWO_GPUS = {"CPU": 16.0, "GPU": 2.0}
CPU_NODE = {"CPU": 4.0}


def plan(resources, population=16, free=None, **ev):
    return plan_actors(EvaluationConfig(backend="ray", **ev), population, resources, free or resources)


def test_auto_is_one_actor_per_gpu_each_on_its_own_gpu():
    p = plan(TWO_GPUS)
    assert (p.actors, p.gpus, p.device) == (2, 1.0, "cuda")
    assert plan(TWO_GPUS, free={"CPU": 16.0, "GPU": 1.0}).actors == 1  # only free GPUs count


def test_fractional_gpus_pack_actors_on_one_gpu():
    p = plan(GPU_NODE, gpus_per_actor=0.25)
    assert (p.actors, p.gpus, p.cpus, p.device) == (4, 0.25, 1.0, "cuda")
    assert plan(GPU_NODE, gpus_per_actor=0.25, num_actors=4).actors == 4
    assert plan(GPU_NODE, gpus_per_actor=0.1, cpus_per_actor=4).actors == 4  # CPUs bound it: 16 / 4
    assert plan(GPU_NODE, population=3, gpus_per_actor=0.25).actors == 3  # no idle actors


def test_cpu_fall_back_and_explicit_cpu():
    p = plan(CPU_NODE)  # device auto, no gpus_per_actor, no GPUs: CPU actors (documented fall-back)
    assert (p.actors, p.gpus, p.device) == (4, 0.0, "cpu")
    assert plan(GPU_NODE, device="cpu").device == "cpu"


@pytest.mark.parametrize("ev,match", [
    ({"gpus_per_actor": 0.25}, r"^evaluation.gpus_per_actor: 0.25 GPU per actor asked for but the Ray cluster has 0"),
    ({"device": "cuda"}, r"^evaluation.gpus_per_actor: 1 GPU per actor .* has 0"),
    ({"device": "cpu", "gpus_per_actor": 1}, r"^evaluation.gpus_per_actor: GPUs were asked for with evaluation.device=cpu"),
    ({"device": "cuda", "gpus_per_actor": 0}, r"^evaluation.gpus_per_actor: 0 GPUs per actor with evaluation.device=cuda"),
    ({"device": "cuda:1"}, r"^evaluation.device: 'cuda:1' names one GPU, but Ray assigns each actor its own GPU"),
    ({"num_actors": 8}, r"^evaluation.num_actors: 8 actors need 8 CPUs"),
])
def test_impossible_requests_are_one_line_errors(ev, match):
    with pytest.raises(EvoPaiError, match=match) as exc:
        plan(CPU_NODE, **ev)
    assert "\n" not in str(exc.value)


def test_too_many_gpu_actors_refused():
    with pytest.raises(EvoPaiError, match=r"5 actors need 5 CPUs and 1.25 GPUs"):
        plan(GPU_NODE, gpus_per_actor=0.25, num_actors=5)

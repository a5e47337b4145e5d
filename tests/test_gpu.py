"""On a CUDA GPU: CPU and CUDA agree in float64, the vectorized backend equals the local one there,
pruners score the same, precision/compile/memory planning work, Ray actors get their GPU share.

Every test is marked `gpu` and skipped (with the reason) where torch sees no CUDA GPU; run them on
the device machine with `python -m pytest tests/test_gpu.py -m gpu` (docs/gpu.md).
"""
from __future__ import annotations

import pytest
import torch

from evo_pai.core.config import build_config
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import WorkerContext, make_evaluator
from evo_pai.core.masks import MaskSet
from evo_pai.operators.pruners import ScoreContext, prune
from evo_pai.runs.runner import run_experiment
from evo_pai.search.experiment import Experiment
from evo_pai.training.stacked import StackedForward

from conftest import tiny_raw
from test_vectorized import F64_TOL, assert_same, both, mixed_tasks, raw_for

pytestmark = pytest.mark.gpu

METRIC_TOL = 1e-9  # the target: CPU vs CUDA, float64, max |Δ metric|
TRAIT_REL = 1e-6  # traits are handed back in float32: a float64 difference of 1e-15 can flip a last bit


def cuda_raw(raw: dict, **evaluation) -> dict:
    return {**raw, "evaluation": {**raw["evaluation"], "device": "cuda", **evaluation}}


def assert_cpu_cuda_close(a, b) -> None:
    """Metrics and float64 states within METRIC_TOL; float32 traits within TRAIT_REL; all on CPU."""
    assert a.metrics.keys() == b.metrics.keys()
    assert max(abs(a.metrics[k] - b.metrics[k]) for k in a.metrics) <= METRIC_TOL
    for t in a.traits:
        for n in a.traits[t]:
            x, y = a.traits[t][n].double(), b.traits[t][n].double()
            assert b.traits[t][n].device.type == "cpu"
            assert float((x - y).norm() / (x.norm() + 1e-30)) <= TRAIT_REL, (t, n)
    assert (a.state is None) == (b.state is None)
    if a.state is not None:
        assert max(float((a.state[k] - b.state[k]).abs().max()) for k in a.state) <= METRIC_TOL


@pytest.mark.parametrize("model", ["mlp", "lenet5", "conv4"])
def test_cpu_and_cuda_agree_in_float64(model):
    """One burst from the same θ0, mask and seed on CPU and on CUDA."""
    raw = raw_for(model, "float64")
    cpu = WorkerContext(build_config(raw), "cpu")
    gpu = WorkerContext(build_config(cuda_raw(raw)), "cuda")
    assert all(torch.equal(cpu.theta0[k], gpu.theta0[k].cpu()) for k in cpu.theta0)  # θ0 built on CPU, moved
    exp = Experiment(cpu.cfg, make_evaluator(cpu.cfg, load_data(cpu.cfg.data)), load_data(cpu.cfg.data))
    for task in mixed_tasks(exp, n=3 if model != "conv4" else 2):
        assert_cpu_cuda_close(cpu.run(task), gpu.run(task))


@pytest.mark.parametrize("model,conv_mode", [("mlp", "auto"), ("lenet5", "auto"), ("conv4", "auto"),
                                             ("conv4", "per_model")])
def test_vectorized_equals_local_on_cuda(model, conv_mode):
    local, vec, exp = both(cuda_raw(raw_for(model, "float64")))
    assert vec.context.device.type == "cuda"
    if conv_mode != "auto":
        vec.trainer.forward = StackedForward(vec.context.model, model, conv_mode=conv_mode)
    else:  # CUDA batches every convolution, the 1-input-channel first layers too
        assert vec.trainer.forward.conv_mode == "grouped" and vec.trainer.forward.min_group_channels == 1
    tasks = mixed_tasks(exp, n=3)
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert_same(a, b, F64_TOL, relative=False)


def test_chunk_size_from_free_gpu_memory():
    cfg = build_config(cuda_raw(raw_for("mlp", "float32"), backend="vectorized"))
    vec = make_evaluator(cfg)
    free, _ = torch.cuda.mem_get_info()
    assert vec.trainer.chunk >= 1 and vec.trainer.chunk * vec.trainer.bytes_per_model <= free


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_on_cuda_runs_and_stays_close(precision):
    raw = cuda_raw(raw_for("lenet5", "float32"))
    ref_local, ref_vec, exp = both(raw)
    raw["train"] = {**raw["train"], "precision": precision}
    local, vec, _ = both(raw)
    tasks = mixed_tasks(exp, n=3)
    for ref, a, b in zip(ref_local.evaluate(tasks), local.evaluate(tasks), vec.evaluate(tasks)):
        for r in (a, b):
            assert abs(r.metrics["val_loss"] - ref.metrics["val_loss"]) < 0.05
            assert r.finite


def test_compiled_step_equals_eager_on_cuda():
    raw = cuda_raw(raw_for("lenet5", "float64"))
    raw["train"]["batch_size"] = 16
    local, vec, exp = both(raw, compile=True)
    tasks = mixed_tasks(exp, n=3)
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert_same(a, b, F64_TOL, relative=False)


@pytest.mark.parametrize("pruner", ["snip", "grasp", "synflow"])
def test_pruners_score_the_same_on_cuda(pruner):
    raw = raw_for("lenet5", "float64")
    cfg = build_config(raw)
    data = load_data(cfg.data)
    exp = Experiment(cfg, make_evaluator(cfg, data), data)
    x, y = data.train_x[:64].double(), data.train_y[:64]
    masks = []
    for device in ("cpu", "cuda"):
        model = exp.model.to(device)
        ctx = ScoreContext(model, list(exp.shapes), x.to(device), y.to(device), torch.Generator().manual_seed(0))
        params = {"iterations": 5} if pruner == "synflow" else {}
        masks.append(prune(pruner, ctx, exp.dense_mask(), 0.8, params=params))
    exp.model.to("cpu")
    agree = sum(int((masks[0][k] == masks[1][k]).sum()) for k in masks[0]) / sum(masks[0][k].numel() for k in masks[0])
    assert agree > 0.999  # ties at the ranking threshold may break differently; nothing else may


def test_search_on_cuda_matches_cpu_in_float64(tmp_path):
    raw = tiny_raw(generations=2)
    raw["train"] = {**raw["train"], "dtype": "float64"}
    summaries = {}
    for device in ("cpu", "cuda"):
        cfg = build_config({**raw, "evaluation": {"device": device, "backend": "vectorized"}})
        (tmp_path / device).mkdir()
        summaries[device] = run_experiment(cfg, tmp_path / device)
    assert MaskSet.load(tmp_path / "cpu" / "mask.safetensors") == MaskSet.load(tmp_path / "cuda" / "mask.safetensors")
    assert abs(summaries["cpu"]["test_loss"] - summaries["cuda"]["test_loss"]) <= METRIC_TOL
    assert "cuda" in summaries["cuda"]["device"]


def test_ray_actors_share_one_gpu():
    ray = pytest.importorskip("ray")
    raw = raw_for("mlp", "float64", backend="ray", num_actors=4, gpus_per_actor=0.25, actor_trainer="vectorized")
    raw["evaluation"]["device"] = "auto"
    raw["search"]["population"] = 8
    cfg = build_config(raw)
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        local, _, exp = both(raw_for("mlp", "float64"))
        tasks = mixed_tasks(exp, n=8)  # one with a start state: moved to CPU before it crosses to an actor
        with make_evaluator(cfg, load_data(cfg.data)) as ev:
            assert "x cuda" in ev.device_name and [len(ids) for ids in ev.gpu_ids] == [1] * 4, ev.device_name
            got = ev.evaluate(tasks)
        for a, b in zip(local.evaluate(tasks), got):
            assert_cpu_cuda_close(a, b)
    finally:
        ray.shutdown()

"""Backend vectorized: per-model results equal the local backend's; refusals and chunking."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from evo_pai.core.config import build_config
from evo_pai.data.datasets import load_data
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import MODEL, register_model
from evo_pai.training.tasks import BurstTask
from evo_pai.evaluation.base import WorkerContext, make_evaluator
from evo_pai.evaluation.vectorized import BatchedTrainer, plan_chunk
from evo_pai.search.experiment import Experiment
from evo_pai.core.masks import MaskSet
from evo_pai.runs.runner import run_experiment
from evo_pai.training.stacked import StackedForward

from conftest import run_cli, tiny_raw

F64_TOL = 1e-10  # |Δ| of every metric, trait element and state element, float64
F32_TOL = 1e-5  # float32: |Δ| of metrics; relative L2 error of traits and states (measured ~1e-7)


def raw_for(model: str, dtype: str, optimizer: str = "adam", **evaluation) -> dict:
    raw = tiny_raw(generations=2)
    if model != "mlp":  # image models: 8x8 digits, a small training subset keeps conv4 fast
        raw["data"] = {"name": "digits", "train_subset": 64}
        raw["model"] = {"name": model}
    raw["train"] = {"dtype": dtype, "optimizer": optimizer, "weight_decay": 1e-3, "batch_size": 16}
    raw["evaluation"] = {"device": "cpu", **evaluation}
    return raw


def both(raw: dict, **evaluation):
    cfg = build_config(raw)
    data = load_data(cfg.data)
    vec_raw = {**raw, "evaluation": {**raw["evaluation"], "backend": "vectorized", **evaluation}}
    local, vec = make_evaluator(cfg, data), make_evaluator(build_config(vec_raw), data)
    return local, vec, Experiment(cfg, local, data)


def mixed_tasks(exp: Experiment, n: int = 4, epochs: float = 1.0) -> list[BurstTask]:
    """Different masks and seeds; one from a trained start state, one keeping state, one with test."""
    start = {k: v * 1.1 for k, v in exp.theta0.items()}
    return [BurstTask(exp.random_mask(0.3 + 0.1 * i, i), epochs, 100 + i, start=start if i == 1 else None,
                      keep_state=i == 0, test=i == 2) for i in range(n)]


def assert_same(a, b, tol: float, relative: bool) -> None:
    assert a.metrics.keys() == b.metrics.keys()
    for k in a.metrics:
        assert abs(a.metrics[k] - b.metrics[k]) <= (tol if k != "val_accuracy" and k != "test_accuracy" or not relative else 0.02), k
    assert a.epochs == b.epochs and a.init_scale == b.init_scale
    pairs = [(a.traits[t][n], b.traits[t][n]) for t in a.traits for n in a.traits[t]]
    assert (a.state is None) == (b.state is None)
    if a.state is not None:
        assert a.state.keys() == b.state.keys()
        pairs += [(a.state[n], b.state[n]) for n in a.state]
    for x, y in pairs:
        assert x.shape == y.shape and x.dtype == y.dtype
        err = float((x.double() - y.double()).norm() / (x.double().norm() + 1e-30)) if relative else float((x - y).abs().max())
        assert err <= tol


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_mlp_float64_equals_local(optimizer):
    local, vec, exp = both(raw_for("mlp", "float64", optimizer))
    tasks = mixed_tasks(exp)
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert_same(a, b, F64_TOL, relative=False)
        assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], abs=F64_TOL)


def test_mlp_float32_within_tolerance():
    local, vec, exp = both(raw_for("mlp", "float32"))
    tasks = mixed_tasks(exp)
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert_same(a, b, F32_TOL, relative=True)


@pytest.mark.parametrize("model,conv_mode", [("lenet5", "grouped"), ("lenet5", "per_model"), ("conv4", "auto")])
def test_conv_models_float64_equal_local(model, conv_mode):
    local, vec, exp = both(raw_for(model, "float64"))
    if conv_mode != "auto":  # both ways of batching convolutions (auto picks by size and device)
        vec.trainer.forward = StackedForward(vec.context.model, model, conv_mode=conv_mode)
    tasks = mixed_tasks(exp, n=2 if model == "conv4" else 3)  # float64 convolutions are slow on CPU
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert_same(a, b, F64_TOL, relative=False)


def test_lenet5_float32_within_tolerance():
    local, vec, exp = both(raw_for("lenet5", "float32"))
    tasks = mixed_tasks(exp, n=3)
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert_same(a, b, F32_TOL, relative=True)


def test_mixed_burst_lengths_and_chunks_keep_task_order():
    local, vec, exp = both(raw_for("mlp", "float64"), chunk_size=2)
    assert vec.trainer.chunk == 2
    tasks = [dataclasses.replace(t, epochs=e) for t, e in zip(mixed_tasks(exp, n=5), [1, 2, 1, 0.5, 2])]
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert_same(a, b, F64_TOL, relative=False)


def test_cache_semantics_match_the_base_evaluator():
    _, vec, exp = both(raw_for("mlp", "float32"))
    tasks = [BurstTask(exp.random_mask(0.5, i), 1.0, i) for i in range(3)]
    first = vec.evaluate(tasks + tasks[:1])  # a duplicate inside one call is trained once
    assert vec.tasks_run == 3 and vec.cache_hits == 1 and first[3] is first[0]
    again = vec.evaluate(tasks)
    assert vec.tasks_run == 3 and vec.cache_hits == 4 and again[1] is first[1]


def test_batched_trainer_for_ray_actors_matches_context_run():
    cfg = build_config(raw_for("mlp", "float64"))
    ctx = WorkerContext(cfg, "cpu")
    exp = Experiment(cfg, make_evaluator(cfg, ctx.data), load_data(cfg.data))
    tasks = mixed_tasks(exp, n=3)
    for a, b in zip([ctx.run(t) for t in tasks], BatchedTrainer(ctx).run(tasks)):
        assert_same(a, b, F64_TOL, relative=False)


def test_search_with_vectorized_backend_matches_local(tmp_path):
    raw = raw_for("mlp", "float64")
    summaries = {}
    for backend in ("local", "vectorized"):
        cfg = build_config({**raw, "evaluation": {"device": "cpu", "backend": backend}})
        (tmp_path / backend).mkdir()
        summaries[backend] = run_experiment(cfg, tmp_path / backend)
    a, b = summaries["local"], summaries["vectorized"]
    assert a["test_accuracy"] == b["test_accuracy"] and a["sparsity"] == b["sparsity"]
    assert a["test_loss"] == pytest.approx(b["test_loss"], abs=F64_TOL)
    assert MaskSet.load(tmp_path / "local" / "mask.safetensors") == MaskSet.load(tmp_path / "vectorized" / "mask.safetensors")


class LayerNormNet(nn.Module):
    """A plugin model the hand path cannot batch (LayerNorm normalises across features): torch.func.vmap does."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.fc, self.norm, self.out = nn.Linear(features, 8), nn.LayerNorm(8), nn.Linear(8, classes)

    def forward(self, x):
        return self.out(self.norm(self.fc(x.flatten(1))))


class BranchyNet(nn.Module):
    """A plugin model nothing can batch: its forward branches on a tensor's value."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        h = self.fc(x.flatten(1))
        return h if h.sum() > 0 else -h


if "test_layernorm_net" not in MODEL:
    register_model("test_layernorm_net", "a plugin model with LayerNorm (tests)")(
        lambda input_shape, num_classes: LayerNormNet(math.prod(input_shape), num_classes))
    register_model("test_branchy_net", "a plugin model with data-dependent control flow (tests)")(
        lambda input_shape, num_classes: BranchyNet(math.prod(input_shape), num_classes))


def test_layernorm_model_is_vectorized_and_an_unbatchable_one_refused_with_one_line():
    raw = raw_for("mlp", "float64")
    raw["model"] = {"name": "test_layernorm_net"}
    local, vec, exp = both(raw)
    assert type(vec.trainer.forward).__name__ == "VmapForward"
    for a, b in zip(local.evaluate(mixed_tasks(exp, n=3)), vec.evaluate(mixed_tasks(exp, n=3))):
        assert_same(a, b, F64_TOL, relative=False)
    raw["model"] = {"name": "test_branchy_net"}
    with pytest.raises(EvoPaiError, match=r"model 'test_branchy_net' has data-dependent control flow.*"
                                          r"use evaluation.backend local, or ray with evaluation.actor_trainer sequential"):
        make_evaluator(build_config({**raw, "evaluation": {"backend": "vectorized", "device": "cpu"}}))


def test_cli_refusal_exit_code_2(tmp_path):
    proc = run_cli("run", "configs/quickstart.yaml", "--set", "evaluation.backend=vectorized",
                   "--set", "evaluation.max_memory_gb=0.000001", "--out", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "evaluation.max_memory_gb" in lines[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_unbatchable_layers_are_refused():
    with pytest.raises(EvoPaiError, match="AlphaDropout"):
        StackedForward(nn.Sequential(nn.Linear(4, 4), nn.AlphaDropout(0.5)), "plugin")
    with pytest.raises(EvoPaiError, match="LSTM"):
        StackedForward(nn.Sequential(nn.LSTM(4, 4)), "plugin")


def test_memory_budget_refuses_before_training():
    cfg = build_config(raw_for("mlp", "float32"))
    per_model = BatchedTrainer(WorkerContext(cfg, "cpu")).bytes_per_model
    budget_gb = 3.5 * per_model / 2**30
    fits = make_evaluator(build_config(raw_for("mlp", "float32", backend="vectorized", max_memory_gb=budget_gb)))
    assert fits.trainer.chunk == 3  # chunk_size unset: the largest chunk inside the budget
    with pytest.raises(EvoPaiError, match=r"evaluation.chunk_size: 4 .* at most 3"):
        make_evaluator(build_config(raw_for("mlp", "float32", backend="vectorized", chunk_size=4,
                                            max_memory_gb=budget_gb)))
    with pytest.raises(EvoPaiError, match="evaluation.max_memory_gb"):
        plan_chunk(per_model, per_model // 2, "evaluation.max_memory_gb", None, "mlp")


def test_memory_estimate_covers_stacked_state():
    cfg = build_config(raw_for("mlp", "float32"))
    ctx = WorkerContext(cfg, "cpu")
    n = sum(p.numel() for p in ctx.model.parameters())
    # at least weights + grads + Adam's two moments, 4 bytes each
    assert BatchedTrainer(ctx).bytes_per_model >= 4 * 4 * n


def test_ray_actor_trainer_resolution():
    """auto: batched where the hand path or vmap allows it (BatchNorm, LayerNorm too), else one by one;
    vectorized for a model with data-dependent control flow: the refusal."""
    from evo_pai.training.tasks import initial_model
    from evo_pai.evaluation.ray import actor_trainer

    for model, choice, expected in [("mlp", "auto", "vectorized"), ("mlp", "sequential", "sequential"),
                                    ("resnet20", "auto", "vectorized"), ("test_layernorm_net", "auto", "vectorized"),
                                    ("test_branchy_net", "auto", "sequential")]:
        raw = raw_for(model, "float32", actor_trainer=choice)
        cfg = build_config(raw)
        data = load_data(cfg.data)
        assert actor_trainer(cfg, initial_model(cfg, data), data) == expected, (model, choice)
    cfg = build_config({**raw, "evaluation": {**raw["evaluation"], "actor_trainer": "vectorized"}})
    with pytest.raises(EvoPaiError, match="actor_trainer sequential"):
        actor_trainer(cfg, initial_model(cfg, data), data)


def test_conv_batching_rules_per_device():
    """On CPU, auto runs small-input convolutions (and large ones) model by model; explicit grouped
    groups every convolution, which is what CUDA gets (so the equality tests above cover its path)."""
    cfg = build_config(raw_for("lenet5", "float32"))
    ctx = WorkerContext(cfg, "cpu")
    auto = StackedForward(ctx.model, "lenet5", ctx.data.input_shape, 16)
    grouped = StackedForward(ctx.model, "lenet5", ctx.data.input_shape, 16, conv_mode="grouped")
    assert (auto.conv_mode, auto.min_group_channels) == ("grouped", 4)
    assert (grouped.conv_mode, grouped.min_group_channels) == ("grouped", 1)


def test_gpu_budget_is_shared_by_fractional_actors():
    from evo_pai.evaluation.vectorized import gpu_budget

    whole, where = gpu_budget(100 * 2**30)
    quarter, where_q = gpu_budget(100 * 2**30, 0.25)
    assert whole == int(80 * 2**30) and quarter == whole // 4
    assert "80% of free GPU memory" in where and "share 0.25" in where_q


@pytest.mark.slow
def test_compiled_step_equals_eager():
    """evaluation.compile on CPU (inductor's C++ backend; ~30-60 s of compilation on 2 cores)."""
    raw = raw_for("mlp", "float64")
    raw["train"]["batch_size"] = 20  # divides the 360 training examples: one shape, one compilation
    local, vec, exp = both(raw, compile=True)
    assert type(vec.trainer.forward).__name__ == "CompiledForward"
    tasks = mixed_tasks(exp, n=3)
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert_same(a, b, F64_TOL, relative=False)

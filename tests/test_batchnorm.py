"""BatchNorm models: the vectorized trainer equals the sequential one in float64 (loss, weights and
running statistics), running statistics are part of an individual (carried exactly, reset by
rewind, checkpointed and resumed) and BatchNorm parameters are never pruned."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_raw, whole_and_interrupted, without_timing
from evo_pai.core.config import build_config
from evo_pai.core.registry import MODEL, register_model
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import WorkerContext, make_evaluator
from evo_pai.evaluation.vectorized import BatchedTrainer
from evo_pai.models.networks import build_model, masked_roles
from evo_pai.runs.runner import run_experiment
from evo_pai.search.experiment import Experiment
from evo_pai.training.stacked import StackedForward
from evo_pai.training.tasks import BurstTask
from test_vectorized import F64_TOL, assert_same, both, mixed_tasks, raw_for

pytestmark = pytest.mark.usefixtures("one_thread")


class PluginBlock(nn.Module):
    """A user's residual block: BN after each conv, a conv1x1 + BN projection shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.proj = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.proj_bn = nn.BatchNorm2d(cout, momentum=0.3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)) + self.proj_bn(self.proj(x)))


class PluginBNResNet(nn.Module):
    """Conv stem + BN, one residual block, a BatchNorm1d in the fully connected head."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.stem = nn.Conv2d(channels, 6, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(6)
        self.block = PluginBlock(6, 8)
        self.hidden = nn.Linear(8, 12)
        self.hidden_bn = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, classes)

    def forward(self, x):
        x = self.block(F.relu(self.stem_bn(self.stem(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(F.relu(self.hidden_bn(self.hidden(x))))


if "test_bn_resnet" not in MODEL:
    register_model("test_bn_resnet", "a plugin BatchNorm ResNet (tests)")(
        lambda input_shape, num_classes: PluginBNResNet(input_shape[0], num_classes))


def bn_raw(model: str, optimizer: str = "sgd", **params) -> dict:
    raw = raw_for(model, "float64", optimizer)
    raw["model"]["params"] = params
    return raw


@pytest.mark.parametrize("model,optimizer,params", [("resnet20", "sgd", {}), ("resnet20", "adam", {"width": 4, "shortcut": "projection"}),
                                                    ("test_bn_resnet", "adam", {})])
def test_batchnorm_float64_vectorized_equals_sequential(model, optimizer, params):
    """Loss, metrics, traits and the whole state (weights and running statistics) within 1e-10."""
    local, vec, exp = both(bn_raw(model, optimizer, **params))
    tasks = mixed_tasks(exp, n=3)
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert_same(a, b, F64_TOL, relative=False)
        if a.state is not None:
            stats = [n for n in a.state if "running" in n]
            assert stats and all(not torch.equal(a.state[n], exp.theta0[n]) for n in stats)  # they did move
            assert a.state["bn1.num_batches_tracked" if model == "resnet20" else "stem_bn.num_batches_tracked"] == 4


def test_batchnorm_in_both_conv_modes_and_one_ray_actor_trainer():
    """Grouped and per-model convolutions, and the BatchedTrainer a vectorized Ray actor runs."""
    local, vec, exp = both(bn_raw("test_bn_resnet"))
    tasks = mixed_tasks(exp, n=2)
    ref = local.evaluate(tasks)
    for mode in ("grouped", "per_model"):
        vec.trainer.forward = StackedForward(vec.context.model, "test_bn_resnet", conv_mode=mode)
        vec._cache.clear()
        for a, b in zip(ref, vec.evaluate(tasks)):
            assert_same(a, b, F64_TOL, relative=False)
    ctx = WorkerContext(build_config(bn_raw("test_bn_resnet")), "cpu")
    for a, b in zip(ref, BatchedTrainer(ctx).run(tasks)):
        assert_same(a, b, F64_TOL, relative=False)


def test_vgg16_stacked_forward_equals_each_model():
    """vgg16 (reduced width) through the stacked forward, training and eval mode, statistics included."""
    torch.manual_seed(0)
    models = [build_model(build_config({"model": {"name": "vgg16", "params": {"width": 2}}}).model, (3, 16, 16), 5).double()
              for _ in range(3)]
    fwd = StackedForward(models[0], "vgg16", (3, 16, 16), 4)
    params = {n: torch.stack([dict(m.named_parameters())[n] for m in models]) for n, _ in models[0].named_parameters()}
    buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]) for n in fwd.buffer_names}
    x = torch.randn(3, 4, 3, 16, 16, dtype=torch.float64)
    out = fwd(params, x, buffers)
    for i, m in enumerate(models):
        assert float((m.train()(x[i]) - out[i]).abs().max()) < 1e-12
        for n, b in m.named_buffers():
            assert torch.allclose(b.to(buffers[n].dtype), buffers[n][i], atol=1e-12), n
    evaluated = fwd(params, x[0].expand(3, *x[0].shape), buffers, training=False)
    for i, m in enumerate(models):
        assert float((m.eval()(x[0]) - evaluated[i]).abs().max()) < 1e-12


def test_unbatchable_norms_still_refused():
    from evo_pai.core.errors import EvoPaiError

    with pytest.raises(EvoPaiError, match="LayerNorm"):
        StackedForward(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)), "plugin")
    with pytest.raises(EvoPaiError, match="momentum None"):
        StackedForward(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, momentum=None), nn.Linear(4, 2)), "plugin")


def test_batchnorm_is_never_pruned_and_says_so():
    cfg = build_config(bn_raw("resnet20"))
    exp = Experiment(cfg, make_evaluator(cfg), load_data(cfg.data))
    roles = {r.name: r for r in masked_roles(exp.model, cfg.masks)}
    assert not roles["bn1.weight"].prunable and "normalization" in roles["bn1.weight"].why
    assert not roles["stages.0.0.bn2.bias"].prunable
    assert all("bn" not in n for n in exp.shapes) and len(exp.shapes) == 20


# -- running statistics belong to an individual ------------------------------------------------
def test_statistics_carry_exactly_and_rewind_resets_them():
    """2 epochs == 1 epoch + 1 continued from its state (running statistics and their counter
    included), bit for bit; a rewound task starts from θ0's statistics."""
    cfg = build_config(bn_raw("resnet20", width=4))
    ctx = WorkerContext(cfg, "cpu")
    exp = Experiment(cfg, make_evaluator(cfg, ctx.data), ctx.data)
    mask, per = exp.random_mask(0.6, 1), exp.steps(1.0)
    whole = ctx.run(BurstTask(mask, 2.0, 7, keep_state=True))
    first = ctx.run(BurstTask(mask, 1.0, 7, keep_state=True, horizon=2 * per))
    second = ctx.run(BurstTask(mask, 1.0, 7, start=first.state, opt_state=first.opt_state, keep_state=True,
                               offset=per, horizon=2 * per))
    for k in whole.state:
        assert torch.equal(whole.state[k], second.state[k]), k
    assert int(second.state["bn1.num_batches_tracked"]) == 2 * per
    # without the carried statistics the continued run differs: they are part of the state
    reset = {k: (exp.theta0[k] if "running" in k or "num_batches" in k else v) for k, v in first.state.items()}
    other = ctx.run(BurstTask(mask, 1.0, 7, start=reset, opt_state=first.opt_state, keep_state=True, offset=per,
                              horizon=2 * per))
    assert not torch.equal(other.state["bn1.running_mean"], whole.state["bn1.running_mean"])
    assert other.metrics["val_loss"] != whole.metrics["val_loss"]
    again = ctx.run(BurstTask(mask, 1.0, 7, keep_state=True, horizon=2 * per))  # rewind: from θ0's statistics
    assert all(torch.equal(again.state[k], first.state[k]) for k in first.state)


def test_inheriting_bn_search_resumes_with_its_statistics(tmp_path, monkeypatch):
    raw = tiny_raw(population=3, generations=2, inherit="parent", mutation="magnitude")
    raw.update({"data": {"name": "digits", "train_subset": 64}, "model": {"name": "resnet20", "params": {"width": 4}},
                "evaluation": {"device": "cpu"}, "final": {"epochs": 1, "init": "continue"}})
    raw["train"] = {"dtype": "float64", "optimizer": "sgd", "lr": 0.05, "batch_size": 16}
    cfg = build_config(raw)
    whole, ckpt = whole_and_interrupted(cfg, tmp_path, monkeypatch, 1)
    carries = [ind.carry for ind in ckpt.state["population"]]
    assert all(c is not None for c in carries)
    theta0 = WorkerContext(cfg, "cpu").theta0
    for c in carries:  # the checkpoint holds each individual's own trained statistics
        assert not torch.equal(c.weights["stages.2.2.bn2.running_var"], theta0["stages.2.2.bn2.running_var"])
        assert int(c.weights["bn1.num_batches_tracked"]) == c.steps
    resumed = run_experiment(cfg, tmp_path / "run", resume=ckpt)
    assert without_timing(whole) == without_timing(resumed)


def test_ray_vectorized_actor_trains_batchnorm_as_the_local_backend():
    """A real local Ray, one actor with actor_trainer vectorized: resnet20's results (running statistics
    in the returned state included) equal the local backend's in float64."""
    ray = pytest.importorskip("ray")
    raw = bn_raw("resnet20", width=4)
    local, _, exp = both(raw)
    tasks = mixed_tasks(exp, n=3)
    ref = local.evaluate(tasks)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        cfg = build_config({**raw, "evaluation": {"device": "cpu", "backend": "ray", "num_actors": 1,
                                                  "cpus_per_actor": 1, "actor_trainer": "vectorized"}})
        with make_evaluator(cfg, exp.data) as ev:
            assert ev.trainer == "vectorized"
            got = ev.evaluate(tasks)
    finally:
        ray.shutdown()
    for a, b in zip(ref, got):
        assert_same(a, b, F64_TOL, relative=False)

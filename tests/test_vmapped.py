"""The vectorized trainer takes any model: a transformer (nn.TransformerEncoderLayer with dropout), tensor
methods, LayerNorm and GroupNorm through torch.func.vmap; a ResNet with Dropout, Dropout2d and an
`x.mean((2, 3))` head on the hand path (and through vmap) — equal to the sequential trainer in float64
(loss, weights, running statistics), after a resume too; dropout masks from each model's own seed and
lineage step; what vmap cannot batch refused in one line."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_raw, whole_and_interrupted, without_timing
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import MODEL, register_model
from evo_pai.evaluation.base import WorkerContext, make_evaluator
from evo_pai.runs.runner import run_experiment
from evo_pai.training.draws import Draws, Lazy, step_generator
from evo_pai.training.stacked import StackedForward
from evo_pai.training.tasks import BurstTask
from evo_pai.training.vmapped import VmapForward, make_forward
from test_vectorized import F64_TOL, assert_same, both, mixed_tasks, raw_for

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyEncoder(nn.Module):
    """A 16-feature vector read as 4 tokens of 4: projection, one nn.TransformerEncoderLayer with dropout
    (attention dropout included), LayerNorm, mean over tokens, a classifier. bias=False: the key
    projection's bias has a zero gradient in exact arithmetic (softmax ignores a shift), and Adam's
    g/sqrt(v) turns its rounding noise into lr-sized steps that differ between any two kernels (with biases:
    3e-4 on in_proj_bias under Adam, nothing elsewhere; SGD agrees to 1e-10 with biases too)."""

    def __init__(self, features: int, classes: int, dim: int = 8):
        super().__init__()
        self.tokens = features // 4
        self.embed = nn.Linear(4, dim)
        self.layer = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.2, batch_first=True, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.layer(self.embed(x.view(x.shape[0], self.tokens, 4)))
        return self.head(self.norm(h).mean(1))


class DropoutResNet(nn.Module):
    """What user code writes: conv + BN + residual, Dropout2d, global average pooling as `h.mean((2, 3))`,
    Dropout before the classifier."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(channels, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.drop2d, self.drop = nn.Dropout2d(0.1), nn.Dropout(0.3)
        self.head = nn.Linear(6, classes)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = F.relu(h + self.bn2(self.conv(self.drop2d(h))))
        return self.head(self.drop(h.mean((2, 3))))


class MethodsNet(nn.Module):
    """Tensor methods and F.* functions: view, permute, reshape, transpose, softmax, GroupNorm, gelu."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.fc, self.gn, self.out = nn.Linear(features, 8), nn.GroupNorm(2, 8), nn.Linear(8, classes)

    def forward(self, x):
        h = self.gn(F.gelu(self.fc(x.reshape(x.shape[0], -1))))
        g = h.view(-1, 2, 4).permute(0, 2, 1).transpose(1, 2).reshape(h.shape[0], 8)
        return self.out(g.softmax(-1) * h)


for _name, _cls in [("test_vmap_encoder", TinyEncoder), ("test_dropout_resnet", DropoutResNet),
                    ("test_methods_net", MethodsNet)]:
    if _name not in MODEL:
        register_model(_name, "a plugin model for the vmap path (tests)")(
            (lambda c: lambda input_shape, num_classes: c(input_shape[0] if c is DropoutResNet else
                                                          math.prod(input_shape), num_classes))(_cls))


def vmap_raw(model: str, optimizer: str = "adam") -> dict:
    raw = raw_for("lenet5" if model == "test_dropout_resnet" else "mlp", "float64", optimizer)
    raw["model"] = {"name": model}
    return raw


@pytest.mark.parametrize("model,optimizer,path", [("test_vmap_encoder", "adam", "vmap"),
                                                  ("test_dropout_resnet", "sgd", "hand"),
                                                  ("test_dropout_resnet", "sgd", "vmap"),
                                                  ("test_methods_net", "adam", "vmap")])
def test_vectorized_float64_equals_sequential(model, optimizer, path):
    """K=4 (mixed masks, seeds, a trained start, kept state, a test split): every metric, trait and state
    element (BatchNorm running statistics included) within 1e-10. The dropout ResNet on both paths: the
    hand path batches Dropout, Dropout2d and `mean((2, 3))` itself (measured faster, docs/performance.md)."""
    local, vec, exp = both(vmap_raw(model, optimizer))
    assert isinstance(vec.trainer.forward, StackedForward if model == "test_dropout_resnet" else VmapForward)
    if path == "vmap" and model == "test_dropout_resnet":
        vec.trainer.forward = VmapForward(vec.context.model, model, exp.data.input_shape)
    tasks = mixed_tasks(exp, n=4)
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert_same(a, b, F64_TOL, relative=False)
        if a.state is not None and model == "test_dropout_resnet":
            assert not torch.equal(a.state["bn.running_mean"], exp.theta0["bn.running_mean"])


def test_dropout_masks_follow_seed_and_step_only():
    """Same seed and step: the same masks; another seed or step: others. A continued lineage (2 epochs
    = 1 + 1 continued) is the uninterrupted one, bit for bit, dropout included."""
    x = torch.ones(64, 32)
    draw = lambda seed, step: _drawn(x, seed, step)  # noqa: E731
    assert torch.equal(draw(3, 5), draw(3, 5))
    assert not torch.equal(draw(3, 5), draw(4, 5)) and not torch.equal(draw(3, 5), draw(3, 6))
    cfg = build_config(vmap_raw("test_dropout_resnet"))
    ctx = WorkerContext(cfg, "cpu")
    from evo_pai.search.experiment import Experiment

    exp = Experiment(cfg, make_evaluator(cfg, ctx.data), ctx.data)
    mask, per = exp.random_mask(0.5, 1), exp.steps(1.0)
    whole = ctx.run(BurstTask(mask, 2.0, 7, keep_state=True))
    first = ctx.run(BurstTask(mask, 1.0, 7, keep_state=True, horizon=2 * per))
    second = ctx.run(BurstTask(mask, 1.0, 7, start=first.state, opt_state=first.opt_state, keep_state=True,
                               offset=per, horizon=2 * per))
    assert all(torch.equal(whole.state[k], second.state[k]) for k in whole.state)
    other = ctx.run(BurstTask(mask, 1.0, 8, keep_state=True, horizon=2 * per))  # another seed: other masks
    assert not torch.equal(other.state["head.weight"], first.state["head.weight"])


def _drawn(x, seed, step):
    with Draws(Lazy(step_generator(seed, step))):
        return F.dropout(x, 0.5)


def test_encoder_search_resumes_identically_on_the_vectorized_backend(tmp_path, monkeypatch):
    """An inheriting search of the transformer on the vectorized backend, killed after its first
    checkpoint and resumed, ends with the uninterrupted run's summary; the local backend picks the same mask."""
    raw = tiny_raw(population=4, generations=2, inherit="parent", mutation="magnitude")
    raw.update({"model": {"name": "test_vmap_encoder"}, "final": {"epochs": 1, "init": "continue"},
                "evaluation": {"device": "cpu", "backend": "vectorized"}})
    raw["train"] = {"dtype": "float64", "lr": 0.01, "batch_size": 32}
    whole, ckpt = whole_and_interrupted(build_config(raw), tmp_path, monkeypatch, 1)
    resumed = run_experiment(build_config(raw), tmp_path / "run", resume=ckpt)
    assert without_timing(whole) == without_timing(resumed)
    (tmp_path / "local").mkdir()
    local = run_experiment(build_config({**raw, "evaluation": {"device": "cpu"}}), tmp_path / "local")
    assert local["test_loss"] == pytest.approx(whole["test_loss"], abs=F64_TOL)


def test_hand_path_kept_where_it_batches_everything():
    cfg = build_config(raw_for("lenet5", "float64"))
    ctx = WorkerContext(cfg, "cpu")
    assert isinstance(make_forward(ctx.model, "lenet5", ctx.data.input_shape, 16), StackedForward)
    with pytest.raises(EvoPaiError, match="LayerNorm"):  # the hand path itself still refuses LayerNorm
        StackedForward(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "plugin")
    with pytest.raises(EvoPaiError, match="Tensor.mean"):  # and a mean over the batch
        StackedForward(_MeanAll(), "plugin")


class _MeanAll(nn.Module):
    def forward(self, x):
        return x.mean(0, keepdim=True).expand_as(x)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class IntoFresh(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        acc = torch.zeros(x.shape[0], 2, dtype=x.dtype)
        acc += self.fc(x)  # a batched value written into a tensor made here
        return acc


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x + 0.1 * torch.randn_like(x))


@pytest.mark.parametrize("module,why", [
    (Branchy(), "data-dependent control flow"),
    (IntoFresh(), "writes in place into a tensor that is not batched"),
    (Noisy(), "random numbers other than dropout"),
    (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, momentum=None), nn.Linear(4, 2)), "data-dependent"),
])
def test_what_vmap_cannot_batch_is_refused_in_one_line(module, why):
    with pytest.raises(EvoPaiError) as info:
        make_forward(module.double(), "plugin", (4,), 8)
    msg = str(info.value)
    assert "\n" not in msg and why in msg and "use evaluation.backend local" in msg, msg


def test_compile_with_a_vmapped_model_is_refused_before_training():
    raw = vmap_raw("test_methods_net")
    raw["evaluation"] = {"device": "cpu", "backend": "vectorized", "compile": True}
    with pytest.raises(EvoPaiError, match="evaluation.compile: model 'test_methods_net' is batched by torch.func.vmap"):
        make_evaluator(build_config(raw))

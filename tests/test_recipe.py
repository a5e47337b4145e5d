"""Recipe fidelity fields: weight init, sparsity-schedule shapes, initial-sparsity rules, LR schedules."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_raw
from evo_pai.core.budgets import sparsity_schedule
from evo_pai.core.config import TrainConfig, build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.models.networks import build_model
from evo_pai.runs.runner import run_experiment
from evo_pai.search.combined import initial_sparsity
from evo_pai.training.optim import lr_factor


def lenet(**model):
    cfg = build_config({"model": {"name": "mlp", **model}}).model
    torch.manual_seed(0)
    return build_model(cfg, (784,), 10).requires_grad_(False)


def test_kaiming_normal_has_he_std_and_zero_bias():
    m = lenet(init="kaiming_normal", bias_init="zero")
    w = m.layers[0].weight
    assert float(w.std()) == pytest.approx(math.sqrt(2 / 784), rel=0.02)
    assert float(w.mean()) == pytest.approx(0.0, abs=1e-3)
    assert all(float(l.bias.abs().max()) == 0.0 for l in m.layers if isinstance(l, torch.nn.Linear))


def test_init_options_differ_and_default_is_pytorchs():
    default = lenet()
    assert float(default.layers[0].weight.abs().max()) <= 1 / math.sqrt(784) + 1e-6  # U(-1/sqrt(fan_in), ...)
    uniform = lenet(init="kaiming_uniform")
    assert float(uniform.layers[0].weight.abs().max()) == pytest.approx(math.sqrt(6 / 784), rel=0.01)
    xavier = lenet(init="xavier_normal")
    assert float(xavier.layers[0].weight.std()) == pytest.approx(math.sqrt(2 / (784 + 300)), rel=0.02)
    assert float(default.layers[0].bias.abs().max()) > 0  # biases untouched by default
    assert torch.equal(lenet(init="kaiming_normal").layers[0].weight, lenet(init="kaiming_normal").layers[0].weight)


def test_schedule_shapes_end_on_the_target():
    for shape in ("cubic", "exponential", "linear"):
        sched = sparsity_schedule(shape, 0.5, 0.98, 4)
        assert len(sched) == 4 and sched[-1] == 0.98 and all(a < b for a, b in zip(sched, sched[1:]))
    exp = sparsity_schedule("exponential", 0.0, 0.99, 4)
    assert exp[:3] == pytest.approx([1 - 0.01 ** (t / 4) for t in (1, 2, 3)])  # density (1-s)^(t/n)
    assert sparsity_schedule("linear", 0.2, 0.6, 4) == pytest.approx([0.3, 0.4, 0.5, 0.6])
    assert sparsity_schedule("cubic", 0.0, 0.9, 2)[0] == pytest.approx(0.9 - 0.9 * 0.5**3)


@pytest.mark.parametrize("rule,expected", [(None, 0.475), (0.3, 0.3), ({"fraction": 0.8}, 0.76),
                                           ("sqrt", 1 - math.sqrt(0.05))])
def test_initial_sparsity_rules(rule, expected):
    class Exp:
        cfg = build_config({"search": {"sparsity": 0.95, "initial_sparsity": rule}})

    assert initial_sparsity(Exp) == pytest.approx(expected)


def test_initial_sparsity_bad_rule_is_one_line():
    with pytest.raises(EvoPaiError, match="search.initial_sparsity"):
        build_config({"search": {"initial_sparsity": "half"}})
    with pytest.raises(EvoPaiError, match="lr_milestones"):
        build_config({"train": {"lr_milestones": [0.8, 0.5]}})


def test_lr_schedules():
    cos = TrainConfig(lr_schedule="cosine")
    assert lr_factor(cos, 0, 100, 10) == 1.0 and lr_factor(cos, 50, 100, 10) == pytest.approx(0.5)
    assert lr_factor(cos, 99, 100, 10) < 0.01
    step = TrainConfig(lr_schedule="step", lr_milestones=[0.5, 0.75], lr_gamma=0.1)
    assert [lr_factor(step, t, 100, 10) for t in (0, 49, 50, 75)] == pytest.approx([1, 1, 0.1, 0.01])
    warm = TrainConfig(lr_warmup_epochs=1.0)
    assert [lr_factor(warm, t, 100, 10) for t in (0, 4, 9, 10)] == pytest.approx([0.1, 0.5, 1.0, 1.0])


def test_a_schedule_changes_training_and_a_run_uses_every_new_field():
    base = tiny_raw("combined", schedule="exponential", initial_sparsity="sqrt", inherit="parent")
    base["model"] = {**base["model"], "init": "kaiming_normal", "bias_init": "zero"}
    a = run_experiment(build_config(base), None)
    base["train"] = {**base["train"], "lr_schedule": "cosine", "lr_warmup_epochs": 0.5}
    b = run_experiment(build_config(base), None)
    assert a["sparsity"] == pytest.approx(0.8, abs=1e-3) and b["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert a["test_loss"] != b["test_loss"]

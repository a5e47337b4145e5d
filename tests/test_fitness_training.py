import math

import pytest
import torch

from evo_pai.core.config import TrainConfig, build_config
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import WorkerContext
from evo_pai.training.tasks import BurstTask
from evo_pai.operators.fitness import WORST, score
from evo_pai.core.masks import MaskSet
from evo_pai.training.burst import BurstResult

from conftest import tiny_raw


def _result(weight, grad, scale, **metrics):
    return BurstResult(
        metrics={"val_accuracy": 0.5, "val_loss": 1.0, "finite": 1.0, **metrics},
        traits={"weight": weight, "grad_accum": grad, "rel_change": {}},
        init_scale=scale,
    )


def test_fitness_values_on_a_hand_made_case():
    mask = MaskSet({"w": torch.tensor([[True, False], [True, True]])})
    res = _result({"w": torch.tensor([[2.0, 0.0], [-4.0, 6.0]])}, {"w": torch.tensor([[3.0, 1.0], [3.0, 3.0]])},
                  {"w": 2.0}, val_accuracy=0.75, val_loss=0.4)
    wm, _ = score("weight_magnitude", res, mask)
    assert wm == pytest.approx((2 + 4 + 6) / 3 / 2.0)
    ga, _ = score("gradient_accumulation", res, mask)
    assert ga == pytest.approx(3.0 / 2.5)
    mixed, _ = score("mixed", res, mask, {"alpha": 0.25})
    assert mixed == pytest.approx(0.25 * math.log(wm) + 0.75 * math.log(ga))
    assert score("val_accuracy", res, mask)[0] == 0.75
    assert score("val_loss", res, mask)[0] == -0.4


def test_non_finite_is_the_worst_fitness_with_a_reason():
    mask = MaskSet({"w": torch.ones(1, 2, dtype=torch.bool)})
    res = _result({"w": torch.ones(1, 2)}, {"w": torch.ones(1, 2)}, {"w": 1.0}, finite=0.0)
    value, why = score("weight_magnitude", res, mask)
    assert value == WORST and "diverged" in why
    res = _result({"w": torch.ones(1, 2)}, {"w": torch.ones(1, 2)}, {"w": 1.0}, val_loss=float("nan"))
    value, why = score("val_loss", res, mask)
    assert value == WORST and "nan" in why


@pytest.fixture(scope="module")
def ctx():
    return WorkerContext(build_config(tiny_raw()), "cpu")


def _mask(ctx, sparsity=0.7, seed=0):
    from evo_pai.models.networks import prunable_names

    params = dict(ctx.model.named_parameters())
    shapes = {k: tuple(params[k].shape) for k in prunable_names(ctx.model)}
    return MaskSet.random(shapes, sparsity, torch.Generator().manual_seed(seed), "erk")


def test_burst_is_a_pure_function_of_its_inputs(ctx):
    m = _mask(ctx)
    a, b = ctx.run(BurstTask(m, 1.0, 7)), ctx.run(BurstTask(m, 1.0, 7))
    assert a.metrics == b.metrics
    assert all(torch.equal(a.traits["weight"][k], b.traits["weight"][k]) for k in m)
    c = ctx.run(BurstTask(m, 1.0, 8))
    assert c.metrics["train_loss"] != a.metrics["train_loss"]


def test_masked_weights_stay_exactly_zero_and_traits_are_right(ctx):
    m = _mask(ctx)
    res = ctx.run(BurstTask(m, 2.0, 1, keep_state=True))
    for k in m:
        w = res.traits["weight"][k]
        assert (w[~m[k]] == 0).all() and (w[m[k]] != 0).all()
        w0 = ctx.theta0[k]
        expected = (w - w0).abs() / (w0.abs() + 1e-12)
        assert torch.allclose(res.traits["rel_change"][k], expected)
        assert (res.traits["grad_accum"][k] >= 0).all()
        assert torch.equal(res.state[k], w)


@pytest.mark.parametrize("train", [{"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-2},
                                   {"optimizer": "adam", "weight_decay": 1e-2}])
def test_masked_weights_stay_zero_with_momentum_and_weight_decay(train):
    """The trainer masks gradients only (no re-masking after the step): optimizer state and weight
    decay of a masked weight must stay exactly zero, from a start state that was not zero there."""
    raw = tiny_raw()
    raw["train"] = {**raw["train"], **train}
    c = WorkerContext(build_config(raw), "cpu")
    m = _mask(c)
    start = {k: v + 0.5 for k, v in c.theta0.items()}  # nonzero everywhere, masked positions included
    res = c.run(BurstTask(m, 2.0, 3, start=start, keep_state=True))
    for k in m:
        assert (res.state[k][~m[k]] == 0).all() and (res.state[k][m[k]] != 0).all()
        state = {key: v for key, v in res.opt_state[k].items() if torch.is_tensor(v) and v.shape == m[k].shape}
        assert state, (k, list(res.opt_state[k]))  # momentum buffer / Adam's moments
        for key, v in state.items():
            assert (v[~m[k]] == 0).all() and (v[m[k]] != 0).any(), (k, key)
    assert res.epochs == pytest.approx(2.0)
    assert res.metrics["val_accuracy"] > 0.4  # 4 classes: well above chance after 2 epochs

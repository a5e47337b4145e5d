"""train.optimizer adamw, train.label_smoothing, train.grad_clip_norm: the same training on every backend —
local (torch's AdamW, F.cross_entropy's smoothing, clip_grad_norm_), vectorized (fused stacked AdamW and
the per-model step of hyperparameter genes, stacked clipping) and Ray actors — in float64 to 1e-10, and
each option changes what is trained. Real evaluators, real local Ray (conftest), no mocks."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_same_training, search_outcome, tiny_raw
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import make_evaluator
from evo_pai.search.experiment import Experiment
from evo_pai.training.optim import clip_stacked_
from evo_pai.training.tasks import BurstTask

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = {"optimizer": "adamw", "weight_decay": 0.05, "label_smoothing": 0.1, "grad_clip_norm": 0.3}


def raw64(backend: str = "local", **train) -> dict:
    raw = tiny_raw()
    raw["train"] = {**raw["train"], "dtype": "float64", "lr_schedule": "cosine", **RECIPE, **train}
    raw["evaluation"] = {"device": "cpu", "backend": backend}
    return raw


def tasks_for(exp: Experiment, parent) -> list[BurstTask]:
    """From θ0 with the recipe (torch's fused stacked step), from a carried AdamW state (a continued
    lineage), and with per-model lr scale / weight decay genes (the vectorized per-model step)."""
    per = exp.steps(1.0)
    fresh = [BurstTask(exp.random_mask(0.4 + 0.1 * i, i), 1.0, 20 + i, keep_state=True) for i in range(3)]
    carried = [BurstTask(exp.random_mask(0.5, 5 + i), 1.0, 40 + i, start=parent.state, opt_state=parent.opt_state,
                         keep_state=True, offset=per, horizon=3 * per) for i in range(2)]
    genes = [BurstTask(exp.random_mask(0.6, 9 + i), 1.0, 60 + i, keep_state=True, lr_scale=s, weight_decay=w)
             for i, (s, w) in enumerate([(0.5, 0.0), (2.0, 0.2), (1.0, None)])]
    return fresh + carried + genes


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_local_and_vectorized_agree_float64_and_each_option_matters(optimizer):
    """AdamW, or SGD with momentum, under label smoothing and clipping (with SGD: the stacked clip before
    torch's fused SGD and before the per-model step)."""
    recipe = {"optimizer": optimizer, "grad_clip_norm": 0.3 if optimizer == "adamw" else 0.02}  # clipping active
    cfg = build_config(raw64(**recipe))
    data = load_data(cfg.data)
    local, vec = make_evaluator(cfg, data), make_evaluator(build_config(raw64("vectorized", **recipe)), data)
    exp = Experiment(cfg, local, data)
    parent = local.evaluate([BurstTask(exp.dense_mask(), 1.0, 3, keep_state=True, horizon=3 * exp.steps(1.0))])[0]
    tasks = tasks_for(exp, parent)
    a_res, b_res = local.evaluate(tasks), vec.evaluate(tasks)
    for a, b in zip(a_res, b_res):
        assert_same_training(a, b)
        assert abs(a.metrics["train_loss"] - b.metrics["train_loss"]) <= 1e-10
        assert set(a.opt_state["layers.0.weight"]) == ({"step", "exp_avg", "exp_avg_sq"} if optimizer == "adamw"
                                                       else {"momentum_buffer"})
    # every option changes the training (so the agreement above is about them): one task, one option off
    task = tasks[0]
    offs = [{"label_smoothing": 0.0}, {"grad_clip_norm": None}] + ([{"optimizer": "adam"}] if optimizer == "adamw" else [])
    for off in offs:
        other = make_evaluator(build_config(raw64(**{**recipe, **off})), data).evaluate([task])[0]
        assert float((other.state["layers.0.weight"] - a_res[0].state["layers.0.weight"]).abs().max()) > 1e-6, off


def test_masked_weights_stay_zero_under_adamw_decay():
    """AdamW multiplies every weight by (1 - lr x weight_decay): a pruned weight (0) stays exactly 0, with
    no re-masking after the step, sequential and stacked."""
    for backend in ("local", "vectorized"):
        cfg = build_config(raw64(backend, label_smoothing=0.0, grad_clip_norm=None))
        data = load_data(cfg.data)
        ev = make_evaluator(cfg, data)
        exp = Experiment(cfg, ev, data)
        mask = exp.random_mask(0.7, 1)
        res = ev.evaluate([BurstTask(mask, 1.0, 5, keep_state=True)])[0]
        for name in mask:
            assert bool((res.state[name][~mask[name]] == 0).all())


def test_stacked_clipping_is_torchs_per_model():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)]
    grads[0][1] *= 1e-3  # model 1 under the limit: unchanged
    expected = []
    for k in range(3):
        own = [t[k].clone() for t in grads]
        torch.nn.utils.clip_grad_norm_([torch.nn.Parameter(torch.zeros_like(t)) for t in own], 1.0)  # no grads: no-op
        ps = [torch.nn.Parameter(torch.zeros_like(t)) for t in own]
        for p, t in zip(ps, own):
            p.grad = t
        torch.nn.utils.clip_grad_norm_(ps, 1.0)
        expected.append([p.grad for p in ps])
    clip_stacked_(grads + [None], 1.0)
    for k in range(3):
        for i in range(2):
            assert float((grads[i][k] - expected[k][i]).abs().max()) <= 1e-15


def test_bad_recipe_values_are_one_line():
    for train, field in (({"optimizer": "adamax"}, "train.optimizer"), ({"label_smoothing": 1.0}, "train.label_smoothing"),
                         ({"grad_clip_norm": 0}, "train.grad_clip_norm")):
        with pytest.raises(EvoPaiError, match=field):
            build_config(raw64(**train))


def test_ray_actors_agree_with_local_float64(local_ray):
    """A search on Ray (sequential and vectorized actors) with the recipe: the local backend's masks and
    fitness to 1e-10."""
    ref_outcome, ref = search_outcome(raw64())
    for trainer in ("sequential", "vectorized"):
        raw = raw64("ray")
        raw["evaluation"].update(num_actors=2, cpus_per_actor=1, actor_trainer=trainer)
        outcome, records = search_outcome(raw)
        assert outcome.mask == ref_outcome.mask and len(records) == len(ref) == 3
        for x, y in zip(records, ref):
            assert abs(x["best_fitness"] - y["best_fitness"]) <= 1e-10 and abs(x["mean_fitness"] - y["mean_fitness"]) <= 1e-10

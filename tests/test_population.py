"""Independent lineages and population-based training (issue 20): per-model hyperparameters on every
backend, who copies whom and what is perturbed, genes checkpointed and resumed exactly."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_raw
from evo_pai.core.config import build_config
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import make_evaluator
from evo_pai.search.experiment import Experiment
from evo_pai.training.tasks import BurstTask

pytestmark = pytest.mark.usefixtures("one_thread")


def raw64(optimizer: str = "sgd", backend: str = "local", **search) -> dict:
    raw = tiny_raw(**search)
    raw["train"] = {**raw["train"], "dtype": "float64", "optimizer": optimizer, "momentum": 0.9,
                    "weight_decay": 1e-3, "lr_schedule": "cosine"}
    raw["evaluation"] = {"device": "cpu", "backend": backend}
    return raw


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_vectorized_trains_each_model_with_its_own_lr_and_weight_decay(optimizer):
    """Per-model lr scale and weight decay in the stacked step: each model as the local backend trains
    it alone (float64, to 1e-10), from θ0 and from a carried state; the genes change the result."""
    raw = raw64(optimizer)
    cfg = build_config(raw)
    data = load_data(cfg.data)
    local = make_evaluator(cfg, data)
    vec = make_evaluator(build_config(raw64(optimizer, "vectorized")), data)
    exp = Experiment(cfg, local, data)
    per = exp.steps(1.0)
    parent = local.evaluate([BurstTask(exp.dense_mask(), 1.0, 3, keep_state=True, horizon=3 * per)])[0]
    genes = [(1.0, None), (0.5, 0.0), (2.0, 5e-3), (1.0, 1e-2)]
    tasks = [BurstTask(exp.random_mask(0.5, i), 1.0, 10 + i, start=parent.state, opt_state=parent.opt_state,
                       keep_state=True, offset=per, horizon=3 * per, lr_scale=s, weight_decay=w)
             for i, (s, w) in enumerate(genes)]
    a_res, b_res = local.evaluate(tasks), vec.evaluate(tasks)
    for a, b in zip(a_res, b_res):
        for k in a.state:
            assert float((a.state[k] - b.state[k]).abs().max()) <= 1e-10, k
        for name in a.opt_state:
            for key in a.opt_state[name]:
                assert float((a.opt_state[name][key].double() - b.opt_state[name][key].double()).abs().max()) <= 1e-10
        assert abs(a.metrics["val_loss"] - b.metrics["val_loss"]) <= 1e-10
    plain = local.evaluate([BurstTask(tasks[1].mask, 1.0, 11, start=parent.state, opt_state=parent.opt_state,
                                      keep_state=True, offset=per, horizon=3 * per)])[0]
    assert plain.metrics["val_loss"] != a_res[1].metrics["val_loss"]

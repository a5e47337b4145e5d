"""Training state that travels: weights, optimizer state, batch stream and LR schedule carried from
one run to the next exactly; pruned weights stay exactly 0; backends agree with inheritance on;
an inheriting search resumes to the uninterrupted result."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_same_training, search_outcome, tiny_raw, whole_and_interrupted, without_timing
from evo_pai.core.config import build_config
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import WorkerContext, make_evaluator
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.operators.variation import layerwise
from evo_pai.core.registry import METHOD
from evo_pai.runs.runner import run_experiment, seed_everything
from evo_pai.search.experiment import Experiment
from evo_pai.training.carry import Carry
from evo_pai.training.tasks import BurstTask


pytestmark = pytest.mark.usefixtures("one_thread")


def raw64(optimizer: str = "sgd", schedule: str = "constant", **search) -> dict:
    raw = tiny_raw(**search)
    raw["train"] = {**raw["train"], "dtype": "float64", "optimizer": optimizer, "momentum": 0.9,
                    "weight_decay": 1e-3, "lr_schedule": schedule, "lr_warmup_epochs": 0.5 if schedule != "constant" else 0}
    raw["evaluation"] = {"device": "cpu"}
    return raw


def context(raw: dict) -> tuple[WorkerContext, Experiment]:
    cfg = build_config(raw)
    data = load_data(cfg.data)
    ev = make_evaluator(cfg, data)
    return ev.context, Experiment(cfg, ev, data)


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "constant"), ("adam", "constant"), ("sgd", "cosine"),
                                                ("adam", "step")])
def test_two_epochs_equal_one_plus_one_continued(optimizer, schedule):
    """A 2-epoch run == 1 epoch, then 1 more from its weights and optimizer state (same seed, offset =
    one epoch's steps, horizon = two epochs'): bit for bit, weights, optimizer state and traits."""
    ctx, exp = context(raw64(optimizer, schedule))
    mask = exp.random_mask(0.6, 1)
    per = exp.steps(1.0)
    whole = ctx.run(BurstTask(mask, 2.0, 7, keep_state=True))
    first = ctx.run(BurstTask(mask, 1.0, 7, keep_state=True, horizon=2 * per))
    second = ctx.run(BurstTask(mask, 1.0, 7, start=first.state, opt_state=first.opt_state, keep_state=True,
                               offset=per, horizon=2 * per))
    for k in whole.state:
        assert torch.equal(whole.state[k], second.state[k]), k
    assert whole.opt_state.keys() == second.opt_state.keys()
    for name, entries in whole.opt_state.items():
        for key, v in entries.items():
            assert torch.equal(v, second.opt_state[name][key]), (name, key)
    assert whole.metrics["val_loss"] == second.metrics["val_loss"]
    # a fresh optimizer from the same weights is a different run: the state mattered
    fresh = ctx.run(BurstTask(mask, 1.0, 7, start=first.state, keep_state=True, offset=per, horizon=2 * per))
    assert not all(torch.equal(whole.state[k], fresh.state[k]) for k in whole.state)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_and_their_state_are_zero_after_inheriting(optimizer):
    ctx, exp = context(raw64(optimizer))
    dense = exp.dense_mask()
    parent = ctx.run(BurstTask(dense, 1.0, 3, keep_state=True))
    mask = exp.random_mask(0.7, 2)
    child = ctx.run(BurstTask(mask, 1.0, 4, start=parent.state, opt_state=parent.opt_state, keep_state=True))
    for k in mask:
        assert (child.state[k][~mask[k]] == 0).all() and (child.state[k][mask[k]] != 0).all()
        for key, v in child.opt_state[k].items():
            if v.shape == mask[k].shape:
                assert (v[~mask[k]] == 0).all(), (k, key)
    # the parent's state is not touched by training a child from it
    again = ctx.run(BurstTask(mask, 1.0, 4, start=parent.state, opt_state=parent.opt_state, keep_state=True))
    assert all(torch.equal(again.state[k], child.state[k]) for k in child.state)


def test_vectorized_equals_local_with_carried_state():
    raw = raw64("adam")
    ctx, exp = context(raw)
    parent = ctx.run(BurstTask(exp.dense_mask(), 1.0, 3, keep_state=True))
    vec = make_evaluator(build_config({**raw, "evaluation": {"device": "cpu", "backend": "vectorized"}}), exp.data)
    per = exp.steps(1.0)
    tasks = [BurstTask(exp.random_mask(0.5 + 0.1 * i, i), 1.0, 10 + i, start=parent.state, opt_state=parent.opt_state,
                       keep_state=True, offset=per, horizon=3 * per) for i in range(3)]
    tasks.append(BurstTask(exp.random_mask(0.5, 9), 1.0, 20, keep_state=True))  # a fresh one: its own group
    for a, b in zip(exp.evaluator.evaluate(tasks), vec.evaluate(tasks)):
        assert_same_training(a, b)


def test_crossover_child_takes_each_layer_from_its_parent():
    _, exp = context(raw64())
    a, b = Individual(exp.random_mask(0.5, 1)), Individual(exp.random_mask(0.5, 2))
    for ind, scale in ((a, 1.0), (b, 2.0)):
        res = exp.run_task(BurstTask(ind.mask, 1.0, 1, keep_state=True))
        ind.traits = res.traits
        ind.carry = Carry({k: v * scale for k, v in res.state.items()}, res.opt_state, res.steps)
    c1, _ = layerwise(a, b, torch.Generator().manual_seed(0))
    for layer in c1.mask:
        src = a if torch.equal(c1.mask[layer], a.mask[layer]) else b
        bias = layer.rpartition(".")[0] + ".bias"
        assert torch.equal(c1.carry.weights[layer], src.carry.weights[layer])
        assert torch.equal(c1.carry.weights[bias], src.carry.weights[bias])
        assert c1.carry.opt_state[layer] is src.carry.opt_state[layer]


def inherit_raw(backend: str = "local", **evaluation) -> dict:
    raw = raw64("adam", "cosine", population=4, generations=3, inherit="parent", mutation="magnitude")
    raw["final"] = {"epochs": 2, "init": "continue"}
    raw["evaluation"] = {"device": "cpu", "backend": backend, **evaluation}
    return raw


def search_records(raw: dict) -> tuple[MaskSet, list[dict]]:
    outcome, records = search_outcome(raw)
    return outcome.mask, records


def test_backends_agree_with_inheritance_float64():
    """local, vectorized and Ray (sequential actors) give one search: same masks, fitness to 1e-10."""
    ray = pytest.importorskip("ray")
    ref_mask, ref = search_records(inherit_raw())
    runs = [search_records(inherit_raw("vectorized"))]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runs.append(search_records(inherit_raw("ray", num_actors=2, cpus_per_actor=1, actor_trainer="sequential")))
    finally:
        ray.shutdown()
    for mask, records in runs:
        assert mask == ref_mask
        assert len(records) == len(ref) == 3
        for x, y in zip(records, ref):
            assert abs(x["best_fitness"] - y["best_fitness"]) <= 1e-10 and x["sparsity"] == y["sparsity"]


def test_inheritance_accumulates_training():
    """With inheritance the last generation's nets have trained every generation's burst: their
    carried step count is generations x burst steps (rewind: nothing is carried)."""
    cfg = build_config(inherit_raw())
    data = load_data(cfg.data)
    seed_everything(cfg.seed)
    with make_evaluator(cfg, data) as ev:
        exp = Experiment(cfg, ev, data)
        outcome = METHOD.get("combined")(exp)
    assert outcome.final_start is not None and outcome.final_opt_state is not None and outcome.replay is None
    assert int(next(iter(outcome.final_opt_state.values()))["step"]) == 3 * exp.steps(1.0)


def test_inheriting_search_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    cfg = build_config(inherit_raw())
    whole, ckpt = whole_and_interrupted(cfg, tmp_path, monkeypatch, 1)
    assert all(ind.carry is not None for ind in ckpt.state["population"])
    resumed = run_experiment(cfg, tmp_path / "run", resume=ckpt)
    assert without_timing(whole) == without_timing(resumed)


def test_continue_without_kept_state_replays_and_counts_the_burst():
    raw = tiny_raw("kstarts")
    raw["final"] = {"epochs": 2, "init": "continue"}
    s = run_experiment(build_config(raw), None)
    assert s["final_replay_epochs"] == pytest.approx(1.0)
    raw["final"]["init"] = "rewind"
    assert run_experiment(build_config(raw), None)["final_replay_epochs"] == 0.0

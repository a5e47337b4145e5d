"""Adaptive BatchNorm (search.adaptive_bn_batches, fitness adaptive_bn_accuracy): the recalibrated statistics
are the cumulative batch statistics of the model's first N training batches, the trained statistics are left
alone, the sequential and vectorized trainers (and a Ray actor) agree in float64, a burst of 0 epochs works,
the fitness ranks by the metric and preflight refuses what cannot work."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_raw
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.data.batches import batch_order
from evo_pai.evaluation.base import WorkerContext, make_evaluator
from evo_pai.operators.fitness import score
from evo_pai.runs.preflight import check_config, preflight
from evo_pai.runs.runner import run_experiment
from evo_pai.search.experiment import Experiment
from evo_pai.training.abn_probe import burst_predictors, state_accuracies
from evo_pai.training.adaptive_bn import batch_norms, recalibrate, recalibrate_stacked, recalibration_batches
from evo_pai.training.burst import BurstResult, train_masked
from evo_pai.training.stacked import StackedForward
from evo_pai.training.tasks import BurstTask
from test_batchnorm import bn_raw
from test_vectorized import F64_TOL, assert_same, both, mixed_tasks

pytestmark = pytest.mark.usefixtures("one_thread")
N = 3


def abn_raw(model: str = "resnet20", n: int = N, optimizer: str = "sgd", **params) -> dict:
    raw = bn_raw(model, optimizer, **({"width": 4} if model == "resnet20" and not params else params))
    raw["search"]["adaptive_bn_batches"] = n
    return raw


def test_recalibration_is_the_mean_batch_statistics_of_the_first_n_batches():
    """Every BatchNorm's running mean / variance become the average over the model's first N training
    batches (its own seeded order) of the per-batch mean / unbiased variance of that layer's input."""
    cfg = build_config(abn_raw())
    ctx = WorkerContext(cfg, "cpu")
    model, data, seed = ctx.model, ctx.data, 11
    model.load_state_dict({k: v * 1.3 if v.is_floating_point() else v for k, v in ctx.theta0.items()})
    # the expected values, by hand: the inputs of each BatchNorm in train mode (batch statistics, so no
    # layer's input depends on any running statistic) for the examples batch_order draws first
    probe = copy.deepcopy(model).train()
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.setdefault(n, []).append(i[0]))
             for n, m in batch_norms(probe)]
    order = batch_order(data.n_train, N, cfg.train.batch_size, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for idx in order:
            probe(data.train_x[idx])
    for h in hooks:
        h.remove()
    recalibrate(model, recalibration_batches(data, cfg.train, [seed], N, torch.device("cpu"), torch.float64))
    norms = batch_norms(model)
    assert len(norms) == 19 and len(inputs) == 19
    for name, m in norms:
        dims = [d for d in range(inputs[name][0].dim()) if d != 1]
        mean = torch.stack([x.mean(dims) for x in inputs[name]]).mean(0)
        var = torch.stack([x.var(dims, unbiased=True) for x in inputs[name]]).mean(0)
        assert float((m.running_mean - mean).abs().max()) < 1e-10, name
        assert float((m.running_var - var).abs().max()) < 1e-10, name
        assert int(m.num_batches_tracked) == N and m.momentum == 0.1  # the module's momentum is back
    assert model.training


def test_trained_statistics_and_everything_else_are_unaffected():
    """A burst with adaptive BN returns the same state, traits and plain metrics as one without, bit for
    bit, plus the two abn metrics (which differ from the plain ones: the statistics did change)."""
    cfg = build_config(abn_raw())
    ctx = WorkerContext(cfg, "cpu")
    mask = Experiment(cfg, make_evaluator(cfg, ctx.data), ctx.data).random_mask(0.5, 1)
    runs = [train_masked(ctx.model, ctx.theta0, ctx.theta0, mask, ctx.data, cfg.train, 1.0, 5, keep_state=True,
                         abn_batches=n) for n in (0, N)]
    plain, abn = runs
    assert set(abn.metrics) - set(plain.metrics) == {"abn_val_loss", "abn_val_accuracy"}
    assert all(plain.metrics[k] == abn.metrics[k] for k in plain.metrics)
    assert all(torch.equal(plain.state[k], abn.state[k]) for k in plain.state)
    assert abn.metrics["abn_val_loss"] != abn.metrics["val_loss"]
    model_stats = {k: v for k, v in ctx.model.state_dict().items() if "running" in k}
    assert all(torch.equal(model_stats[k], abn.state[k]) for k in model_stats)  # the model itself, too


@pytest.mark.parametrize("model,optimizer", [("resnet20", "sgd"), ("test_bn_resnet", "adam")])
def test_vectorized_equals_sequential_in_float64(model, optimizer):
    """abn metrics within 1e-10 (resnet20's BatchNorm2d; the plugin's BatchNorm1d and a momentum-0.3
    BatchNorm), bursts from θ0, from a state, with test, and of 0 epochs; the vectorized trainer's modules
    keep their momenta."""
    local, vec, exp = both(abn_raw(model, optimizer=optimizer))
    tasks = mixed_tasks(exp, n=3) + [BurstTask(exp.random_mask(0.5, 9), 0.0, 55, keep_state=True)]
    momenta = [m.momentum for _, m in batch_norms(vec.context.model)]
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert "abn_val_accuracy" in a.metrics
        assert_same(a, b, F64_TOL, relative=False)
    assert [m.momentum for _, m in batch_norms(vec.context.model)] == momenta


def test_stacked_recalibration_equals_each_model_and_leaves_the_trained_statistics():
    """recalibrate_stacked on K = 2 models = recalibrate on each, in float64; the stacked statistics it is
    given (the trained ones) are not touched, and the modules' momenta are back."""
    cfg = build_config(abn_raw("test_bn_resnet"))
    ctx = WorkerContext(cfg, "cpu")
    models = [copy.deepcopy(ctx.model) for _ in range(2)]
    with torch.no_grad():
        for i, m in enumerate(models):
            for p in m.parameters():
                p.mul_(1.0 + 0.2 * i)
    fwd = StackedForward(ctx.model, "test_bn_resnet")
    params = {n: torch.stack([dict(m.named_parameters())[n] for m in models]).detach() for n, _ in ctx.model.named_parameters()}
    trained = {n: torch.stack([dict(m.named_buffers())[n] for m in models]) for n in fwd.buffer_names}
    before = {n: t.clone() for n, t in trained.items()}
    batches = recalibration_batches(ctx.data, cfg.train, [4, 5], N, torch.device("cpu"), torch.float64)
    fresh = recalibrate_stacked(fwd, params, trained, batches)
    assert all(torch.equal(before[n], trained[n]) for n in trained)
    assert [m.momentum for _, m in batch_norms(ctx.model)] == [0.1, 0.1, 0.3, 0.1]
    for i, (m, seed) in enumerate(zip(models, [4, 5])):
        recalibrate(m, recalibration_batches(ctx.data, cfg.train, [seed], N, torch.device("cpu"), torch.float64))
        for n, b in m.named_buffers():
            assert float((b.double() - fresh[n][i].double()).abs().max()) < 1e-10, n


def test_a_burst_of_zero_epochs_evaluates_the_start_weights():
    """search.burst_epochs 0 is allowed; the burst takes no step, reports no train_loss, returns its start
    weights under the mask, and adaptive BN recalibrates θ0's masked network."""
    raw = abn_raw()
    raw["search"]["burst_epochs"] = 0
    local, vec, exp = both(raw)
    assert exp.cfg.search.burst_epochs == 0
    task = BurstTask(exp.random_mask(0.5, 3), 0.0, 8, keep_state=True)
    a, b = local.evaluate([task])[0], vec.evaluate([task])[0]
    assert_same(a, b, F64_TOL, relative=False)
    assert a.epochs == 0 and a.steps == 0 and "train_loss" not in a.metrics and a.finite
    for k, v in exp.theta0.items():
        want = v * task.mask[k] if k in set(task.mask) else v
        assert torch.equal(a.state[k], want), k
    assert a.metrics["abn_val_loss"] != a.metrics["val_loss"]


def test_no_batchnorm_means_abn_equals_plain():
    local, vec, exp = both({**abn_raw(), "model": {"name": "mlp", "params": {"hidden": [16]}}})
    tasks = mixed_tasks(exp, n=2)
    for a, b in zip(local.evaluate(tasks), vec.evaluate(tasks)):
        assert a.metrics["abn_val_accuracy"] == a.metrics["val_accuracy"]
        assert a.metrics["abn_val_loss"] == a.metrics["val_loss"]
        assert_same(a, b, F64_TOL, relative=False)


def test_fitness_ranks_by_abn_accuracy_and_a_zero_burst_kstarts_picks_by_it(tmp_path):
    results = [BurstResult({"val_accuracy": 0.9 - i / 10, "abn_val_accuracy": a, "finite": 1.0})
               for i, a in enumerate([0.2, 0.7, 0.5])]
    values = [score("adaptive_bn_accuracy", r, None)[0] for r in results]
    assert values == [0.2, 0.7, 0.5]
    worst, why = score("adaptive_bn_accuracy", BurstResult({"val_accuracy": 0.5, "finite": 1.0}), None)
    assert worst == float("-inf") and "nan" in why  # no metric (adaptive BN off): ranks last, reason logged
    # EagleEye's setting: k-starts candidates ranked by adaptive BN on θ0, no burst at all
    raw = abn_raw()
    raw["search"].update(method="kstarts", burst_epochs=0, fitness="adaptive_bn_accuracy", population=4)
    raw["final"] = {"epochs": 1}
    summary = run_experiment(build_config(raw), tmp_path)
    fitness = [c["fitness"] for c in summary["candidates"]]
    assert len(set(fitness)) > 1 and fitness[summary["winner_index"]] == max(fitness)


def test_probe_helpers_for_predictiveness_studies():
    cfg = build_config(abn_raw())
    ev = make_evaluator(cfg)
    exp = Experiment(cfg, ev, ev.context.data)
    masks = [exp.random_mask(0.5, i) for i in range(2)]
    rows = burst_predictors(ev, masks, [1, 2], 1.0)
    burst = ev.evaluate([BurstTask(masks[1], 1.0, 2, keep_state=True)])[0]
    theta0 = ev.evaluate([BurstTask(masks[1], 0.0, 2)])[0]
    assert rows[1] == {"burst_val_accuracy": burst.metrics["val_accuracy"],
                       "abn_no_burst_val_accuracy": theta0.metrics["abn_val_accuracy"],
                       "abn_after_burst_val_accuracy": burst.metrics["abn_val_accuracy"]}
    assert state_accuracies(ev, masks[1], burst.state, 2) == (burst.metrics["val_accuracy"],
                                                             burst.metrics["abn_val_accuracy"])
    off = make_evaluator(build_config(abn_raw(n=0)))
    with pytest.raises(EvoPaiError, match="search.adaptive_bn_batches"):
        state_accuracies(off, masks[0], None, 1)


@pytest.mark.parametrize("change,match", [
    ({"fitness": "adaptive_bn_accuracy", "adaptive_bn_batches": 0}, r"search.fitness: adaptive_bn_accuracy needs search.adaptive_bn_batches > 0"),
    ({"method": "nsga2", "nsga2": {"objectives": ["adaptive_bn_accuracy", "kept_weights"]}},
     r"search.nsga2.objectives: adaptive_bn_accuracy needs search.adaptive_bn_batches"),
    ({"burst_epochs": 0}, r"search.burst_epochs: 0 trains nothing, so fitness 'mixed'"),
])
def test_preflight_refuses_what_cannot_work(change, match):
    raw = tiny_raw(**change)
    with pytest.raises(EvoPaiError, match=match) as err:
        check_config(build_config(raw))
    assert "\n" not in str(err.value)


def test_a_model_without_batchnorm_ranks_by_val_accuracy():
    """Nothing to recalibrate: accepted (it is channel masks' default fitness on any model), abn = plain."""
    raw = tiny_raw(fitness="adaptive_bn_accuracy", adaptive_bn_batches=4)  # the mlp
    preflight(build_config(raw))
    preflight(build_config(abn_raw() | {"search": {**abn_raw()["search"], "fitness": "adaptive_bn_accuracy"}}))


@pytest.mark.slow  # starts Ray: ~25 s on the 2-core VM
def test_ray_actor_reports_abn_as_the_local_backend():
    """A real local Ray, one actor with actor_trainer vectorized: the abn metrics equal the local backend's in float64."""
    ray = pytest.importorskip("ray")
    raw = abn_raw()
    local, _, exp = both(raw)
    tasks = mixed_tasks(exp, n=2)
    ref = local.evaluate(tasks)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        cfg = build_config({**raw, "evaluation": {"device": "cpu", "backend": "ray", "num_actors": 1,
                                                  "cpus_per_actor": 1, "actor_trainer": "vectorized"}})
        with make_evaluator(cfg, exp.data) as ev:
            got = ev.evaluate(tasks)
    finally:
        ray.shutdown()
    for a, b in zip(ref, got):
        assert "abn_val_accuracy" in b.metrics
        assert_same(a, b, F64_TOL, relative=False)


def test_recalibration_ignores_dropout():
    """Only BatchNorm runs in train mode while recalibrating: Dropout stays off, so the pass is deterministic."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Linear(8, 2)).double()
    x = torch.randn(2, 1, 16, 6, dtype=torch.float64)
    batches = [(x[0], None), (x[1], None)]
    recalibrate(model, batches)
    h = model[0](x[:, 0])
    assert torch.allclose(model[2].running_mean, h.mean(1).mean(0), atol=1e-12)

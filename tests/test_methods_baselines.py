"""The baseline and control methods, successive halving, and search-cost accounting, on tiny configs."""
from __future__ import annotations

import pytest

from evo_pai.core.budgets import cubic_schedule
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.runs.runner import run_experiment
from evo_pai.search.imp import imp_schedule
from evo_pai.search.kstarts_sh import rung_budgets

from conftest import tiny_raw


def run(method: str, out=None, **search) -> dict:
    if out is not None:
        out.mkdir(parents=True)
    return run_experiment(build_config(tiny_raw(method, **search)), out)


@pytest.mark.parametrize("method", ["magnitude", "snip", "grasp", "synflow"])
def test_one_shot_methods_hit_the_target_without_search_compute(method):
    s = run(method, params={"iterations": 5} if method == "synflow" else {})
    assert s["sparsity"] == pytest.approx(0.8, abs=0.005)
    assert s["search_model_epochs"] == 0 and s["search_flops"]["dense_equivalent"] == 0
    assert s["pruner"] == method and 0.0 <= s["test_accuracy"] <= 1.0


def test_one_shot_masks_differ_by_criterion(tmp_path):
    masks = {}
    for m in ["magnitude", "snip", "synflow"]:
        run(m, tmp_path / m, params={"iterations": 5} if m == "synflow" else {})
        masks[m] = MaskSet.load(tmp_path / m / "mask.safetensors")
    assert len({mk.hash() for mk in masks.values()}) == 3


def test_equal_epoch_controls_train_longer(tmp_path):
    short = run("random", tmp_path / "a")
    longer = run("random", tmp_path / "b", params={"extra_epochs": 2})
    assert longer["extra_epochs"] == 2.0 and short["extra_epochs"] == 0.0
    assert longer["test_accuracy"] != short["test_accuracy"] or longer["test_loss"] != short["test_loss"]
    with pytest.raises(EvoPaiError, match="search.params.extra_epochs"):
        run("random", params={"extra_epochs": -1})


def test_gmp_follows_dgs_schedule_exactly_with_magnitude(tmp_path):
    raw = tiny_raw("gmp", dg={"epochs": 3})
    records = []
    from evo_pai.data.datasets import load_data
    from evo_pai.evaluation import make_evaluator
    from evo_pai.search.experiment import Experiment
    from evo_pai.core.registry import METHOD

    cfg = build_config(raw)
    data = load_data(cfg.data)
    with make_evaluator(cfg, data) as ev:
        exp = Experiment(cfg, ev, data, records.append)
        outcome = METHOD.get("gmp")(exp)
        assert exp.cfg is cfg  # the swapped mutation does not leak out
    got = [r["pruned_to"] for r in records]
    one_weight = 1 / 1088  # the tiny mlp's prunable weights: a step lands on its level to the nearest weight
    assert got == pytest.approx(cubic_schedule(0.0, 0.8, 3), abs=one_weight)
    assert outcome.mask.sparsity() == pytest.approx(0.8, abs=one_weight)
    s_gmp, s_dg = run("gmp", dg={"epochs": 3}), run("dissipating", dg={"epochs": 3})
    assert s_gmp["search_model_epochs"] == s_dg["search_model_epochs"] == 3.0


def test_imp_schedule_prunes_a_fifth_of_the_rest_each_round():
    sched = imp_schedule(0.99, 0.2)
    assert len(sched) == 21 and sched[-1] == 0.99
    for a, b in zip([0.0] + sched[:-2], sched[:-1]):
        assert (1 - b) == pytest.approx(0.8 * (1 - a))
    assert imp_schedule(0.2, 0.2) == [0.2]
    with pytest.raises(EvoPaiError, match="prune_fraction"):
        imp_schedule(0.9, 1.5)


def test_imp_counts_every_rounds_compute_and_lands_on_target(tmp_path):
    s = run("imp", tmp_path / "imp", params={"round_epochs": 1})
    rounds = len(imp_schedule(0.8, 0.2))
    assert s["imp_rounds"] == rounds and s["search_model_epochs"] == pytest.approx(rounds * 1.0)
    assert s["sparsity"] == pytest.approx(0.8, abs=0.005)
    late = run("imp", params={"round_epochs": 1, "rewind_epochs": 1})
    assert late["search_model_epochs"] == pytest.approx(rounds + 1.0)


def test_successive_halving_uses_kstarts_candidates_and_saves_compute():
    assert rung_budgets(8, 1.0) == [0.25, 0.5, 1.0]
    assert rung_budgets(2, 1.0) == [1.0]
    # 360 training examples / batch 32 = 12 steps per epoch: every rung is whole steps.
    plain = run("kstarts", population=8, burst_epochs=4)
    sh = run("kstarts_sh", population=8, burst_epochs=4)
    assert [c["key"] for c in sh["candidates"]] == [c["key"] for c in plain["candidates"]]
    assert sh["plain_kstarts_epochs"] == plain["search_model_epochs"] == 32.0
    assert sh["search_model_epochs"] == pytest.approx(16.0)  # 8×1 + 4×1 + 2×2
    assert sh["compute_saved_ratio"] == pytest.approx(2.0)
    assert [r["candidates"] for r in sh["rungs"]] == [8, 4, 2]


def test_search_flops_are_three_forwards_per_example():
    s = run("kstarts", population=3, burst_epochs=1)
    n_train = 400 - 40  # tiny_raw: 400 training examples, a tenth held out for validation
    dense = s["flops"]["dense"]
    # Every K-starts candidate has the winner's per-layer counts, so its forward cost is the winner's.
    assert s["search_flops"]["dense_equivalent"] == pytest.approx(3 * dense * n_train * 3.0)
    assert s["search_flops"]["sparse"] == pytest.approx(3 * s["flops"]["sparse"] * n_train * 3.0)
    assert s["search_flops"]["sparse"] < s["search_flops"]["dense_equivalent"]

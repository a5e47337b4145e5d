"""Genomes beyond a bit mask: the layer-budget gene (exact totals, floors, blend) and `regrow`."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_raw
from evo_pai.core.budgets import erk_counts, fit_counts, total_keep
from evo_pai.core.config import build_config
from evo_pai.operators.genomes import budget_blend, deviation_of, layer_budget
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.operators.variation import PruneStep, regrow
from evo_pai.runs.runner import run_experiment
from evo_pai.training.carry import Carry

SHAPES = {"l1.weight": (300, 784), "l2.weight": (100, 300), "out.weight": (10, 100)}


def trained(seed: int, sparsity: float = 0.6) -> Individual:
    g = torch.Generator().manual_seed(seed)
    mask = MaskSet.random(SHAPES, sparsity, g, "erk", "out.weight")
    traits = {"weight": {k: torch.randn(s, generator=g) * mask[k] for k, s in SHAPES.items()},
              "grad_accum": {k: torch.rand(s, generator=g) for k, s in SHAPES.items()},
              "rel_change": {k: torch.rand(s, generator=g) for k, s in SHAPES.items()}}
    return Individual(mask, traits)


def test_fit_counts_exact_within_bounds():
    sizes = {"a": 100, "b": 50, "c": 10}
    c = fit_counts({"a": 0.1, "b": 0.9, "c": 5.0}, sizes, 70, {"a": 1, "b": 1, "c": 10})
    assert sum(c.values()) == 70 and c["c"] == 10 and c["b"] <= 50 and c["a"] >= 1
    assert fit_counts({"a": 1e-9, "b": 1e-9, "c": 1.0}, sizes, 12, {"a": 1, "b": 1, "c": 1}) == {"a": 1, "b": 1, "c": 10}
    with pytest.raises(ValueError):
        fit_counts({"a": 1, "b": 1, "c": 1}, sizes, 200, {"a": 1, "b": 1, "c": 1})


@pytest.mark.parametrize("target", [0.9, 0.98, 0.995])
def test_budget_mutation_hits_the_target_exactly(target):
    g = torch.Generator().manual_seed(0)
    total = total_keep(SHAPES, target)
    moved = 0
    for seed in range(20):
        ind = trained(seed)
        for final, sparsity in ((False, 0.8), (True, target)):
            step = PruneStep(sparsity, target, final)
            mask = layer_budget(ind, step, g, sigma=0.5)
            want = total if final else total_keep(SHAPES, 0.8)
            assert sum(mask.counts().values()) == want
            assert all(c >= 1 for c in mask.counts().values())
            assert int(mask["out.weight"].sum(1).min()) >= 1  # every class keeps an input
            assert mask.dead_units()["out.weight"] == 0
        moved += mask.counts() != erk_counts(SHAPES, target)
    assert moved >= 15  # sigma > 0 tilts the budget


def test_budget_mutation_without_noise_follows_erk_and_magnitude():
    ind = trained(1)
    mask = layer_budget(ind, PruneStep(0.9, 0.9, True), torch.Generator(), sigma=0.0)
    want = erk_counts(SHAPES, 0.9)
    assert all(abs(mask.counts()[k] - want[k]) <= 1 for k in want)
    for k in mask:  # inside each layer: the largest |w| among the kept
        w = ind.traits["weight"][k].abs()
        if k != "out.weight":
            assert float(w[mask[k]].min()) >= float(w[ind.mask[k] & ~mask[k]].max())


def test_budget_gene_survives_a_change_of_sparsity():
    ind = trained(2)
    ind.mask = layer_budget(ind, PruneStep(0.7, 0.9, False), torch.Generator().manual_seed(3), sigma=0.8)
    dev = deviation_of(ind.mask, "erk")
    mask = layer_budget(ind, PruneStep(0.9, 0.9, True), torch.Generator(), sigma=0.0)
    dev2 = deviation_of(mask, "erk")
    ranks = lambda d: sorted(d, key=d.get)  # noqa: E731
    assert ranks(dev) == ranks(dev2)  # the tilt's direction is kept at the new sparsity


def test_budget_blend_mixes_budgets_and_keeps_each_parents_state():
    a, b = trained(4), trained(5)
    a.mask = layer_budget(a, PruneStep(0.6, 0.6, True), torch.Generator().manual_seed(1), sigma=1.0)
    b.mask = layer_budget(b, PruneStep(0.6, 0.6, True), torch.Generator().manual_seed(2), sigma=1.0)
    a.carry = Carry({}, None, 7)
    c1, c2 = budget_blend(a, b, torch.Generator().manual_seed(0))
    total = sum(a.mask.counts().values())
    assert sum(c1.mask.counts().values()) == total == sum(c2.mask.counts().values())
    assert c1.carry is a.carry and c2.carry is b.carry and c1.origin == "crossover"
    assert c1.traits is a.traits and c2.traits is b.traits
    assert c1.mask.counts() == c2.mask.counts()  # one blended budget, realised on each parent's weights
    assert c1.mask.counts() not in (a.mask.counts(), b.mask.counts())  # a mix, neither parent's budget
    for k in a.mask:
        lo, hi = sorted((a.mask.counts()[k], b.mask.counts()[k]))
        assert lo - 2 <= c1.mask.counts()[k] <= hi + 2


def test_regrow_on_a_hand_made_layer():
    mask = MaskSet({"w": torch.tensor([[True, True, True, False], [True, False, False, False]])})
    w = torch.tensor([[0.5, -0.1, 2.0, 0.0], [-0.3, 0.0, 0.0, 0.0]])
    g = torch.tensor([[9.0, 9.0, 9.0, 0.2], [9.0, 0.7, 0.1, 0.4]])
    ind = Individual(mask, {"weight": {"w": w}, "grad_accum": {"w": g}})
    out = regrow(ind, PruneStep(0.5, 0.5, False, min_output_fan_in=0), torch.Generator(), fraction=0.5)
    # n = round(0.5 * 4) = 2: drop |w| = 0.1 and 0.3; grow g = 0.7 and 0.4
    assert out["w"].tolist() == [[True, False, True, False], [False, True, False, True]]
    assert out.counts() == mask.counts()


def test_regrow_on_a_diverged_layer_keeps_its_density():
    """A network trained at a learning rate far too high has NaN weights and gradients (the population
    study's lr x10 rows): regrow must still swap n for n, dropping the NaN weights first."""
    mask = MaskSet({"w": torch.tensor([[True, True, True, False], [True, False, False, False]])})
    nan = float("nan")
    w = torch.tensor([[nan, 0.5, nan, 0.0], [2.0, 0.0, 0.0, 0.0]])
    g = torch.tensor([[nan, nan, nan, nan], [nan, 0.7, nan, 0.4]])
    ind = Individual(mask, {"weight": {"w": w}, "grad_accum": {"w": g}})
    out = regrow(ind, PruneStep(0.5, 0.5, False, min_output_fan_in=0), torch.Generator(), fraction=0.5)
    assert out.counts() == mask.counts()  # 4 kept, as before the swap
    assert out["w"].tolist() == [[False, True, False, False], [True, True, False, True]]


def test_regrow_keeps_every_layer_density_and_grows_only_pruned_weights():
    ind = trained(6)
    out = regrow(ind, PruneStep(0.6, 0.9, False), torch.Generator(), fraction=0.2)
    assert out.counts() == ind.mask.counts()
    grown = {k: out[k] & ~ind.mask[k] for k in out}
    assert all(int(v.sum()) > 0 for k, v in grown.items() if not bool(ind.mask[k].all()))  # a dense layer: no swap
    assert int(grown["l1.weight"].sum()) == round(0.2 * ind.mask.counts()["l1.weight"])


def test_budget_genome_and_regrow_from_yaml():
    raw = tiny_raw("combined", mutation="layer_budget", mutation_params={"sigma": 0.3}, crossover="budget_blend",
                   explore_mutation="regrow", explore_params={"fraction": 0.1}, inherit="parent")
    s = run_experiment(build_config(raw), None)
    assert s["sparsity"] == pytest.approx(0.8, abs=2e-3)


def test_unknown_mutation_params_are_refused():
    from evo_pai.core.errors import EvoPaiError

    raw = tiny_raw("combined", explore_mutation="regrow", explore_params={"fraction:0.1": None}, explore_prob=1.0)
    with pytest.raises(EvoPaiError, match="regrow"):
        run_experiment(build_config(raw), None)

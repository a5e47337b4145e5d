import math

import pytest
import torch

from evo_pai.core.budgets import layer_counts
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.operators.variation import PruneStep, dissipating_gradients, layerwise, magnitude, random_swap

SHAPES = {"a": (6, 10), "b": (4, 6)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # traits below are drawn from the global RNG


def _ind(mask, rel=None, weight=None, grad=None):
    traits = {
        "rel_change": rel or {k: torch.rand(s) for k, s in SHAPES.items()},
        "weight": weight or {k: torch.randn(s) for k, s in SHAPES.items()},
        "grad_accum": grad or {k: torch.rand(s) for k, s in SHAPES.items()},
    }
    return Individual(mask, traits)


def test_dg_threshold_prunes_exactly_the_weights_under_tau():
    w0 = torch.tensor([[1.0, -2.0, 0.5, 4.0]])
    wt = torch.tensor([[1.05, -1.0, 0.9, 4.2]])  # moved: 5 %, 50 %, 80 %, 5 %
    rel = {"w": (wt - w0).abs() / w0.abs()}
    ind = Individual(MaskSet.dense({"w": (1, 4)}), {"rel_change": rel})
    step = PruneStep(sparsity=0.25, target=0.75, final=False, budget="uniform", min_output_fan_in=0)
    out = dissipating_gradients(ind, step, torch.Generator(), tau=0.1, mode="threshold", max_step_fraction=1.0)
    # |w_t - w_0| <= 0.1 |w_0| holds for columns 0 and 3, whatever their magnitude (4.0 is the largest).
    assert out["w"].tolist() == [[False, True, True, False]]


def test_dg_threshold_is_capped_at_the_target_and_the_step_fraction():
    rel = {"w": torch.tensor([[0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.5, 0.6]])}
    ind = Individual(MaskSet.dense({"w": (1, 8)}), {"rel_change": rel})
    never_overshoot = PruneStep(0.5, 0.5, False, "uniform", 0)
    out = dissipating_gradients(ind, never_overshoot, torch.Generator(), tau=0.1, max_step_fraction=1.0)
    assert out.counts()["w"] == 4 and out["w"][0, :4].sum() == 0  # smallest relative change goes first
    capped = PruneStep(0.5, 0.9, False, "uniform", 0)
    out = dissipating_gradients(ind, capped, torch.Generator(), tau=0.1, max_step_fraction=0.25)
    assert out.counts()["w"] == 6


def test_dg_final_step_falls_back_to_ranking_and_lands_on_target():
    gen = torch.Generator().manual_seed(1)
    mask = MaskSet.random(SHAPES, 0.3, gen, "uniform")
    ind = _ind(mask)
    step = PruneStep(0.6, 0.8, True, "uniform", 0)
    out = dissipating_gradients(ind, step, gen, tau=0.0)  # nothing under tau: ranking does it all
    assert out.counts() == layer_counts(SHAPES, 0.8, "uniform")
    for k in SHAPES:  # the kept ones are the largest relative changes among the parent's kept
        kept_rel = ind.traits["rel_change"][k][out[k]]
        dropped = ind.traits["rel_change"][k][mask[k] & ~out[k]]
        assert kept_rel.min() >= dropped.max()


def test_dg_schedule_mode_follows_the_schedule():
    gen = torch.Generator().manual_seed(2)
    ind = _ind(MaskSet.dense(SHAPES))
    out = dissipating_gradients(ind, PruneStep(0.5, 0.9, False, "uniform", 0), gen, mode="schedule")
    assert out.counts() == layer_counts(SHAPES, 0.5, "uniform")


def test_dg_global_scope_hits_total():
    gen = torch.Generator().manual_seed(3)
    ind = _ind(MaskSet.dense(SHAPES))
    out = dissipating_gradients(ind, PruneStep(0.5, 0.5, True, "uniform", 0), gen, scope="global")
    assert sum(out.counts().values()) == round(0.5 * 84)


def test_magnitude_prunes_smallest_weights():
    w = {"w": torch.tensor([[0.1, -3.0, 0.2, 2.0]])}
    ind = Individual(MaskSet.dense({"w": (1, 4)}), {"weight": w})
    out = magnitude(ind, PruneStep(0.5, 0.5, False, "uniform", 0), torch.Generator())
    assert out["w"].tolist() == [[False, True, False, True]]


def test_random_swap_keeps_density_and_changes_mask():
    gen = torch.Generator().manual_seed(4)
    mask = MaskSet.random(SHAPES, 0.5, gen, "uniform")
    out = random_swap(_ind(mask), PruneStep(0.5, 0.5, False, "uniform", 0), gen, fraction=0.2)
    assert out.counts() == mask.counts() and out.hash() != mask.hash()


def test_layerwise_crossover_keeps_per_layer_density_and_copies_traits():
    gen = torch.Generator().manual_seed(5)
    a, b = (_ind(MaskSet.random(SHAPES, 0.7, gen, "erk")) for _ in range(2))
    mixed = False
    for _ in range(5):
        c1, c2 = layerwise(a, b, gen)
        assert c1.mask.counts() == a.mask.counts() == c2.mask.counts()
        sources = []
        for k in SHAPES:  # each layer (mask and traits) from one parent, the other child's from the other
            src, other = (a, b) if torch.equal(c1.mask[k], a.mask[k]) else (b, a)
            assert torch.equal(c1.mask[k], src.mask[k]) and torch.equal(c2.mask[k], other.mask[k]), k
            for trait in ("rel_change", "weight", "grad_accum"):
                assert torch.equal(c1.traits[trait][k], src.traits[trait][k]), (k, trait)
                assert torch.equal(c2.traits[trait][k], other.traits[trait][k]), (k, trait)
            sources.append(src is a)
        mixed |= len(set(sources)) == 2
    assert mixed  # some child took layers from both parents


def test_layerwise_crossover_repairs_total_under_global_budget():
    gen = torch.Generator().manual_seed(6)
    a = _ind(MaskSet.from_scores({"a": torch.rand(6, 10), "b": torch.ones(4, 6)}, 0.5, "global"))
    b = _ind(MaskSet.from_scores({"a": torch.rand(6, 10) + 0.3, "b": torch.rand(4, 6)}, 0.5, "global"))
    assert a.mask.counts() != b.mask.counts()
    total = sum(a.mask.counts().values())
    for _ in range(4):
        for c in layerwise(a, b, gen):
            assert sum(c.mask.counts().values()) == total


def test_final_step_lands_on_the_total_when_a_layer_is_already_below_its_count():
    """A crossover child whose total was repaired across layers can hold fewer weights in a layer than
    the final budget gives it; a prune-only final step keeps that layer and lands the total elsewhere."""
    step = PruneStep(sparsity=0.8, target=0.8, final=True, budget="uniform", min_output_fan_in=0)
    budget = layer_counts({k: s for k, s in SHAPES.items()}, 0.8, "uniform", 1)  # a: 12, b: 5 (uniform 20 %)
    mask = MaskSet.dense(SHAPES)
    b = torch.zeros(24, dtype=torch.bool)
    b[:3] = True  # layer b holds 3, under its 5
    mask = mask.with_layers({"b": b.reshape(SHAPES["b"])})
    for op in (dissipating_gradients, magnitude):
        out = op(_ind(mask), step, torch.Generator())
        counts = out.counts()
        assert counts["b"] == 3 and (out["b"] == mask["b"]).all()  # nothing regrown, nothing more pruned
        assert sum(counts.values()) == sum(budget.values())  # a keeps b's shortfall: 12 + 2
        assert counts["a"] == budget["a"] + budget["b"] - 3

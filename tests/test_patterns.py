"""N:M masks (masks.pattern): the pattern holds after every creation path and every operator."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_raw
from evo_pai.core.config import ModelConfig, build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.models.networks import build_model, output_layer_name, prunable_names
from evo_pai.operators.variation import PruneStep, layerwise
from evo_pai.core.patterns import eligible, holds, max_keep, parse_pattern, room
from evo_pai.operators.pruners import ScoreContext, prune
from evo_pai.core.registry import MUTATION, PRUNER
from evo_pai.runs.runner import preflight, run_experiment
from evo_pai.models.units import links

PATTERNS = [(2, 4), (1, 4), (3, 8)]


def lenet(hidden=(64, 32)):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", params={"hidden": list(hidden)}), (1, 8, 10), 10)
    shapes = {k: tuple(dict(model.named_parameters())[k].shape) for k in prunable_names(model)}
    return model, shapes, output_layer_name(model)


def traits(shapes, gen):
    return {"weight": {k: torch.randn(s, generator=gen) for k, s in shapes.items()},
            "rel_change": {k: torch.rand(s, generator=gen) for k, s in shapes.items()},
            "grad_accum": {k: torch.rand(s, generator=gen) for k, s in shapes.items()}}


def all_hold(mask: MaskSet, pattern) -> bool:
    return all(holds(m, pattern) for m in mask.values())


def test_parse_and_refuse():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern(None) is None
    for bad in ("4:2", "2-4", "0:4"):
        with pytest.raises(EvoPaiError, match="masks.pattern"):
            parse_pattern(bad)
    with pytest.raises(EvoPaiError, match="masks.pattern"):
        build_config({"masks": {"pattern": "3:2"}})


def test_groups_run_along_the_input_dimension():
    scores = torch.tensor([[4.0, 3, 2, 1, 1, 2, 3, 4, 9, 8]])  # 10 inputs: groups of 4, 4 and a last 2
    assert eligible(scores, (2, 4)).tolist() == [[True, True, False, False, False, False, True, True, True, True]]
    assert max_keep((1, 10), (2, 4)) == 6 and max_keep((3, 2, 2, 2), (2, 4)) == 12  # conv: in*kh*kw rows
    mask = torch.tensor([[True, False, False, False, True, True, False, False]])
    assert room(mask, (2, 4)).tolist() == [[False, True, True, True, False, False, False, False]]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("budget", ["erk", "uniform", "global"])
def test_created_masks_hold_the_pattern_with_exact_counts(pattern, budget, gen):
    _, shapes, out = lenet()
    sparsity = 1 - pattern[0] / pattern[1] / 2
    mask = MaskSet.random(shapes, sparsity, gen, budget, out, 1, pattern=pattern)
    assert all_hold(mask, pattern) and mask.pattern == pattern
    assert abs(mask.sparsity() - sparsity) < 2e-3  # ERK redistributes what the pattern caps
    assert mask[out].reshape(10, -1).sum(1).min() >= 1  # every class keeps an input


def test_every_built_in_mutation_keeps_the_pattern(gen):
    model, shapes, out = lenet()
    chain = links(model)
    for pattern in PATTERNS:
        base = MaskSet.random(shapes, 0.9, gen, "erk", out, 1, pattern=pattern)
        dense = MaskSet.dense(shapes, out, pattern)  # dissipating and gmp start dense
        for name in MUTATION.names():
            fn = MUTATION.get(name)
            if not fn.__module__.startswith("evo_pai."):
                continue  # other tests register deliberately broken mutations
            if name == "width":
                continue  # channel masks only, and N:M patterns are refused with them (tests/test_channel_search.py)
            params = {"links": chain} if name in ("neuron", "grow_alive") else {}
            for start, target in ((base, 0.95), (base, 0.8), (dense, 0.9)):
                if name in ("grow", "grow_alive") and target > start.sparsity():
                    continue
                step = PruneStep(target, target, True, "erk", 1)
                child = fn(Individual(start, traits(shapes, gen)), step, gen, **params)
                assert all_hold(child, pattern), (name, pattern, target)
                assert child.pattern == pattern


@pytest.mark.parametrize("budget", ["erk", "global"])
def test_crossover_keeps_the_pattern(budget, gen):
    _, shapes, out = lenet()
    a, b = (Individual(MaskSet.random(shapes, 0.9, gen, budget, out, 1, pattern=(2, 4)), traits(shapes, gen))
            for _ in range(2))
    for _ in range(5):
        for child in layerwise(a, b, gen):
            assert all_hold(child.mask, (2, 4)) and child.mask.pattern == (2, 4)


@pytest.mark.parametrize("pruner", ["random", "magnitude", "snip", "grasp", "synflow"])
def test_pruners_keep_the_pattern(pruner, gen):
    model, shapes, out = lenet()
    ctx = ScoreContext(model, list(shapes), torch.randn(16, 1, 8, 10), torch.randint(0, 10, (16,)), gen)
    assert pruner in PRUNER
    params = {"iterations": 5} if pruner == "synflow" else {}
    mask = prune(pruner, ctx, MaskSet.dense(shapes, out, (2, 4)), 0.9, "erk", 1, False, params)
    assert all_hold(mask, (2, 4)) and abs(mask.sparsity() - 0.9) < 1e-3


def test_mask_file_keeps_its_pattern(tmp_path, gen):
    _, shapes, out = lenet()
    mask = MaskSet.random(shapes, 0.9, gen, "erk", out, pattern=(2, 4))
    mask.save(tmp_path / "m.safetensors")
    assert MaskSet.load(tmp_path / "m.safetensors").pattern == (2, 4)


@pytest.mark.parametrize("method, extra", [("combined", {}), ("dissipating", {"dg": {"epochs": 2}}),
                                           ("nsga2", {"nsga2": {"density_range": [0.1, 0.5], "levels": [0.5, 0.8, 0.9],
                                                                "init_epochs": 1, "init_steps": 2}})])
def test_searches_end_with_pattern_masks(method, extra, tmp_path):
    raw = tiny_raw(method, **extra)
    raw["masks"] = {"pattern": "2:4"}
    summary = run_experiment(build_config(raw), tmp_path)
    mask = MaskSet.load(tmp_path / "mask.safetensors")
    assert mask.pattern == (2, 4) and all_hold(mask, (2, 4))
    for m in summary.get("members", []):
        assert all_hold(MaskSet.load(tmp_path / m["mask"]), (2, 4))


def test_sparsity_below_the_pattern_refused_before_any_folder():
    raw = tiny_raw("kstarts")
    raw["masks"] = {"pattern": "2:4"}
    raw["search"]["sparsity"] = 0.3
    with pytest.raises(EvoPaiError, match="search.sparsity: masks.pattern 2:4"):
        preflight(build_config(raw))

"""The structured `neuron` mutation: whole units go, the count lands on the step, compaction shrinks."""
from __future__ import annotations

import csv

import pytest
import torch

from conftest import tiny_raw
from evo_pai import register_unit_criterion
from evo_pai.core.budgets import total_keep
from evo_pai.deploy.compact import compact_model, widths
from evo_pai.core.config import ModelConfig, build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.models.networks import build_model, output_layer_name, prunable_names
from evo_pai.operators.variation import PruneStep
from evo_pai.runs.runner import run_experiment
from evo_pai.operators.structured import grow_alive, neuron
from evo_pai.models.units import alive_units, links


def setup(gen, sparsity=0.8):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", params={"hidden": [60, 40]}), (1, 8, 8), 10)
    shapes = {k: tuple(dict(model.named_parameters())[k].shape) for k in prunable_names(model)}
    mask = MaskSet.random(shapes, sparsity, gen, "erk", output_layer_name(model))
    traits = {"weight": {k: torch.randn(s, generator=gen) for k, s in shapes.items()},
              "grad_accum": {k: torch.rand(s, generator=gen) for k, s in shapes.items()}}
    return model, Individual(mask, traits), links(model)


def test_neuron_removes_units_and_lands_on_the_count(gen):
    model, ind, chain = setup(gen)
    before = [int(alive_units(dict(ind.mask), link).sum()) for link in chain]
    out = neuron(ind, PruneStep(0.9, 0.9, True, "erk"), gen, links=chain, fraction=0.5)
    after = [int(alive_units(dict(out), link).sum()) for link in chain]
    assert sum(out.counts().values()) == total_keep(ind.mask.shapes(), 0.9)
    assert all(a < b for a, b in zip(after, before)) and after[0] <= before[0] - before[0] // 4
    assert widths(compact_model(model, out))[:2] == after  # compaction removes exactly those units


def test_unstructured_magnitude_leaves_units_alive_where_neuron_removes_them(gen):
    from evo_pai.operators.variation import magnitude

    model, ind, chain = setup(gen)
    step = PruneStep(0.9, 0.9, True, "erk")
    unstructured = widths(compact_model(model, magnitude(ind, step, gen, scope="global")))
    structured = widths(compact_model(model, neuron(ind, step, gen, links=chain, fraction=0.6)))
    assert sum(structured[:2]) < sum(unstructured[:2])


def test_registered_unit_criterion_is_used(gen):
    @register_unit_criterion("first_units", "test: units with the lowest index go first")
    def first_units(ind, link, generator):
        return torch.arange(link.units, dtype=torch.float64)

    model, ind, chain = setup(gen, sparsity=0.0)
    out = neuron(ind, PruneStep(0.3, 0.3, True, "erk"), gen, links=chain, criterion="first_units", fraction=0.2)
    alive = alive_units(dict(out), chain[0])
    assert not alive[:12].any() and alive[12:].all()  # 20 % of 60 units, lowest indices


def test_grow_alive_grows_only_into_alive_units(gen):
    model, ind, chain = setup(gen)
    cut = neuron(ind, PruneStep(0.9, 0.9, True, "erk"), gen, links=chain, fraction=0.5)
    dead = ~alive_units(dict(cut), chain[0])
    grown = grow_alive(Individual(cut, ind.traits), PruneStep(0.85, 0.85, True, "erk"), gen, links=chain)
    assert sum(grown.counts().values()) > sum(cut.counts().values())
    assert not grown[chain[0].producer][dead].any()


def test_neuron_needs_a_sequential_model(gen):
    _, ind, _ = setup(gen)
    with pytest.raises(EvoPaiError, match="sequential model"):
        neuron(ind, PruneStep(0.9, 0.9, True, "erk"), gen, links=None)
    with pytest.raises(EvoPaiError, match="residual"):
        links(build_model(ModelConfig(name="resnet20"), (3, 8, 8), 10))


def test_neuron_alone_in_dissipating_and_mixed_in_nsga2(tmp_path):
    for name in ("a", "n"):
        (tmp_path / name).mkdir()
    alone = run_experiment(build_config(tiny_raw("dissipating", mutation="neuron", dg={"epochs": 2},
                                                 mutation_params={"fraction": 0.5})), tmp_path / "a")
    assert abs(alone["sparsity"] - 0.8) < 1e-3 and sum(alone["dead_units"].values()) > 0
    raw = tiny_raw("nsga2", population=4, generations=2)
    raw["search"]["nsga2"] = {"density_range": [0.1, 0.5], "levels": [0.5, 0.8, 0.9], "init_epochs": 1, "init_steps": 2,
                              "prune_mutations": {"magnitude": 0.5, "neuron": 0.5},
                              "objectives": ["val_accuracy", "kept_weights", "compact_flops"]}
    summary = run_experiment(build_config(raw), tmp_path / "n")
    rows = list(csv.DictReader((tmp_path / "n" / "front.csv").open()))
    assert rows and all(float(r["compact_flops"]) > 0 for r in rows)
    assert summary["objectives"] == ["val_accuracy", "kept_weights", "compact_flops"]

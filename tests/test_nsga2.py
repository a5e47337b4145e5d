"""nsga2: one population over many densities, DEAP's selNSGA2, a non-dominated front, members trained."""
from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import pytest
import torch

from conftest import cli_inproc, crash_after, tiny_raw, whole_and_interrupted, without_timing
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.operators.variation import PruneStep, grow, regrow
from evo_pai.runs.checkpoint import FILENAME, load_checkpoint
from evo_pai.runs.members import pick_members
from evo_pai.runs.runner import preflight, run_experiment
from evo_pai.search.objectives import density_levels
from evo_pai.training.burst import steps_for

LEVELS = [0.5, 0.7, 0.8, 0.9]


def nsga2_raw(**nsga2) -> dict:
    raw = tiny_raw("nsga2", population=6, generations=3)
    raw["search"]["nsga2"] = {"density_range": [0.1, 0.5], "levels": LEVELS, "init_epochs": 1, "init_steps": 2,
                              **nsga2}
    return raw


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nsga2")
    run_experiment(build_config(nsga2_raw()), out)
    return out


def dominates(a: dict, b: dict) -> bool:
    """a dominates b: accuracy no worse, kept weights no more, one strictly better."""
    ge = a["val_accuracy"] >= b["val_accuracy"] and a["kept_weights"] <= b["kept_weights"]
    return ge and (a["val_accuracy"] > b["val_accuracy"] or a["kept_weights"] < b["kept_weights"])


def test_front_is_non_dominated_and_written(run_dir):
    rows = list(csv.DictReader((run_dir / "front.csv").open()))
    assert len(rows) >= 2
    vals = [{"val_accuracy": float(r["val_accuracy"]), "kept_weights": float(r["kept_weights"])} for r in rows]
    for i, a in enumerate(vals):
        for j, b in enumerate(vals):
            assert i == j or not dominates(a, b), (rows[i], rows[j])
    for r in rows:  # every member's mask is a file at the sparsity the row says
        mask = MaskSet.load(run_dir / r["mask"])
        assert abs(mask.sparsity() - float(r["sparsity"])) < 1e-9
        assert int(r["kept_weights"]) == sum(mask.counts().values()) and float(r["flops"]) > 0
    assert (run_dir / "front.png").stat().st_size > 10_000


def test_front_is_the_first_front_of_the_last_population(run_dir):
    """No logged member of the last generation dominates a front member."""
    last = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()][-1]
    rows = list(csv.DictReader((run_dir / "front.csv").open()))
    logged = {(round(float(r["sparsity"]), 6), float(r["val_accuracy"])) for r in rows}
    assert logged == {(p["sparsity"], p["val_accuracy"]) for p in last["front"]}


def test_every_trained_member_has_test_accuracy_in_summary(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    members = summary["members"]
    assert summary["method"] == "nsga2" and all(m["trained"] for m in members)  # final.members: all
    assert all(0.0 <= m["test_accuracy"] <= 1.0 for m in members)
    assert all((run_dir / m["model"]).exists() for m in members)
    head = members[summary["headline_member"]]
    assert summary["test_accuracy"] == head["test_accuracy"]
    assert MaskSet.load(run_dir / "mask.safetensors") == MaskSet.load(run_dir / head["mask"])
    # densities differ: one population covers several levels of the grid
    assert len({round(m["sparsity"], 3) for m in members}) >= 2


def test_final_members_picks_nearest_sparsity(tmp_path):
    raw = nsga2_raw()
    raw["final"]["members"] = [0.78, 0.81]  # both nearest the front's 0.8 member: it alone is trained, once
    summary = run_experiment(build_config(raw), tmp_path)
    sp = [m["sparsity"] for m in summary["members"]]
    assert sp == sorted(sp) and len(sp) >= 2, sp
    want = {min(range(len(sp)), key=lambda i: abs(sp[i] - s)) for s in raw["final"]["members"]}
    assert len(want) == 1 and abs(sp[min(want)] - 0.8) < 0.01, sp
    assert [i for i, m in enumerate(summary["members"]) if m["trained"]] == sorted(want)
    assert all(m["test_accuracy"] is None for m in summary["members"] if not m["trained"])
    assert all(0 <= m["test_accuracy"] <= 1 for m in summary["members"] if m["trained"])
    front = [Individual(MaskSet.load(tmp_path / m["mask"])) for m in summary["members"]]
    assert pick_members(front, "all") == list(range(len(front)))
    assert pick_members(front, [0.0]) == [0]
    assert pick_members(front, [0.999]) == [len(front) - 1]


def test_pareto_individuals_pickle_with_their_objectives(gen):
    ind = Individual(MaskSet.random({"w": (8, 8)}, 0.5, gen, "uniform"), objectives=3)
    ind.fitness.values = (0.9, 32.0, 1e-4)
    back = pickle.loads(pickle.dumps(ind))
    assert back.fitness.values == (0.9, 32.0, 1e-4) and back.fitness.weights == (1.0, -1.0, -1.0)
    assert back.clone().objectives == 3


def test_grow_moves_density_up_and_regrow_keeps_it(gen):
    shapes = {"a": (20, 30), "out": (5, 20)}
    mask = MaskSet.random(shapes, 0.9, gen, "erk", "out")
    traits = {"weight": {k: torch.randn(s, generator=gen) for k, s in shapes.items()},
              "grad_accum": {k: torch.rand(s, generator=gen) for k, s in shapes.items()}}
    ind = Individual(mask, traits)
    grown = grow(ind, PruneStep(0.7, 0.7, True, "erk"), gen)
    assert abs(grown.sparsity() - 0.7) <= 1 / 700  # to one weight of the 700
    assert all(bool((grown[k] | ~mask[k]).all()) for k in mask)  # nothing kept was pruned
    swapped = regrow(ind, PruneStep(0.9, 0.9, True, "erk"), gen, fraction=0.2)
    assert swapped.counts() == mask.counts() and swapped != mask


def test_density_levels_from_range_and_count():
    cfg = build_config({"search": {"nsga2": {"density_range": [0.01, 0.1], "levels": 3}}})
    assert density_levels(cfg) == pytest.approx([0.9, 1 - 0.1 * 0.1**0.5, 0.99])


@pytest.mark.parametrize("change, message", [
    ({"objectives": ["val_accuracy", "speed"]}, "not a cost"),
    ({"objectives": ["kept_weights", "val_accuracy"]}, "first objective must be a fitness"),
    ({"levels": [0.5, 0.99]}, "outside density_range"),
    ({"prune_mutations": {"no_such_mutation": 1.0}}, "unknown mutation"),
])
def test_bad_nsga2_settings_refused_before_any_folder(change, message):
    with pytest.raises(EvoPaiError, match=message):
        preflight(build_config(nsga2_raw(**change)))


def test_final_members_refused_for_single_winner_methods(capsys, tmp_path):
    raw = tiny_raw("kstarts")
    raw["final"]["members"] = [0.9]
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(raw))
    code, _, err = cli_inproc(capsys, "run", str(path), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and "final.members" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("inherit", ["rewind", "parent"])
def test_nsga2_resumes_to_the_uninterrupted_summary(tmp_path, monkeypatch, inherit):
    raw = nsga2_raw()
    raw["search"]["inherit"] = inherit
    cfg = build_config(raw)
    whole, ckpt = whole_and_interrupted(cfg, tmp_path, monkeypatch, 2)
    assert ckpt.generation == 1 and ckpt.state["population"][0].objectives == 2
    resumed = run_experiment(cfg, tmp_path / "run", resume=ckpt)
    assert without_timing(whole) == without_timing(resumed)


def test_nsga2_children_continue_their_parents_training(tmp_path, monkeypatch):
    """inherit: parent: a child's burst starts where its parent's ended, so lineages accumulate steps."""
    raw = nsga2_raw()
    raw["search"].update(inherit="parent", generations=3)
    cfg = build_config(raw)
    with monkeypatch.context() as m:
        crash_after(m, 3)  # stop after the last generation's checkpoint: the population with its carries
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, tmp_path)
    ckpt = load_checkpoint(tmp_path / FILENAME, cfg)
    burst = steps_for(1.0, 360, 32)  # tiny_raw: 400 examples less 10 % validation, batch 32
    chunk = steps_for(0.5, 360, 32)  # generation 0 trains on from the gradual trajectory (2 chunks of ½ epoch)
    trunk = 2 * chunk  # the trajectory passes a level after chunk 1 or 2: a member starts from 1 or 2 chunks
    steps = [ind.carry.steps for ind in ckpt.state["population"]]
    assert all(any(s - c >= burst and (s - c) % burst == 0 for c in (chunk, trunk)) for s in steps), steps
    assert max(steps) >= trunk + 2 * burst, steps  # a child trained on from its parent (rewind: no carry at all)

"""End-to-end runs through the CLI and the Python API on digits and a small synthetic set."""
import json
import pickle

import pytest
import torch
import yaml

import evo_pai
from evo_pai.core.config import build_config
from evo_pai.data.datasets import load_data
from evo_pai.evaluation import make_evaluator
from evo_pai.search.experiment import Experiment
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.core.registry import METHOD

from conftest import ROOT, run_cli, tiny_raw

TIMING = {"wall_seconds", "search_seconds", "final_seconds"}
METHODS = ["kstarts", "dissipating", "combined", "random", "dense"]


@pytest.mark.parametrize("method", METHODS)
def test_cli_run_on_synthetic_writes_a_complete_run_folder(tmp_path, method):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(method)))
    out = tmp_path / "run"
    r = run_cli("run", str(cfg), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    for name in ["config.yaml", "log.jsonl", "mask.safetensors", "model.safetensors", "summary.json"]:
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    for key in ["method", "target_sparsity", "sparsity", "test_accuracy", "search_model_epochs", "final_epochs",
                "wall_seconds", "seed", "backend"]:
        assert key in s
    assert s["method"] == method
    expected = 0.0 if method == "dense" else 0.8
    assert s["sparsity"] == pytest.approx(expected, abs=1 / 1088)  # to one weight of the mlp's 1,088
    assert s["sparsity"] == pytest.approx(MaskSet.load(out / "mask.safetensors").sparsity())
    if method not in ("random", "dense"):
        assert (out / "fitness.png").stat().st_size > 1000 and s["search_model_epochs"] > 0
    assert "test accuracy" in r.stdout


def test_quickstart_on_digits(tmp_path):
    r = run_cli("run", str(ROOT / "configs/quickstart.yaml"), "--out", str(tmp_path / "q"), "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "q/summary.json").read_text())
    assert s["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert s["test_accuracy"] > 0.8  # digits at 90 % sparsity: far above the 10 % of chance
    assert s["dead_units"]["layers.4.weight"] == 0
    # generations visibly improve: sparsity rises every generation; the best fitness ends 0.03 above its
    # start and falls at most once on the way
    log = [json.loads(line) for line in (tmp_path / "q/log.jsonl").read_text().splitlines()]
    assert all(a["sparsity"] < b["sparsity"] for a, b in zip(log, log[1:]))
    assert log[-1]["best_fitness"] > log[0]["best_fitness"] + 0.03
    assert sum(b["best_fitness"] >= a["best_fitness"] for a, b in zip(log, log[1:])) >= len(log) - 2


def test_one_seed_gives_an_identical_summary_twice(tmp_path):
    raw = tiny_raw("combined")
    a = evo_pai.run(raw, out=tmp_path / "a")
    b = evo_pai.run(raw, out=tmp_path / "b")
    assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert MaskSet.load(tmp_path / "a/mask.safetensors") == MaskSet.load(tmp_path / "b/mask.safetensors")
    c = evo_pai.run(raw, overrides=["seed=1"])
    assert c["test_accuracy"] != a["test_accuracy"] or c["layer_sparsity"] != a["layer_sparsity"]


def test_kstarts_picks_the_argmax():
    cfg = build_config(tiny_raw("kstarts", population=5))
    data = load_data(cfg.data)
    with make_evaluator(cfg, data) as ev:
        exp = Experiment(cfg, ev, data)
        outcome = METHOD.get("kstarts")(exp)
    fits = [c["fitness"] for c in outcome.extra["candidates"]]
    assert len(set(fits)) == 5
    assert outcome.extra["winner_index"] == max(range(5), key=fits.__getitem__)
    assert outcome.mask.hash()[:12] == outcome.extra["candidates"][outcome.extra["winner_index"]]["key"]


def test_identical_masks_are_not_trained_twice():
    cfg = build_config(tiny_raw("kstarts"))
    data = load_data(cfg.data)
    with make_evaluator(cfg, data) as ev:
        exp = Experiment(cfg, ev, data)
        m = exp.random_mask(0.8, 3)
        pop = [Individual(m), Individual(m.copy()), Individual(exp.random_mask(0.8, 4))]
        exp.evaluate(pop)
        assert ev.tasks_run == 2 and ev.cache_hits == 1
        exp.evaluate([Individual(m)])
        assert ev.tasks_run == 2 and ev.cache_hits == 2
    assert pop[0].fitness.values == pop[1].fitness.values


def test_individuals_pickle_round_trip():
    cfg = build_config(tiny_raw("kstarts"))
    data = load_data(cfg.data)
    with make_evaluator(cfg, data) as ev:
        exp = Experiment(cfg, ev, data)
        ind = Individual(exp.random_mask(0.8, 0))
        exp.evaluate([ind])
    back = pickle.loads(pickle.dumps(ind))
    assert back.key == ind.key and back.fitness.values == ind.fitness.values and back.fitness.valid
    assert all(torch.equal(back.traits["rel_change"][k], ind.traits["rel_change"][k]) for k in ind.mask)


def test_continue_mode_replays_the_winners_burst(tmp_path):
    s = evo_pai.run(tiny_raw("kstarts"), overrides=["final.init=continue"])
    assert s["final_init"] == "continue" and s["test_accuracy"] > 0.3
    assert s["final_replay_epochs"] == pytest.approx(1.0)  # the winner's one-epoch burst, run again
    rewound = evo_pai.run(tiny_raw("kstarts"))  # the same winner trained from θ0 instead
    assert rewound["final_replay_epochs"] == 0.0 and rewound["test_loss"] != s["test_loss"]


@pytest.mark.parametrize("script", ["custom_fitness.py", "custom_mutation.py"])
def test_examples_run(script, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    assert json.loads((tmp_path / "out/summary.json").read_text())["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_plugin_module_listed_in_yaml(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    raw = tiny_raw("kstarts", fitness="kept_gradient_share")
    raw["plugins"] = ["custom_fitness"]
    cfg.write_text(yaml.safe_dump(raw))
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples")}
    r = subprocess.run([sys.executable, "-m", "evo_pai", "run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr

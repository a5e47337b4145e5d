"""Bad data refused before a run (data/checks.py): non-finite inputs, labels that are not class indices and
empty splits — from evo_pai.search() and from a registered dataset (tensors or streamed) — are one line
naming the split, the first bad index and the fix, and no run folder; a run whose training loss turns
non-finite says so in summary.json, and the search gives a diverged individual the worst fitness.
Real components: the plugin datasets in tests/bad_data_plugin.py, real runs, no mocks."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
import yaml
from deap import tools
from torch import nn
from torch.utils.data import Dataset

import evo_pai
from conftest import Pairs, cli_inproc, tiny_raw
from evo_pai import EvoPaiError
from evo_pai.core.config import build_config
from evo_pai.core.individual import Individual
from evo_pai.data.checks import INPUT_FIX, check_data
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import make_evaluator
from evo_pai.operators.fitness import WORST
from evo_pai.runs.components import load_components
from evo_pai.runs.runner import run_experiment
from evo_pai.search.experiment import Experiment
from evo_pai.training.burst import diverged_epochs

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["search.population=2", "search.generations=1", "search.burst_epochs=0.5", "final.epochs=1",
        "train.batch_size=32", "train.threads=1"]
load_components(["bad_data_plugin"])


def clusters(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return torch.randn(3, 8, generator=torch.Generator().manual_seed(9))[y] * 2 + torch.randn(n, 8, generator=g), y


SPLITS = {"train": clusters(120, 1), "val": clusters(40, 2), "test": clusters(40, 3)}


Items = Pairs  # a plugin's streamed set: items one by one, no `labels()`

def search_refused(tmp_path, **splits) -> str:
    torch.manual_seed(0)
    with pytest.raises(EvoPaiError) as info:
        evo_pai.search(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), **{**SPLITS, **splits},
                       overrides=TINY, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("split, value", [("train", math.nan), ("val", math.inf), ("test", -math.inf)])
def test_a_nonfinite_input_given_to_search_is_one_line_and_no_folder(tmp_path, split, value):
    x, y = SPLITS[split][0].clone(), SPLITS[split][1]
    x[37, 5] = value
    assert search_refused(tmp_path, **{split: (x, y)}) == f"{split}: inputs hold {value} at index 37; {INPUT_FIX}"
    assert search_refused(tmp_path, **{split: Items(x, y)}).startswith(f"{split}: inputs hold {value} at index 37;")


@pytest.mark.parametrize("labels, expected", [
    (lambda y: y.float() + 0.5, "labels must be one integer class index"),
    (lambda y: torch.where(torch.arange(len(y)) == 11, torch.tensor(3), y), "label at index 11 is 3, outside the "
                                                                            "classes 0..2; the model outputs 3"),
    (lambda y: torch.where(torch.arange(len(y)) == 4, torch.tensor(-1), y), "label at index 4 is -1, outside"),
])
def test_bad_labels_and_empty_splits_given_to_search(tmp_path, labels, expected):
    x, y = SPLITS["val"]
    assert search_refused(tmp_path, val=(x, labels(y))).startswith(f"val: {expected}")
    assert search_refused(tmp_path, test=(x[:0], y[:0])).startswith("test: empty (0 examples)")


def run_cli_refused(capsys, tmp_path, data: dict) -> str:
    raw = {**tiny_raw(), "plugins": ["bad_data_plugin"], "data": data}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli_inproc(capsys, "run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(EvoPaiError) as info:  # from Python: the same line, and no folder either
        evo_pai.run(raw, out=tmp_path / "run")
    assert err == f"error: {info.value}\n" and not (tmp_path / "run").exists()
    return str(info.value)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_plugin_dataset_with_nan_is_refused_by_the_cli_and_from_python(capsys, tmp_path, split):
    line = run_cli_refused(capsys, tmp_path, {"name": "flawed_synthetic",
                                              "params": {"split": split, "index": 7, "value": "nan"}})
    assert line == f"data.name: dataset 'flawed_synthetic', {split} split: inputs hold nan at index 7; {INPUT_FIX}"


def test_a_study_with_a_flawed_dataset_is_refused_before_its_folder(capsys, tmp_path):
    base = {"plugins": ["bad_data_plugin"], "final": {"epochs": 1},
            "data": {"name": "flawed_synthetic", "params": {"split": "test", "index": 2, "value": "-inf"}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "base": base, "sparsities": [0.9], "seeds": [0],
                                                     "methods": ["random"]}))
    code, _, err = cli_inproc(capsys, "study", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "o").exists(), err
    assert err.startswith("error: study 's', cell random-s0.9-seed0-") and err.rstrip().endswith(
        f"data.name: dataset 'flawed_synthetic', test split: inputs hold -inf at index 2; {INPUT_FIX}")


@pytest.mark.parametrize("params, expected", [
    ({"split": "val", "index": 3, "label": 4}, "val split: label at index 3 is 4, outside the classes 0..2; relabel"),
    ({"split": "train", "index": 0, "float_labels": True}, "train split: label at index 0 is of dtype torch.float32"),
    ({"split": "test", "index": 0, "empty": True}, "test split: empty (0 examples)"),
])
def test_a_plugin_dataset_with_bad_labels_or_an_empty_split(capsys, tmp_path, params, expected):
    line = run_cli_refused(capsys, tmp_path, {"name": "flawed_synthetic", "params": {**params}})
    assert line.startswith(f"data.name: dataset 'flawed_synthetic', {expected}")


def test_a_streamed_plugin_dataset_is_read_once_in_chunks_and_names_the_item(capsys, tmp_path):
    line = run_cli_refused(capsys, tmp_path, {"name": "flawed_stream", "params": {"index": 123, "value": "inf"},
                                              "workers": 1})
    assert re.fullmatch(r"data\.name: dataset 'flawed_stream', (train|val) split: inputs hold inf at index \d+ "
                        rf"\(item 123 of the dataset it is drawn from\); {re.escape(INPUT_FIX)}", line), line
    clean = load_data(build_config({"plugins": ["bad_data_plugin"], "data": {"name": "flawed_stream"}}).data)
    check_data("flawed_stream", clean)  # nothing wrong: nothing said


def test_uint8_streams_with_labels_read_no_items(tmp_path):
    """The built-in streamed sets (uint8 items, `labels()`): integer inputs cannot be non-finite, so the
    check reads their labels only — one probe item per split, not a pass over the files."""
    from evo_pai.data.datasets import assemble_streamed
    from evo_pai.core.config import DataConfig

    reads = []

    class Images(Items):
        def labels(self):
            return self.y.numpy()

        def __getitem__(self, i):
            reads.append(i)
            return super().__getitem__(i)

    x = torch.randint(0, 255, (64, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(64) % 4
    data = assemble_streamed("u8", DataConfig(), Images(x, y), Images(x[:16], y[:16]), 4, (1, 4, 4), standardize=False)
    check_data("u8", data)
    assert len(reads) == 3  # item 0 of each split
    bad = y.clone()
    bad[50] = 9
    data = assemble_streamed("u8", DataConfig(), Images(x, bad), Images(x[:16], y[:16]), 4, (1, 4, 4), standardize=False)
    with pytest.raises(EvoPaiError, match=r"label at index \d+ \(item 50 of the dataset it is drawn from\) is 9"):
        check_data("u8", data)


def test_a_diverging_run_is_flagged_in_the_summary_not_scored(tmp_path):
    raw = tiny_raw()
    raw["train"] = {**raw["train"], "optimizer": "sgd", "lr": 1e12}
    (tmp_path / "run").mkdir()
    summary = run_experiment(build_config(raw), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    for s in (summary, on_disk):
        assert s["diverged"] is True and s["diverged_at"] == {"stage": "final training", "epoch": 1}
        assert s["test_accuracy"] is None and s["val_accuracy"] is None
        assert s["search_diverged"] == {"bursts": 12, "first_generation": 0}
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["diverged"] == r["worst_count"] == 4 and r["best_fitness"] is None for r in log)
    from evo_pai.runs.plots import summary_rows
    from evo_pai.runs.search_result import SearchResult

    rows = dict(summary_rows(on_disk))
    assert rows["test accuracy"] == "n/a" and rows["diverged"].startswith("training went non-finite in final training, epoch 1")

    assert "diverged in final training, epoch 1" in repr(SearchResult(tmp_path / "run", on_disk))
    fine = run_experiment(build_config(tiny_raw()), None)
    assert fine["diverged"] is False and "search_diverged" not in fine and fine["test_accuracy"] > 0.3  # 4 classes
    assert diverged_epochs([torch.tensor([1.0, 2.0]), torch.tensor([3.0, math.inf]),
                            torch.tensor([math.nan, math.inf])]) == [3, 2]
    assert diverged_epochs([torch.tensor(1.0), torch.tensor(2.0)]) == [2]  # finite loss, non-finite weights: last


@pytest.mark.parametrize("backend", ["local", "vectorized"])
def test_the_search_ranks_a_diverged_individual_worst(backend):
    """Two members, one with a learning rate that blows up (its lr_scale gene): the diverged one gets WORST
    fitness with the epoch it diverged in, selection never prefers it, and the generation log counts it."""
    raw = tiny_raw()
    raw["train"] = {**raw["train"], "optimizer": "sgd"}
    raw["evaluation"] = {"backend": backend}
    cfg = build_config(raw)
    data = load_data(cfg.data)
    records = []
    with make_evaluator(cfg, data) as ev:
        exp = Experiment(cfg, ev, data, records.append)
        population = [Individual(exp.random_mask(0.5, i)) for i in range(2)]
        population[0].hparams, population[1].hparams = {"lr_scale": 1e12}, {"lr_scale": 1.0}
        exp.evaluate(population)
    wild, tame = population
    assert wild.fitness.values[0] == WORST and wild.metrics["finite"] == 0.0 and wild.metrics["diverged_epoch"] == 1
    assert math.isfinite(tame.fitness.values[0]) and tame.fitness.values[0] > WORST
    assert tools.selBest(population, 1)[0] is tame and tools.selTournament(population, 5, tournsize=2).count(wild) < 5
    exp.log_generation(0, population)
    assert records[-1]["diverged"] == 1 and records[-1]["worst_count"] == 1

"""Progress: every method advances the search and logs generations; final training reports epochs
without changing a single number; a non-terminal stderr gets one plain line per generation/epoch."""
from __future__ import annotations

import pytest
import torch

from conftest import run_cli, tiny_raw
from evo_pai.core.config import build_config
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import WorkerContext
from evo_pai.core.masks import MaskSet
from evo_pai.runs.progress import RunProgress, describe
from evo_pai.core.registry import METHOD
from evo_pai.runs.components import load_components
from evo_pai.runs.runner import run_experiment
from evo_pai.training.batched import train_batched
from evo_pai.training.burst import train_masked
from evo_pai.training.tasks import Evaluator
from evo_pai.training.stacked import StackedForward

TIMING = {"search_seconds", "final_seconds", "wall_seconds"}


class Recorder(RunProgress):
    def __init__(self):
        self.phases, self.advanced, self.records, self.epochs = [], {}, [], []

    def phase(self, label, total, generations=None):
        self.phases.append((label, total, generations))
        self.advanced[label] = 0

    def advance(self, n=1):
        self.advanced[self.phases[-1][0]] += n

    def generation(self, record):
        self.records.append(record)

    def epoch(self, done, total):
        self.epochs.append((done, total))


def context(epochs_cfg=None):
    cfg = build_config(tiny_raw())
    data = load_data(cfg.data)
    ctx = WorkerContext(cfg, "cpu", data)
    mask = MaskSet.random({k: tuple(v.shape) for k, v in ctx.model.named_parameters() if k.endswith("weight")},
                          0.6, torch.Generator().manual_seed(3), "uniform")
    return cfg, ctx, mask


def same(a, b) -> None:
    assert a.metrics == b.metrics
    for t in a.traits:
        assert all(torch.equal(a.traits[t][k], b.traits[t][k]) for k in a.traits[t])
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


@pytest.mark.parametrize("epochs", [3, 2.5])
def test_epoch_callback_changes_no_bit_of_sequential_training(epochs):
    cfg, ctx, mask = context()
    args = (ctx.model, ctx.theta0, ctx.theta0, mask, ctx.data, cfg.train, epochs, 11)
    plain = train_masked(*args, keep_state=True, test=True)
    heard = []
    told = train_masked(*args, keep_state=True, test=True, on_epoch=lambda d, t: heard.append((d, t)))
    same(plain, told)
    assert heard == [(1, 3), (2, 3), (3, 3)]


def test_epoch_callback_changes_no_bit_of_batched_training():
    cfg, ctx, mask = context()
    fwd = StackedForward(ctx.model, cfg.model.name, ctx.data.input_shape, cfg.train.batch_size)
    args = (ctx.model, fwd, [ctx.theta0, ctx.theta0], ctx.theta0, [mask, mask], ctx.data, cfg.train, 2.0, [1, 2],
            [True, True], [True, True])
    heard = []
    for a, b in zip(train_batched(*args), train_batched(*args, on_epoch=lambda d, t: heard.append((d, t)))):
        same(a, b)
    assert heard == [(1, 2), (2, 2)]


load_components([])
EXTRA = {"imp": {"params": {"round_epochs": 1}}, "nsga2": {"nsga2": {"init_steps": 2}}}


@pytest.mark.parametrize("method", METHOD.names())
def test_every_method_reports_progress_and_numbers_do_not_change(tmp_path, monkeypatch, method):
    """Every registered method declares a plan, and the plan is what the run then does: the tasks handed
    to the evaluator during the search (counted here), the generations in log.jsonl, the final epochs."""
    cfg = build_config(tiny_raw(method, **EXTRA.get(method, {})))
    rec = Recorder()
    submitted = {"search": 0}
    plain = Evaluator.evaluate

    def counting(self, tasks, progress=None):
        if rec.phases and rec.phases[-1][0] == "search":
            submitted["search"] += len(tasks)
        return plain(self, tasks, progress)

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(Evaluator, "evaluate", counting)
        told = run_experiment(cfg, tmp_path / "a", rec)
    quiet = run_experiment(cfg, tmp_path / "b")
    assert {k: v for k, v in told.items() if k not in TIMING} == {k: v for k, v in quiet.items() if k not in TIMING}
    assert MaskSet.load(tmp_path / "a" / "mask.safetensors") == MaskSet.load(tmp_path / "b" / "mask.safetensors")
    tasks, generations = METHOD.get(method).progress_plan(cfg)
    assert tasks is not None, f"{method} declares no progress plan"
    assert rec.phases[0] == ("search", tasks, generations) and rec.phases[1][0] == "final training"
    assert rec.advanced["search"] == tasks == submitted["search"]
    logged = (tmp_path / "a" / "log.jsonl").read_text().splitlines() if (tmp_path / "a" / "log.jsonl").exists() else []
    assert len(rec.records) == len(logged) == (generations or 0)
    if METHOD.get(method).members:  # nsga2 trains its picked members, one unit each
        assert rec.phases[1][1] == len(told["members"])
    else:
        assert rec.epochs == [(e, cfg.final.epochs) for e in range(1, cfg.final.epochs + 1)]


def test_describe_shows_generation_best_fitness_and_sparsity():
    text = describe({"generation": 1, "best_fitness": 0.83124, "sparsity": 0.5, "pruned_to": 0.75,
                     "best_val_accuracy": 0.9}, 4)
    assert text == "gen 2/4 · best 0.8312 · sparsity 75.0 % · val acc 90.0 %"


def test_non_terminal_gets_a_line_per_generation_and_epoch(tmp_path):
    import yaml

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw("dissipating")))
    proc = run_cli("run", str(cfg), "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    gens = [ln for ln in lines if ln.startswith("search: gen ")]
    epochs = [ln for ln in lines if ln.startswith("final training: epoch ")]
    assert [g.split()[2] for g in gens] == ["1/4", "2/4", "3/4", "4/4"], proc.stderr
    assert "sparsity 80.0 %" in gens[-1], gens[-1]  # dissipating: the pruned-to sparsity
    assert [e.split()[3] for e in epochs] == ["1/2", "2/2"], proc.stderr
    assert "\x1b[" not in proc.stderr and "━" not in proc.stderr  # no bar, no escape codes

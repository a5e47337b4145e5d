"""fitness.png and layers.png draw what the run did; the summary shows the whole run-folder path."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, tiny_raw
from evo_pai.core.config import build_config
from evo_pai.runs.plots import plot_fitness, plot_layers
from evo_pai.runs.runner import run_experiment


def run(tmp_path, method: str, **search):
    out = tmp_path / method
    out.mkdir()
    summary = run_experiment(build_config(tiny_raw(method, **search)), out)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert (out / "fitness.png").stat().st_size > 10_000 and (out / "layers.png").stat().st_size > 10_000
    drawn = plot_fitness(records, tmp_path / "again.png", "t", summary["target_sparsity"], summary.get("candidates"),
                         summary.get("winner_index"))
    return summary, records, drawn


def test_kstarts_plots_its_candidates_and_marks_the_winner(tmp_path):
    summary, _, drawn = run(tmp_path, "kstarts")
    fits = [c["fitness"] for c in summary["candidates"]]
    assert drawn["fitness after the burst"] == pytest.approx(fits) and len(fits) == 4
    w = summary["winner_index"]
    assert drawn[f"winner (candidate {w})"] == pytest.approx([max(fits)])
    assert drawn["target sparsity 80%"] == [0.8, 0.8]
    assert drawn["val accuracy after the burst"] == pytest.approx([c["val_accuracy"] for c in summary["candidates"]])


def test_dissipating_sparsity_ends_where_the_run_did_and_one_network_is_one_line(tmp_path):
    summary, records, drawn = run(tmp_path, "dissipating")
    assert drawn["sparsity after pruning"][-1] == pytest.approx(summary["sparsity"], abs=1e-3)
    assert drawn["sparsity after pruning"] == pytest.approx([r["pruned_to"] for r in records])
    assert "fitness (one network)" in drawn and not any(k.startswith("mean fitness") for k in drawn)
    assert drawn["val accuracy (best)"] == pytest.approx([r["best_val_accuracy"] for r in records])


def test_population_plots_best_and_mean_apart_with_the_target(tmp_path):
    _, records, drawn = run(tmp_path, "combined")
    assert drawn["best fitness"] == pytest.approx([r["best_fitness"] for r in records])
    assert drawn["mean fitness (± std)"] == pytest.approx([r["mean_fitness"] for r in records])
    assert drawn["best fitness"] != drawn["mean fitness (± std)"]
    assert "target sparsity 80%" in drawn and "mean sparsity" in drawn


def test_layers_plot_writes_every_layer(tmp_path):
    counts, sizes = {"a.weight": 10, "b.weight": 50, "c.weight": 5}, {"a.weight": 100, "b.weight": 60, "c.weight": 5}
    drawn = plot_layers(counts, sizes, tmp_path / "layers.png", "t")
    assert list(drawn) == ["a.weight", "b.weight", "c.weight"]  # every layer, input (top) to output
    assert [round(length, 4) for length, _ in drawn.values()] == [0.1, 0.8333, 1.0]
    assert [text for _, text in drawn.values()] == ["10.0%  (10 of 100)", "83.3%  (50 of 60)", "100.0%  (5 of 5)"]
    assert (tmp_path / "layers.png").is_file()


def test_summary_prints_the_whole_run_folder_and_explains_dead_units(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw("random")))
    out = tmp_path / "a-rather-long-folder-name-that-a-narrow-table-would-cut" / "run"
    proc = subprocess.run([sys.executable, "-m", "evo_pai", "run", str(cfg), "--out", str(out), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "60"})
    assert proc.returncode == 0, proc.stderr
    assert f"run folder: {out.resolve()}" in proc.stdout.splitlines(), proc.stdout
    assert "…" not in proc.stdout.split("run folder:")[1]
    assert "incoming weight" in proc.stdout.replace("\n", " ").replace("│", " ")

"""`evo-pai study` / `evo-pai report` on configs/study_smoke.yaml: grid, resume, report, errors."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml

from evo_pai.core.errors import EvoPaiError
from evo_pai.study.predictiveness import spearman_table
from evo_pai.study.grid import grid, load_study

from conftest import ROOT, run_cli

SMOKE = ROOT / "configs/study_smoke.yaml"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "smoke"
    r = run_cli("study", str(SMOKE), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out, r


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_smoke_study_runs_every_cell_and_writes_the_report(smoke):
    out, r = smoke
    spec = load_study(SMOKE)
    cells = grid(spec)
    got = rows(out / "results.csv")
    assert len(got) == len(cells)
    labels = {row["label"] for row in got}
    assert {"dense", "random", "magnitude", "snip", "grasp", "synflow", "gmp", "imp", "kstarts", "kstarts_sh",
            "dissipating", "combined"} <= labels
    # dense ignores the sparsity: one cell per seed
    assert [row["target_sparsity"] for row in got if row["label"] == "dense"] == ["0.0"]
    report = (out / "report.md").read_text()
    assert "| method | 80 % | 95 % |" in report and "**" in report  # best per column marked
    assert "## Targets" in report and "Spearman" in report
    for png in ["accuracy_vs_sparsity.png", "accuracy_vs_compute.png"]:
        assert (out / png).stat().st_size > 5000
    pred = rows(out / "predictiveness.csv")
    assert len(pred) == 4 and "fitness_mixed" in pred[0] and "final_test_accuracy" in pred[0]
    assert "25 cells" in r.stdout


def test_study_resumes_without_recomputing_finished_cells(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = {row["cell"]: row["test_accuracy"] for row in rows(copy / "results.csv")}
    victim = sorted((copy / "cells").iterdir())[3]
    (victim / "summary.json").unlink()  # as if killed while this cell ran
    finished = {c.name: (c / "summary.json").read_bytes() for c in (copy / "cells").iterdir() if c != victim}
    for path in (copy / "predictiveness").glob("*.json"):
        path.unlink()
    r = run_cli("study", str(SMOKE), "--out", str(copy), "--jobs", "2")  # spawned workers, too
    assert r.returncode == 0, r.stderr
    assert "24 already done, 1 to run" in r.stderr and "FAILED" not in r.stderr
    assert len(rows(copy / "predictiveness.csv")) == 4
    after = {row["cell"]: row["test_accuracy"] for row in rows(copy / "results.csv")}
    assert after == before  # the rerun cell is deterministic
    # the others were not touched: a rerun would rewrite their summaries (timings differ)
    assert {c: (copy / "cells" / c / "summary.json").read_bytes() for c in finished} == finished
    assert (victim / "summary.json").is_file()


def test_a_slice_runs_only_its_cells_and_the_full_grid_adds_the_rest(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    gone = [c for c in sorted((copy / "cells").iterdir()) if c.name.startswith(("kstarts-", "random-", "dense-"))]
    for cell in gone:
        (cell / "summary.json").unlink()
    sparsity = load_study(SMOKE).sparsities[0]
    r = run_cli("study", str(SMOKE), "--out", str(copy), "--rows", "kstarts", "--rows", "dense", "--sparsity", str(sparsity))
    assert r.returncode == 0, r.stderr
    ran = {c.name.split("-s")[0] for c in gone if (c / "summary.json").exists()}
    assert ran == {"kstarts", "dense"}  # random left out; kstarts only at the chosen sparsity
    assert [c for c in gone if c.name.startswith("kstarts-") and (c / "summary.json").exists()] == \
        [c for c in gone if c.name.startswith(f"kstarts-s{sparsity:g}-")]
    assert "left out by the slice" in r.stderr
    r = run_cli("study", str(SMOKE), "--out", str(copy), "--rows", "nope*")
    assert r.returncode == 2 and "--rows: 'nope*' matches no row" in r.stderr
    r = run_cli("study", str(SMOKE), "--out", str(copy))
    assert r.returncode == 0 and all((c / "summary.json").exists() for c in gone)


def test_report_regenerates_from_the_csv(smoke, tmp_path):
    """The folder's CSVs and the study.yaml kept beside them regenerate the study's own report, byte for byte."""
    out, _ = smoke
    copy = tmp_path / out.name  # the report's title names the folder
    copy.mkdir()
    for name in ("results.csv", "predictiveness.csv", "study.yaml"):
        shutil.copy(out / name, copy / name)
    r = run_cli("report", str(copy))
    assert r.returncode == 0, r.stderr
    original = (out / "report.md").read_text()
    assert (copy / "report.md").read_text() == original
    assert "kstarts − random" in original and "- T1 at 95 %" in original  # the smoke file's compare: and targets:
    assert (copy / "accuracy_vs_sparsity.png").is_file()


@pytest.mark.parametrize("study", ["study_fmnist_full", "study_fmnist_resnet", "study_fmnist_conv_augment", "study_population",
                                   "study_structured"])
def test_report_regenerates_the_tables_docs_quote(tmp_path, study):
    """docs/results.md quotes `evo-pai report`'s tables (accuracy, compute, the study file's comparisons)
    for the CSV shipped in docs/data: regenerated from it, every table line stands in the docs verbatim."""
    from evo_pai.study.tables import write_report

    shutil.copy(ROOT / "docs/data" / f"{study}_results.csv", tmp_path / "results.csv")
    report = write_report(tmp_path, load_study(ROOT / "configs" / f"{study}.yaml")).read_text()
    tables = [line for line in report.splitlines() if line.startswith("|")]
    assert sum(line.startswith("| comparison (a − b)") for line in tables) == 1
    docs = set((ROOT / "docs/results.md").read_text().splitlines())
    assert [line for line in tables if line not in docs] == []


def test_bad_study_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sparsities": [0.9], "seeds": [0], "methods": ["random"], "colour": 1}))
    r = run_cli("study", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "colour" in r.stderr and "Traceback" not in r.stderr
    bad.write_text(yaml.safe_dump({"sparsities": [0.9], "seeds": [0], "methods": ["nope"]}))
    r = run_cli("study", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown method 'nope'" in r.stderr
    r = run_cli("report", str(tmp_path / "missing"))
    assert r.returncode == 2 and "results.csv" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_duplicate_row_labels_are_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"sparsities": [0.9], "seeds": [0], "methods": ["random", {"name": "random"}]}))
    with pytest.raises(EvoPaiError, match="appears twice"):
        grid(load_study(path))


def test_spearman_table_ranks_fitness_against_final_accuracy():
    table_rows = []
    for seed in (0, 1):
        for i in range(5):
            table_rows.append({"sparsity": 0.9, "seed": seed, "candidate": i, "final_test_accuracy": 0.5 + 0.1 * i,
                               "fitness_good": i, "fitness_bad": -i, "fitness_flat": 1.0})
    t = {r["fitness"]: r for r in spearman_table(table_rows, ["good", "bad", "flat"])}
    assert t["good"]["rho_mean"] == pytest.approx(1.0) and t["good"]["pick_rank"] == 1
    assert t["bad"]["rho_mean"] == pytest.approx(-1.0) and t["bad"]["pick_gain"] < 0
    assert t["flat"]["cells"] == 0 and t["flat"]["rho_mean"] is None


def test_population_study_runs_smoke_sized_at_equal_compute(tmp_path):
    """configs/study_population.yaml with its rows, pairs and gene spaces kept, shrunk to digits and
    3 generations: every row runs, every row spends the same search model-epochs (gmp's one lineage
    included), and the report has the P1 / P2 comparisons."""
    spec = yaml.safe_load((ROOT / "configs/study_population.yaml").read_text())
    search = spec["base"]["search"]
    for row in spec["methods"]:  # the shipped file: gmp's lineage is as long as K lineages
        if isinstance(row, dict) and row.get("method") == "gmp":
            assert row["set"]["search.dg.epochs"] == search["population"] * search["generations"]
    spec.update(name="population_smoke", sparsities=[0.8], seeds=[0], jobs=1)
    spec["base"].update(data={"name": "digits"}, final={"epochs": 1, "init": "rewind"})
    search["generations"] = 3
    for row in spec["methods"]:
        if isinstance(row, dict):
            row["set"] = {k: v for k, v in row.get("set", {}).items() if not k.startswith("data.")}
            if "search.dg.epochs" in row["set"]:
                row["set"]["search.dg.epochs"] = search["population"] * 3
    path = tmp_path / "study_population_smoke.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = run_cli("study", str(path), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    got = rows(tmp_path / "out" / "results.csv")
    assert len(got) == len(grid(load_study(path))) == 16
    assert {float(row["search_model_epochs"]) for row in got} == {12.0}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "P1: exploit/explore beats independent lineages (LeNet-5): lenet5_pbt − lenet5_independent" in report
    assert "P2: pbt from lr x10 within 0.3 pt of pbt (LeNet-300-100): pbt_lr_x10 − pbt" in report


def test_a_dense_row_pairs_with_every_column():
    """A dense row is stored at sparsity 0 and shown in every column: a comparison with it pairs there too."""
    from evo_pai.study.tables import paired

    rows = [{"label": "dense", "target_sparsity": "0.0", "seed": "0", "test_accuracy": "0.80"},
            {"label": "dense_aug", "target_sparsity": "0.0", "seed": "0", "test_accuracy": "0.78"},
            {"label": "gmp", "target_sparsity": "0.95", "seed": "0", "test_accuracy": "0.75"}]
    assert paired(rows, "gmp", "dense", 0.95)[:3] == pytest.approx((-0.05, 0.0, 1))
    assert paired(rows, "dense_aug", "dense", 0.95)[:3] == pytest.approx((-0.02, 0.0, 1))


def test_structured_study_runs_smoke_sized(tmp_path):
    """configs/study_structured.yaml with its rows and pairs kept, shrunk to digits, width 4 and short
    schedules: every row runs with channel masks at its MACs budget, and the report has S1-S3."""
    spec = yaml.safe_load((ROOT / "configs/study_structured.yaml").read_text())
    assert spec["base"]["masks"]["granularity"] == "channel" and spec["sparsities"] == [0.5, 0.75]
    spec.update(name="structured_smoke", sparsities=[0.5], seeds=[0], jobs=1)
    spec["base"].update(data={"name": "digits", "train_subset": 128}, final={"epochs": 1, "init": "rewind"})
    spec["base"]["model"]["params"]["width"] = 4
    spec["base"]["search"].update(population=2, burst_epochs=0.5)
    for row in spec["methods"]:
        if isinstance(row, dict) and "search.dg.epochs" in row.get("set", {}):
            row["set"]["search.dg.epochs"] = 2
        if isinstance(row, dict) and "search.generations" in row.get("set", {}):
            row["set"]["search.generations"] = 2
    path = tmp_path / "study_structured_smoke.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = run_cli("study", str(path), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    got = rows(tmp_path / "out" / "results.csv")
    assert len(got) == len(grid(load_study(path))) == 9  # dense once, 8 rows at 2x fewer MACs
    for row in got:
        summary = json.loads((tmp_path / "out" / "cells" / row["cell"] / "summary.json").read_text())
        if row["label"] != "dense":
            assert abs(summary["structure"]["macs_removed"] - 0.5) <= 0.011, row["label"]
            assert float(row["macs_removed"]) == pytest.approx(summary["structure"]["macs_removed"])
        assert float(row["train_flops"]) > 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "S3: selection beats a random width vector: ws_theta0 − random_width" in report

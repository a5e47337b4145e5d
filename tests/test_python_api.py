"""`evo_pai.search(model, train, ...)` on modules and data defined here (never registered), every
backend, and exports that follow the run (plugins, or the module handed back). Real runs, no mocks."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

import evo_pai
from conftest import Pairs, ROOT, cli_inproc, crash_after, run_cli, without_timing
from evo_pai import EvoPaiError

TINY = ["search.population=4", "search.generations=2", "search.burst_epochs=1", "search.initial_sparsity=0.4",
        "final.epochs=2", "train.batch_size=32", "train.threads=1"]


def clusters(n: int, seed: int, dim: int = 12, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian class clusters: learnable in a couple of epochs."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 2
    y = torch.arange(n) % classes
    return centers[y] + torch.randn(n, dim, generator=g), y


TRAIN, TEST = clusters(360, 1), clusters(120, 2)


class Net(nn.Module):
    """A user's own module: not registered anywhere."""

    def __init__(self, dim: int = 12, classes: int = 3):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(dim, 32), nn.Linear(32, 16), nn.Linear(16, classes)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class BNNet(nn.Module):
    """With BatchNorm: running statistics are part of what a run trains and .apply loads."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 3, 3)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))



def net() -> Net:
    torch.manual_seed(0)
    return Net()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


@pytest.fixture(scope="module")
def local_result(one_thread, tmp_path_factory):
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = evo_pai.search(model, TRAIN, test=TEST, sparsity=0.8, overrides=TINY, out=tmp_path_factory.mktemp("r") / "run",
                         progress=False)
    return model, before, res


def test_search_is_the_function_after_importing_the_subpackage():
    import evo_pai.search.nsga2 as nsga2_module  # sets evo_pai.search to the package, were it not guarded

    assert callable(evo_pai.search) and evo_pai.search.__name__ == "search"
    assert nsga2_module.__name__ == "evo_pai.search.nsga2" and evo_pai.search.nsga2 is nsga2_module


def test_local_tensors_and_apply_reproduces_test_accuracy(local_result):
    model, before, res = local_result
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # search() trains a copy
    s = res.summary
    assert s["model"] == "python:Net" and s["dataset"] == "python:tensors" and s["backend"] == "local"
    assert abs(res.mask.sparsity() - 0.8) <= 1 / 944 and s["test_accuracy"] > 0.5  # to one of Net's 944 weights
    assert [r["generation"] for r in res.history] == [0, 1] and res.front == []
    assert json.loads((res.run_dir / "summary.json").read_text())["test_accuracy"] == s["test_accuracy"]
    res.apply(model)
    assert abs(accuracy(model, *TEST) - s["test_accuracy"]) < 1e-9
    assert sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight")) >= 0.8 * sum(
        p.numel() for n, p in model.named_parameters() if n.endswith("weight")) - 1


def test_the_same_search_twice_returns_the_finished_run_without_training(local_result, capsys):
    """A notebook cell run twice: same config, model (θ0) and data -> the finished run, nothing trained or
    written; another config, model or data -> the same one-line refusal as before; the CLI still refuses."""
    _, _, first = local_result
    run = first.run_dir
    files = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    t0 = time.perf_counter()
    again = evo_pai.search(net(), TRAIN, test=TEST, sparsity=0.8, overrides=TINY, out=run, progress=False)
    took = time.perf_counter() - t0
    assert again.mask == first.mask and again.summary == first.summary and again.run_dir == run
    assert any("finished run of this config, model and data" in n and "without training" in n for n in again.notes)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == files  # nothing trained, nothing written
    assert took < first.summary["wall_seconds"] / 2, (took, first.summary["wall_seconds"])
    torch.manual_seed(1)
    for change in ({"train": TEST}, {"overrides": [*TINY, "search.population=3"]}, {"model": Net()}):
        args = {"model": net(), "train": TRAIN, "overrides": TINY, **change}
        with pytest.raises(EvoPaiError) as info:
            evo_pai.search(args.pop("model"), args.pop("train"), test=TEST, sparsity=0.8, out=run, progress=False,
                           **args)
        assert str(info.value) == f"out: '{run}' holds a finished run; choose a new folder or pass overwrite=True"
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == files
    code, _, err = cli_inproc(capsys, "run", "quickstart", "--out", str(run))
    assert code == 2 and "folder exists and is not empty" in err and err.count("\n") == 1


def test_dataset_and_dataloader_inputs(one_thread):
    res = evo_pai.search(net, Pairs(*TRAIN), test=Pairs(*TEST), sparsity=0.8, overrides=TINY, progress=False)
    assert res.summary["dataset"] == "python:Dataset" and res.summary["test_accuracy"] > 0.5
    loader = DataLoader(Pairs(*TRAIN), batch_size=16, shuffle=True, num_workers=0)
    res2 = evo_pai.search(net, loader, test=DataLoader(Pairs(*TEST)), sparsity=0.8,
                          overrides=[o for o in TINY if not o.startswith("train.batch_size")], progress=False)
    cfg = yaml.safe_load((res2.run_dir / "config.yaml").read_text())
    assert cfg["train"]["batch_size"] == 16 and cfg["data"]["name"] == "python:DataLoader"
    assert any(n.startswith("train:") and "batch_size (16) are used" in n and "shuffle" in n for n in res2.notes)
    assert any(n.startswith("test:") and "its batch_size, sampler/shuffle" in n for n in res2.notes)
    # the same examples as tensors, a Dataset or a DataLoader: the same data fingerprint
    assert cfg["data"]["params"]["fingerprint"] == yaml.safe_load((res.run_dir / "config.yaml").read_text())["data"]["params"]["fingerprint"]


def test_without_val_or_test_the_summary_says_so(one_thread, tmp_path):
    res = evo_pai.search(net(), TRAIN, sparsity=0.8, overrides=[*TINY, "data.val_fraction=0.25"], out=tmp_path / "r",
                         progress=False)
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["test_accuracy"] is None and "val_accuracy" in s["test_data"] and s["val_accuracy"] > 0.4
    assert any(n.startswith("test: none given") for n in res.notes)
    assert "no test data" in repr(res)


def test_batchnorm_model_on_the_vectorized_backend_and_apply(one_thread):
    x = TRAIN[0].reshape(-1, 1, 4, 3)
    torch.manual_seed(0)
    model = BNNet()
    res = evo_pai.search(model, (x, TRAIN[1]), test=(TEST[0].reshape(-1, 1, 4, 3), TEST[1]), sparsity=0.7,
                         overrides=[*TINY, "evaluation.backend=vectorized"], progress=False)
    assert res.summary["backend"] == "vectorized"  # it refuses a model it cannot batch: no silent fallback
    res.apply(model)
    assert not torch.equal(model.bn.running_mean, torch.zeros(4))  # the trained statistics came with the weights
    assert abs(accuracy(model, TEST[0].reshape(-1, 1, 4, 3), TEST[1]) - res.summary["test_accuracy"]) < 1e-9


def test_ray_backend_agrees_with_local(local_result, local_ray):
    """A factory defined in this test file reaches Ray's actors (by value) on a Ray the caller started (as in
    a notebook: conftest's local_ray); masks equal the local run's."""
    _, _, local = local_result
    res = evo_pai.search(net, TRAIN, test=TEST, sparsity=0.8, progress=False, overrides=[
        *TINY, "evaluation.backend=ray", "evaluation.num_actors=2", "evaluation.cpus_per_actor=1",
        "evaluation.actor_trainer=sequential"])
    assert res.summary["backend"] == "ray" and "2 actors" in res.summary["device"]
    assert all(torch.equal(a, b) for a, b in zip(res.mask.values(), local.mask.values()))
    for k in ("test_accuracy", "test_loss"):  # one thread here and in each 1-CPU actor: the same floats
        assert abs(res.summary[k] - local.summary[k]) < 1e-6, (k, res.summary[k], local.summary[k])


class Uncopyable(Net):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()  # neither deepcopy nor pickle takes it


class Locked(Net):
    """Holds a lock: copied here (its own __deepcopy__), but no Ray actor can receive it pickled."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()

    def __deepcopy__(self, memo):
        twin = Locked()
        twin.load_state_dict(self.state_dict())
        return twin


def test_unpicklable_instance_on_ray_is_one_line_before_any_folder(tmp_path):
    with pytest.raises(EvoPaiError) as info:
        evo_pai.search(Locked(), TRAIN, overrides=[*TINY, "evaluation.backend=ray"], out=tmp_path / "r", progress=False)
    text = str(info.value)
    assert "\n" not in text and "cannot be pickled for Ray actors" in text and "lambda: MyNet()" in text
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kwargs, field", [
    ({"out": ROOT / "docs"}, "out: "),
    ({"sparsity": 1.5}, "search.sparsity"),
    ({"train": (TRAIN[0], TRAIN[1].float())}, "train: labels"),
    ({"test": (TEST[0][:, :5], TEST[1])}, "test: inputs of shape"),
    ({"model": lambda: 3}, "model: the function passed"),
    ({"model": Uncopyable()}, "instance cannot be copied"),

    ({"train": (TRAIN[0], TRAIN[1] + 5)}, "train: label at index 0 is 5, outside the classes 0..2; the model outputs 3 classes: give it 8 outputs"),
])
def test_bad_input_is_one_evopaierror_line(kwargs, field):
    args = {"model": net(), "train": TRAIN, **kwargs}
    with pytest.raises(EvoPaiError) as info:  # never SystemExit
        evo_pai.search(args.pop("model"), args.pop("train"), overrides=TINY, progress=False, **args)
    assert "\n" not in str(info.value) and field in str(info.value)


def test_stderr_holds_the_bar_and_nothing_else(one_thread, capfd):
    evo_pai.search(net(), TRAIN, test=TEST, sparsity=0.8, overrides=TINY, progress=True)
    out, err = capfd.readouterr()
    chunks = [c.strip() for c in err.replace("\r", "\n").splitlines() if c.strip()]
    assert out == "" and chunks and all(c.startswith(("search", "final training")) for c in chunks), chunks[:5]
    final = [c for c in chunks if c.startswith("final training")]
    for done in ("0/2", "1/2", "2/2"):  # final.epochs=2: the bar moves epoch by epoch, not at the end only
        assert any(f"| {done} [" in c for c in final), (done, final)
    assert any("| 8/8 [" in c for c in chunks if c.startswith("search"))  # 4 members x 2 generations


def test_ctrl_c_leaves_a_resumable_folder_and_reraises(one_thread, tmp_path, monkeypatch, local_result):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        crash_after(m, 1)
        with pytest.raises(KeyboardInterrupt) as info:
            evo_pai.search(net(), TRAIN, test=TEST, sparsity=0.8, overrides=TINY, out=run, progress=False)
    assert (run / "checkpoint.safetensors").is_file() and not (run / "summary.json").exists()
    assert any(f"out='{run}'" in note for note in info.value.__notes__)
    cli = run_cli("resume", str(run))  # another process has no python:Net: one line says how to resume
    assert cli.returncode == 2 and "call evo_pai.search()" in cli.stderr and cli.stderr.count("\n") == 1, cli.stderr
    with pytest.raises(EvoPaiError, match="another config, model or data"):
        evo_pai.search(net(), TEST, test=TEST, sparsity=0.8, overrides=TINY, out=run, progress=False)
    res = evo_pai.search(net(), TRAIN, test=TEST, sparsity=0.8, overrides=TINY, out=run, progress=False)
    whole = local_result[2].summary
    assert without_timing(res.summary) == without_timing(whole) | {"threads": res.summary["threads"]}


def test_temporary_folder_save_and_export_with_the_module(one_thread, tmp_path):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))  # a chain: compact applies
    res = evo_pai.search(seq, TRAIN, test=TEST, sparsity=0.8, overrides=TINY, progress=False)
    temp = res.run_dir
    assert temp.is_dir() and str(temp).startswith(str(Path(os.environ.get("TMPDIR", "/tmp"))))
    res.save(tmp_path / "kept")
    assert not temp.exists() and (tmp_path / "kept" / "summary.json").is_file()
    info = res.export("compact")
    assert info["max_abs_diff"] < 1e-5
    compact = evo_pai.load_compact(info["path"])
    assert abs(accuracy(compact, *TEST) - res.summary["test_accuracy"]) < 1e-9
    # another process has no python:Sequential: the CLI says to hand the module over, in one line
    cli = run_cli("export", str(tmp_path / "kept"), "--format", "torch-prune")
    assert cli.returncode == 2 and "evo_pai.export(" in cli.stderr and cli.stderr.count("\n") == 1, cli.stderr
    torch.manual_seed(5)
    other = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    with pytest.raises(EvoPaiError, match="does not fit this run's trained weights"):
        evo_pai.export(tmp_path / "kept", model=nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)), format="csr")
    info = evo_pai.export(tmp_path / "kept", model=other, format="torch-prune")
    loaded = evo_pai.load_torch_prune(info["path"], model=other)
    assert abs(accuracy(loaded, *TEST) - res.summary["test_accuracy"]) < 1e-9


@pytest.mark.slow
def test_plugin_model_run_exports_in_every_format_from_the_cli(one_thread, tmp_path):
    """The reported bug: `evo-pai export` of a plugin-model run failed with `unknown model`; every format,
    each in a fresh process, and the exports load in yet another one."""
    raw = {"seed": 0, "plugins": ["byo_plugin"], "model": {"name": "byo_mlp"},
           "data": {"name": "synthetic", "params": {"n_train": 300, "n_test": 100, "dim": 12, "classes": 3}},
           "search": {"method": "combined", "sparsity": 0.8, "population": 4, "generations": 2, "burst_epochs": 1,
                      "initial_sparsity": 0.4}, "final": {"epochs": 2}, "train": {"threads": 1}}
    run = tmp_path / "run"
    evo_pai.run(raw, out=run)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    formats = ["compact", "csr", "torch-prune", "npz"] + (["semi-structured"] if torch.cuda.is_available() else [])
    for fmt in formats:
        cli = subprocess.run([sys.executable, "-m", "evo_pai", "export", str(run), "--format", fmt], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0, cli.stderr
        assert "max |diff|" in cli.stdout or fmt == "npz"
    script = ("import evo_pai, torch, numpy\n"
              f"e = '{run / 'export'}'\n"
              "x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))\n"
              "nets = [evo_pai.load_compact(e + '/compact.safetensors'), evo_pai.load_csr(e + '/csr.safetensors'),\n"
              "        evo_pai.load_torch_prune(e + '/torch_prune.pt')]\n"
              "print([round(float(n(x).sum()), 4) for n in nets], len(numpy.load(e + '/npz.npz').files))\n")
    # a fresh process: the csr and torch-prune files name the plugin, and their loaders import it
    loaded = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    sums, layers = eval(loaded.stdout.strip().rsplit(" ", 1)[0]), int(loaded.stdout.strip().rsplit(" ", 1)[1])
    assert max(sums) - min(sums) < 1e-3 and layers == 3


def test_nsga2_front(one_thread):
    res = evo_pai.search(net, TRAIN, test=TEST, method="nsga2", sparsity=0.9, progress=False, overrides=[
        "search.population=6", "search.generations=2", "search.burst_epochs=1", "final.epochs=1",
        "train.threads=1", "search.nsga2.density_range=[0.1,0.5]", "search.nsga2.levels=[0.5,0.7,0.9]",
        "search.nsga2.init_epochs=1", "search.nsga2.init_steps=2"])
    front = res.front
    assert front and len({round(m.sparsity, 3) for m in front}) >= 2
    assert all(abs(m.mask.sparsity() - m.sparsity) < 1e-9 for m in front)


@pytest.mark.slow
def test_example_runs_and_prints_what_the_docs_show():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py")], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    mine, measured = re.search(r"pruned module on the test data: ([\d.]+) % \(the run measured ([\d.]+) %\)",
                               out.stdout).groups()
    assert mine == measured and float(mine) > 80 and "sparsity 90.0 %" in out.stdout
    assert re.search(r"compact: units per layer \[\d+, \d+, 10\]", out.stdout)

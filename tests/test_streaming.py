"""Streamed datasets (map-style torch Datasets read from disk through a DataLoader) on generated files
of the real layouts: torchvision's CIFAR python batches and ImageFolder trees (Tiny-ImageNet's val
layout too). Nothing is downloaded. A streamed dataset gives the same batches as the same data in
memory, trains the same on every backend (local, vectorized, Ray actors that open the files
themselves) with any number of loader workers, resumes exactly, and keeps resident memory bounded."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, cli_inproc, tiny_raw, whole_and_interrupted, without_timing
from evo_pai.core.config import AugmentConfig, DataConfig, build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.data import streaming
from evo_pai.data.batches import TrainBatches, examples
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import make_evaluator
from evo_pai.runs.preflight import preflight
from evo_pai.runs.runner import run_experiment
from evo_pai.search.experiment import Experiment
from evo_pai.training.tasks import BurstTask
from test_data import write_cifar

sys.path.insert(0, str(ROOT / "benchmarks"))
from data_cost import rss_peak_during  # noqa: E402  (the benchmark's RSS sampler: the figure docs/performance.md reports)

AUG = AugmentConfig(crop_padding=2, flip=True)
CPU = torch.device("cpu")


def write_images(root: Path, per_class: int, size: tuple[int, int] = (12, 12), classes=("ant", "bee", "cat"),
                 seed: int = 0) -> None:
    """An ImageFolder tree of random PNGs: root/train/<class>/*.png and root/val/<class>/*.png."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(2, per_class // 4))):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{c}_{i}.png")


def cifar_raw(root: Path, **data) -> dict:
    raw = tiny_raw(population=3, generations=2)
    raw["data"] = {"name": "cifar10", "root": str(root), "params": {"stream": True}, "augment": AUG.model_dump(),
                   **data}
    raw["model"] = {"name": "lenet5"}
    raw["train"] = {"lr": 0.01, "batch_size": 32, "dtype": "float64"}
    raw["final"] = {"epochs": 1}
    return raw


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root / "cifar-10-batches-py", n=40)  # 200 training images: 180 train + 20 val, 40 test
    return root


def batches(data, seeds, aug=AUG, workers=0):
    return [(x.clone(), y.clone()) for x, y in TrainBatches(data, 32, seeds, 7, 3, CPU, torch.float32, aug, workers)]


def test_streamed_batches_are_the_in_memory_batches(cifar_root):
    """The same data streamed or in memory: identical batches (examples, order, augmentation) bit for bit,
    whatever the worker count; the streamed CIFAR set holds the in-memory loader's examples."""
    streamed = load_data(DataConfig(name="cifar10", root=str(cifar_root), params={"stream": True}))
    memory = streamed.in_memory()
    assert streamed.streamed and not memory.streamed and memory.train_x.shape == (180, 3, 32, 32)
    a, b, c = batches(streamed, [5, 6]), batches(memory, [5, 6]), batches(streamed, [5, 6], workers=2)
    assert len(a) == 7 and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert all(torch.equal(x1, x3) and torch.equal(y1, y3) for (x1, y1), (x3, y3) in zip(a, c))
    assert not torch.equal(a[0][0], batches(streamed, [5, 6], AugmentConfig())[0][0])  # augmented
    idx = torch.tensor([3, 170, 0, 42])  # a pruner's scoring sample (snip, grasp, ...)
    assert all(torch.equal(u, v) for u, v in zip(examples(streamed, idx), examples(memory, idx)))
    loaded = load_data(DataConfig(name="cifar10", root=str(cifar_root)))  # stream: false, standardized at load
    assert torch.equal(loaded.train_y, memory.train_y) and torch.equal(loaded.test_y, memory.test_y)
    assert torch.allclose(loaded.train_x, memory.train_x, atol=1e-5)  # statistics summed in another order


def test_streamed_and_in_memory_train_identically(cifar_root):
    """Bursts (with augmentation, validation and test) on the streamed set and on it read into memory give
    the same losses, accuracies and weights, exactly (float32)."""
    raw = cifar_raw(cifar_root)
    raw["train"]["dtype"] = "float32"
    cfg = build_config(raw)
    streamed = load_data(cfg.data)
    runs = []
    for data in (streamed, streamed.in_memory()):
        ev = make_evaluator(cfg, data)
        exp = Experiment(cfg, ev, data)
        tasks = [BurstTask(exp.random_mask(0.5, i), 1.0, 10 + i, keep_state=True, test=True) for i in range(2)]
        runs.append(ev.evaluate(tasks))
    for a, b in zip(*runs):
        assert a.metrics == b.metrics and all(torch.equal(a.state[n], b.state[n]) for n in a.state)
    assert runs[0][0].metrics["train_loss"] != runs[0][1].metrics["train_loss"]


def test_streamed_search_agrees_on_local_vectorized_and_ray(cifar_root, tmp_path, local_ray):
    """One streamed search (float64, augmentation, loader workers in some) on the three backends: the same
    mask, and metrics within 1e-10. Ray actors build the data from the config: they open the files."""
    runs = {}
    for name, evaluation, workers in (("local", {"backend": "local"}, 2), ("vectorized", {"backend": "vectorized"}, 0),
                                      ("ray", {"backend": "ray", "num_actors": 2, "cpus_per_actor": 1,
                                               "actor_trainer": "auto"}, 2)):
        raw = cifar_raw(cifar_root, workers=workers)
        raw["evaluation"] = evaluation
        (tmp_path / name).mkdir()
        runs[name] = run_experiment(build_config(raw), tmp_path / name), MaskSet.load(tmp_path / name / "mask.safetensors")
    (ref, ref_mask) = runs["local"]
    for name in ("vectorized", "ray"):
        summary, mask = runs[name]
        assert mask == ref_mask, name
        for k in ("test_loss", "test_accuracy", "val_accuracy"):
            assert abs(summary[k] - ref[k]) <= 1e-10, (name, k, summary[k], ref[k])
    assert "vectorized trainer" in runs["ray"][0]["device"]


def test_resumed_streamed_run_equals_uninterrupted(tmp_path, monkeypatch):
    """An ImageFolder tree streamed by two loader workers, with augmentation: killed after its first
    checkpoint and resumed, the run ends with the uninterrupted run's summary."""
    write_images(tmp_path / "images", per_class=12)
    raw = tiny_raw(population=3, generations=2)
    raw["data"] = {"name": "image_folder", "root": str(tmp_path / "images"), "workers": 2, "augment": AUG.model_dump()}
    raw["model"] = {"name": "lenet5"}
    raw["final"] = {"epochs": 1}
    cfg = build_config(raw)
    whole, ckpt = whole_and_interrupted(cfg, tmp_path, monkeypatch, 1)
    assert whole["test_loss"] > 0
    assert without_timing(whole) == without_timing(run_experiment(cfg, tmp_path / "run", resume=ckpt))


def test_cifar100_streamed_with_subsets(tmp_path):
    """CIFAR-100's layout (one `train` and one `test` pickle, fine and coarse labels), streamed, with
    data.train_subset / test_subset drawn as for tensors: the same examples as the in-memory loader's."""
    import pickle

    (tmp_path / "cifar-100-python").mkdir()
    rng = np.random.default_rng(2)
    for fname, n in (("train", 60), ("test", 30)):
        fine = [int(v) for v in rng.integers(0, 100, n)]
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": fine,
                 b"coarse_labels": [v // 5 for v in fine]}
        (tmp_path / "cifar-100-python" / fname).write_bytes(pickle.dumps(batch, protocol=2))
    for labels, classes in (("fine", 100), ("coarse", 20)):
        cfg = DataConfig(name="cifar100", root=str(tmp_path), train_subset=20, test_subset=10,
                         params={"labels": labels, "stream": True})
        s = load_data(cfg)
        memory = load_data(cfg.model_copy(update={"params": {"labels": labels}}))
        assert s.streamed and s.num_classes == classes and (s.n_train, len(s.test_set)) == (20, 10)
        read = s.in_memory()
        assert torch.equal(read.train_y, memory.train_y) and torch.equal(read.test_y, memory.test_y)
        for split in ("train_x", "val_x", "test_x"):  # the images too (statistics summed in another order)
            a, b = getattr(read, split), getattr(memory, split)
            assert a.shape == b.shape and float((a - b).abs().max()) < 1e-5, split


def decode(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """One image file decoded here with Pillow (not by evo_pai): float64 C x H x W, bilinear to `size`."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        img = img if img.size == (size[1], size[0]) else img.resize((size[1], size[0]), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.float64).copy()).permute(2, 0, 1)


def assert_holds_the_files(memory, streamed, root: Path, size: tuple[int, int]) -> None:
    """`memory`'s tensors are the image files decoded independently: the training rows and validation rows
    (the streamed split's files, which together are every training file once) and the test files in
    folder order, standardized by the per-channel mean and std of the training rows (float32 rounding)."""
    classes = sorted(d.name for d in (root / "train").iterdir())
    files = {str(f): c for c, name in enumerate(classes) for f in sorted((root / "train" / name).iterdir())}
    paths = streamed.train_set.dataset.paths
    rows = {split: [paths[i].decode() for i in getattr(streamed, f"{split}_set").indices] for split in ("train", "val")}
    assert sorted(rows["train"] + rows["val"]) == sorted(files)
    test = [(f, c) for c, name in enumerate(classes) for f in sorted((root / "val" / name).iterdir())]
    raw = {"train": torch.stack([decode(Path(f), size) for f in rows["train"]]),
           "val": torch.stack([decode(Path(f), size) for f in rows["val"]]),
           "test": torch.stack([decode(f, size) for f, _ in test])}
    std, mean = torch.std_mean(raw["train"], dim=(0, 2, 3), keepdim=True)  # every training row is in the sample
    for split, labels in (("train", [files[f] for f in rows["train"]]), ("val", [files[f] for f in rows["val"]]),
                          ("test", [c for _, c in test])):
        x, y = getattr(memory, f"{split}_x"), getattr(memory, f"{split}_y")
        assert y.tolist() == labels, split
        err = float((x.double() - (raw[split] - mean) / std).abs().max())
        assert x.dtype == torch.float32 and err < 1e-5, (split, err)


def test_image_folder_layouts(tmp_path):
    """Class folders sorted by name, images resized to the first training image's size, the test split
    from ROOT/val or from Tiny-ImageNet's images/ + val_annotations.txt; stream: false reads it whole."""
    write_images(tmp_path, per_class=8, size=(10, 12))
    from PIL import Image

    Image.new("RGB", (20, 16)).save(tmp_path / "train" / "cat" / "big.png")  # another size: resized on read
    s = load_data(DataConfig(name="image_folder", root=str(tmp_path), val_fraction=0.2))
    assert s.streamed and s.input_shape == (3, 10, 12) and s.num_classes == 3
    assert s.n_train + len(s.val_set) == 25 and len(s.test_set) == 6
    assert sorted(int(s.test_set[i][1]) for i in range(6)) == [0, 0, 1, 1, 2, 2]
    assert {tuple(s.train_set[i][0].shape) for i in range(s.n_train)} == {(3, 10, 12)}
    memory = load_data(DataConfig(name="image_folder", root=str(tmp_path), val_fraction=0.2, params={"stream": False}))
    assert not memory.streamed and memory.train_set is None
    assert_holds_the_files(memory, s, tmp_path, (10, 12))
    gray = load_data(DataConfig(name="image_folder", root=str(tmp_path), params={"channels": 1, "size": [8, 8]}))
    assert gray.input_shape == (1, 8, 8) and tuple(gray.test_set[0][0].shape) == (1, 8, 8)

    tiny = tmp_path / "tiny"  # Tiny-ImageNet: train/<wnid>/images/*, val/images/* + val_annotations.txt
    write_images(tiny, per_class=4, classes=("n01", "n02"))
    (tiny / "val" / "images").mkdir()
    lines = []
    for c in ("n01", "n02"):
        for f in sorted((tiny / "val" / c).iterdir()):
            f.rename(tiny / "val" / "images" / f.name)
            lines.append(f"{f.name}\t{c}\t0\t0\t9\t9")
        (tiny / "val" / c).rmdir()
    (tiny / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    t = load_data(DataConfig(name="image_folder", root=str(tiny)))
    assert sorted(int(t.test_set[i][1]) for i in range(len(t.test_set))) == [0, 0, 1, 1]


def one_line_error(match: str, call) -> str:
    with pytest.raises(EvoPaiError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg and all(part in msg for part in match.split("|")), msg
    return msg


def test_missing_files_and_wrong_layouts_are_one_line_errors(tmp_path, cifar_root, capsys):
    def data(name, root, **params):
        return lambda: load_data(DataConfig(name=name, root=str(root), params=params))

    one_line_error("cifar-10-batches-py/data_batch_1|data.root", data("cifar10", tmp_path, stream=True))
    one_line_error("cifar-100-python/train|data.root", data("cifar100", tmp_path))
    # data.root pointing at the batch folder itself: the fix names the folder above it
    one_line_error(f"data.root|'{cifar_root}'", data("cifar10", cifar_root / "cifar-10-batches-py"))
    one_line_error(f"{tmp_path / 'train'}|data.root", data("image_folder", tmp_path))
    (tmp_path / "train" / "only").mkdir(parents=True)
    one_line_error("1 class folder(s)|data.root", data("image_folder", tmp_path))
    write_images(tmp_path / "other", per_class=4)
    (tmp_path / "other" / "val" / "dog").mkdir()
    one_line_error("data.params.test|same class names", data("image_folder", tmp_path / "other"))
    cfg = build_config({**tiny_raw(), "data": {"name": "digits", "workers": 2}})
    one_line_error("data.workers|held in memory|data.workers: 0", lambda: preflight(cfg))
    code, _, err = cli_inproc(capsys, "run", str(ROOT / "configs" / "quickstart.yaml"), "--set", f"data.root={tmp_path}",
                              "--set", "data.name=cifar10", "--set", "model.name=lenet5",
                              "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "data.root" in err, err


def test_an_image_unreadable_mid_training_is_one_line_from_a_loader_worker(tmp_path):
    write_images(tmp_path, per_class=6)
    s = load_data(DataConfig(name="image_folder", root=str(tmp_path)))
    bad = Path(s.train_set.dataset.paths[s.train_set.indices[0]].decode())
    bad.write_bytes(b"not a png")  # e.g. replaced on a network file system after the run started
    one_line_error(f"{bad}|not a readable image|replace or remove it", lambda: batches(s, [1], workers=2))


def test_dataset_larger_than_the_memory_budget_trains_in_bounded_memory(tmp_path, one_thread, monkeypatch):
    """An ImageFolder tree 4x the memory budget on disk (16x as the in-memory path's float32 tensors) is
    streamed and trains two epochs while the process's resident memory grows by less than the budget:
    what stays resident is a few batches and an evaluation chunk, whatever the number of files. The
    statistics sample is made smaller than the set, so loading decodes few images and the bursts are
    the first to read most of them: a dataset that kept what it decoded would grow by the whole set."""
    write_images(tmp_path, per_class=534, size=(64, 64))  # 1,602 images of noise: PNG does not shrink them
    monkeypatch.setattr(streaming, "STATS_SAMPLE", 64)
    raw = tiny_raw()
    raw["data"] = {"name": "image_folder", "root": str(tmp_path), "val_fraction": 0.02}
    raw["model"] = {"name": "mlp", "params": {"hidden": [8]}}
    raw["train"]["batch_size"] = 16
    cfg = build_config(raw)
    data = load_data(cfg.data)
    assert data.streamed and data.train_x is None and data.val_x is None and data.test_x is None
    assert isinstance(data.train_set.dataset, streaming.ImageFiles) and len(data.train_set) > 1500
    on_disk = sum(f.stat().st_size for f in tmp_path.rglob("*.png"))
    budget = on_disk // 4
    ev = make_evaluator(cfg, data)
    mask = Experiment(cfg, ev, data).random_mask(0.5, 0)
    ev.context.run(BurstTask(mask, 0.1, 1))  # allocator, loader and model warmed up on a few batches
    # bursts run without the evaluator's result cache: cached traits would be model-sized memory kept
    before, peak = rss_peak_during(lambda: [ev.context.run(BurstTask(mask, 1.0, seed)) for seed in (2, 3)])
    print(f"\nRSS growth {(peak - before) / 2**20:.2f} MiB while streaming {on_disk / 2**20:.1f} MiB of PNG "
          f"(budget {budget / 2**20:.2f} MiB)")
    assert peak - before < budget


def test_the_dataset_authors_example_in_extending_md_trains(tmp_path):
    """docs/extending.md's streamed dataset (a Dataset of .pt files through `assemble_streamed`), run as
    written: registered, loaded from data.root, trained by a short search with loader workers."""
    text = (ROOT / "docs" / "extending.md").read_text()
    block = next(b.split("```", 1)[0] for b in text.split("```python\n")[1:] if 'register_dataset("shards"' in b)
    exec(compile(block, "docs/extending.md", "exec"), {})
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 40), ("test", 10)):
        (tmp_path / split).mkdir()
        for i in range(n):
            torch.save((torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen), i % 10),
                       tmp_path / split / f"{i}.pt")
    raw = tiny_raw(population=2, generations=1)
    raw["data"] = {"name": "shards", "root": str(tmp_path), "workers": 2, "augment": AUG.model_dump()}
    raw["model"] = {"name": "lenet5"}
    raw["final"] = {"epochs": 1}
    (tmp_path / "run").mkdir()
    summary = run_experiment(build_config(raw), tmp_path / "run")
    assert summary["sparsity"] > 0.7 and 0 <= summary["test_accuracy"] <= 1
    one_line_error("data.root|no .pt files", lambda: load_data(DataConfig(name="shards", root=str(tmp_path / "x"))))

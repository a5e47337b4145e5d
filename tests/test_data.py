"""Dataset loaders on real files: sklearn digits, IDX/pickle files written here, the Debian FMNIST."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evo_pai.core.config import DataConfig
from evo_pai.data.datasets import DATASET, DataSplits, load_data, read_idx
from evo_pai.core.errors import EvoPaiError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist/")


def write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 IDX file the way the MNIST distribution does (big-endian dims)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_idx_dataset(directory: Path, n_train: int = 60, n_test: int = 20, compress: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_idx(directory / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress)
    write_idx(directory / "train-labels-idx1-ubyte", np.arange(n_train) % 10, compress)
    write_idx(directory / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress)
    write_idx(directory / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, compress)


def check_splits(s: DataSplits, shape: tuple[int, ...], n_classes: int) -> None:
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y), (s.test_x, s.test_y)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == shape and x.shape[0] == y.shape[0] > 0
    assert s.input_shape == shape and s.num_classes == n_classes


def test_registry_has_all_datasets_with_descriptions():
    for name in ("digits", "fashion_mnist", "mnist", "cifar10", "synthetic"):
        assert name in DATASET
    assert all(e.description for e in DATASET)


def test_digits_shapes_val_split_and_determinism():
    s = load_data(DataConfig(name="digits", val_fraction=0.1, split_seed=3))
    check_splits(s, (1, 8, 8), 10)
    n_test = round(0.2 * 1797)
    assert s.test_y.shape[0] == n_test
    assert s.val_y.shape[0] == round(0.1 * (1797 - n_test))
    assert s.n_train + s.val_y.shape[0] + n_test == 1797
    assert abs(float(s.train_x.mean())) < 1e-4 and abs(float(s.train_x.std()) - 1) < 1e-3

    again = load_data(DataConfig(name="digits", val_fraction=0.1, split_seed=3))
    assert torch.equal(s.train_x, again.train_x) and torch.equal(s.val_y, again.val_y)
    other = load_data(DataConfig(name="digits", val_fraction=0.1, split_seed=4))
    assert not torch.equal(s.test_y, other.test_y)


def test_subsets_and_device_copy():
    s = load_data(DataConfig(name="digits", train_subset=100, test_subset=50))
    assert s.n_train == 100 and s.test_y.shape[0] == 50
    moved = s.to("cpu")
    assert moved is not s and torch.equal(moved.train_x, s.train_x)


def test_unknown_dataset_and_param():
    with pytest.raises(EvoPaiError, match="unknown dataset 'nope'"):
        load_data(DataConfig(name="nope"))
    with pytest.raises(EvoPaiError, match="data.params: 'foo'"):
        load_data(DataConfig(name="digits", params={"foo": 1}))


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx(tmp_path: Path, compress: bool):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    write_idx(tmp_path / "x-idx3-ubyte", arr, compress)
    path = tmp_path / ("x-idx3-ubyte.gz" if compress else "x-idx3-ubyte")
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and np.array_equal(out, arr)
    assert read_idx(path) is out  # cached


def test_read_idx_malformed(tmp_path: Path):
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"not an idx file at all")
    with pytest.raises(EvoPaiError, match="bad-idx1-ubyte"):
        read_idx(bad)
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(EvoPaiError, match="short-idx1-ubyte"):
        read_idx(short)


def test_fashion_mnist_loader_on_written_files(tmp_path: Path):
    write_idx_dataset(tmp_path, compress=True)
    s = load_data(DataConfig(name="fashion_mnist", root=str(tmp_path), val_fraction=0.25))
    check_splits(s, (1, 28, 28), 10)
    assert (s.n_train, s.val_y.shape[0], s.test_y.shape[0]) == (45, 15, 20)


def test_mnist_loader_torchvision_layout_uncompressed(tmp_path: Path):
    write_idx_dataset(tmp_path / "MNIST" / "raw", compress=False)
    s = load_data(DataConfig(name="mnist", root=str(tmp_path)))
    check_splits(s, (1, 28, 28), 10)
    assert s.n_train + s.val_y.shape[0] == 60


def test_missing_roots_raise_with_fix(tmp_path: Path):
    with pytest.raises(EvoPaiError) as err:
        load_data(DataConfig(name="fashion_mnist", root=str(tmp_path / "none")))
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "train-images-idx3-ubyte" in msg and "\n" not in msg
    with pytest.raises(EvoPaiError, match="place the torchvision files there or set data.root"):
        load_data(DataConfig(name="mnist", root=str(tmp_path)))
    with pytest.raises(EvoPaiError, match="cifar-10-batches-py.*set data.root"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))


def write_cifar(directory: Path, n: int = 8, protocol: int = 2) -> None:
    """Batches in the official format: a dict with bytes keys, a uint8 array, Python int labels."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": f"{fname} of 6".encode(), b"labels": [int(i) % 10 for i in range(n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        with open(directory / fname, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)


class RunsCode:
    """Unpickling this calls os.system: what a crafted batch file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_loader_on_written_pickles(tmp_path: Path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    s = load_data(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.25))
    check_splits(s, (3, 32, 32), 10)
    assert (s.n_train, s.val_y.shape[0], s.test_y.shape[0]) == (30, 10, 8)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_real_format_loads_with_any_pickle_protocol(tmp_path: Path, protocol: int):
    write_cifar(tmp_path / "cifar-10-batches-py", n=10, protocol=protocol)
    s = load_data(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.2))
    assert (s.n_train, s.test_y.shape[0]) == (40, 10) and sorted(s.test_y.tolist()) == list(range(10))


def test_cifar10_pickle_that_runs_code_is_refused(tmp_path: Path):
    """A data_batch that would call os.system is refused before anything runs, in one line."""
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar(directory)
    marker = tmp_path / "pwned"
    with open(directory / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": RunsCode(marker), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(EvoPaiError) as err:
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))
    msg = str(err.value)
    assert "data_batch_2" in msg and "system" in msg and "refused" in msg and "\n" not in msg, msg
    assert not marker.exists(), "the crafted pickle ran code"


def test_cifar10_malformed_batch(tmp_path: Path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(EvoPaiError, match="data_batch_3"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_real_files():
    s = load_data(DataConfig(name="fashion_mnist", val_fraction=0.1, test_subset=1000))
    check_splits(s, (1, 28, 28), 10)
    assert s.n_train == 54000 and s.val_y.shape[0] == 6000 and s.test_y.shape[0] == 1000
    assert torch.equal(torch.bincount(s.train_y, minlength=10) + torch.bincount(s.val_y, minlength=10),
                       torch.full((10,), 6000))


def test_synthetic_deterministic_and_learnable():
    cfg = DataConfig(name="synthetic", split_seed=7)
    a, b = load_data(cfg), load_data(cfg)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    check_splits(a, (20,), 4)
    assert a.n_train + a.val_y.shape[0] == 1000 and a.test_y.shape[0] == 500

    small = load_data(DataConfig(name="synthetic", params={"n_train": 100, "dim": 5, "classes": 3}))
    assert small.input_shape == (5,) and small.num_classes == 3

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    for _ in range(3):
        for idx in torch.randperm(a.n_train).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(a.train_x[idx]), a.train_y[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(a.test_x).argmax(1) == a.test_y).float().mean().item()
    assert acc > 0.7  # chance is 0.25

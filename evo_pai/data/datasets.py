"""Datasets: the registry's built-ins, splitting, standardization, and `DataSplits`.

A loader returns standardized train/val/test tensors (the fast default for what fits in memory), or
map-style datasets read from disk as training goes (data/streaming.py); `load_data` then applies the
optional train/test subsets. File formats are in data/formats.py. Nothing is ever downloaded: missing
files raise an `EvoPaiError` that says where the files were looked for and how to provide them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from evo_pai.core.config import DataConfig
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import DATASET, register_dataset
from evo_pai.data.formats import find_idx, image_folder_index, read_cifar_batch, read_idx
from evo_pai.data.streaming import CifarBatches, ImageFiles, channel_stats, read_all

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist/"
DEFAULT_ROOT = "./data"
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

# Independent random streams derived from split_seed, so e.g. the digits test split and
# the validation split are not the same permutation.
_STREAM_TEST, _STREAM_VAL, _STREAM_TRAIN_SUBSET, _STREAM_TEST_SUBSET, _STREAM_SYNTHETIC, _STREAM_STATS = range(6)


@dataclass
class DataSplits:
    """Train / validation / test data and what a model needs to know of it.

    Either the six tensors (standardized, in memory) or the three `*_set` datasets (streamed: items
    `(x, label)`, standardized per batch on the device with `stats`, the per-channel mean and std)."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    train_x: torch.Tensor | None = None
    train_y: torch.Tensor | None = None
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None
    stats: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def streamed(self) -> bool:
        return self.train_set is not None

    @property
    def n_train(self) -> int:
        return len(self.train_set) if self.streamed else int(self.train_y.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "DataSplits":
        """Copy the tensors onto `device`; inputs (float tensors) also cast to `dtype` when given. A streamed
        dataset stays on disk: its batches are moved as they are read."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype) if dtype is not None and t.is_floating_point() else t.to(device)

        moved = {
            f.name: move(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        if self.stats is not None:  # on the device once, not copied with every batch
            moved["stats"] = tuple(move(t) for t in self.stats)
        return dataclasses.replace(self, **moved)

    def in_memory(self) -> "DataSplits":
        """A streamed dataset read whole into standardized float32 tensors (the fast default for what
        fits): the same examples in the same order, so training on it draws the streamed batches."""
        if not self.streamed:
            return self
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = (read_all(d, self.stats) for d in
                                                    (self.train_set, self.val_set, self.test_set))
        return dataclasses.replace(self, train_x=tr_x, train_y=tr_y, val_x=va_x, val_y=va_y, test_x=te_x,
                                   test_y=te_y, train_set=None, val_set=None, test_set=None, stats=None)


# ----------------------------------------------------------------------------- helpers


def _rng(seed: int, stream: int) -> np.random.Generator:
    # SeedSequence rejects negative ints; the modulo keeps any int split_seed usable.
    return np.random.default_rng(np.random.SeedSequence([stream, seed % 2**63]))


def _permutation(n: int, seed: int, stream: int) -> torch.Tensor:
    return torch.from_numpy(_rng(seed, stream).permutation(n))


def split_validation(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Carve a deterministic validation split off the training data: (train_x, train_y, val_x, val_y)."""
    n = int(y.shape[0])
    n_val = min(max(1, round(n * fraction)), n - 1)  # both splits keep at least one example
    perm = _permutation(n, seed, _STREAM_VAL)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def standardize(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Zero-mean / unit-std float inputs using train-split statistics only (no test leakage).

    Images use one statistic per channel, vector data one per feature. Works in place
    (60k images: avoids allocating two more 190 MB tensors), so pass tensors you own.
    """
    dims = (0, 2, 3) if train_x.dim() == 4 else (0,)
    std, mean = torch.std_mean(train_x, dim=dims, keepdim=True)
    std = std.clamp_min(1e-6)  # a constant pixel would otherwise divide by zero
    return [t.sub_(mean).div_(std) for t in (train_x, *others)]


def _assemble(
    name: str,
    cfg: DataConfig,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
) -> DataSplits:
    """Shared tail of every loader: validation split, then standardization.

    Inputs may be raw uint8: splitting before the float conversion moves 4x fewer bytes.
    """
    tr_x, tr_y, va_x, va_y = split_validation(train_x, train_y, cfg.val_fraction, cfg.split_seed)
    # Fresh float copies (indexing above already copied train/val), so in-place standardization is safe.
    tr_x, va_x, te_x = standardize(tr_x.float(), va_x.float(), test_x.to(torch.float32, copy=True))
    return DataSplits(
        name=name,
        train_x=tr_x.contiguous(),
        train_y=tr_y.long(),
        val_x=va_x.contiguous(),
        val_y=va_y.long(),
        test_x=te_x.contiguous(),
        test_y=test_y.long(),
        num_classes=num_classes,
        input_shape=tuple(tr_x.shape[1:]),
    )


def _check_params(name: str, params: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    for key in params:
        if key not in allowed:
            options = ", ".join(allowed) or "none"
            raise EvoPaiError(
                f"data.params: '{key}' is not an option of dataset '{name}' (allowed: {options})"
            )


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n is None or n >= y.shape[0]:
        return x, y
    idx = _permutation(int(y.shape[0]), seed, stream)[:n]
    return x[idx], y[idx]


def assemble_streamed(name: str, cfg: DataConfig, train: Dataset, test: Dataset, num_classes: int,
                      input_shape: tuple[int, ...], standardize: bool = True) -> DataSplits:
    """The streamed counterpart of `_assemble` (a dataset author's helper): the validation split carved
    off `train` by the same permutation; with `standardize`, per-channel statistics of a seeded sample
    of the training part, applied to every batch on the training device."""
    n = len(train)
    if n < 2:
        raise EvoPaiError(f"data.name: dataset '{name}' has {n} training item(s); it needs at least 2 "
                          "(one to train on, one to validate on)")
    n_val = min(max(1, round(n * cfg.val_fraction)), n - 1)
    perm = _permutation(n, cfg.split_seed, _STREAM_VAL).tolist()
    train_part = Subset(train, perm[n_val:])
    stats = channel_stats(train_part, cfg.split_seed + _STREAM_STATS) if standardize else None
    return DataSplits(name=name, num_classes=num_classes, input_shape=tuple(input_shape), train_set=train_part,
                      val_set=Subset(train, perm[:n_val]), test_set=test, stats=stats)


def _check_splits(name: str, s: DataSplits) -> None:
    tensors = [getattr(s, f) for f in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")]
    sets = [s.train_set, s.val_set, s.test_set]
    if not (all(t is not None for t in tensors) or all(d is not None and len(d) > 0 for d in sets)):
        raise EvoPaiError(f"data.name: dataset '{name}' returned neither six tensors (train/val/test x and y) nor "
                          "three non-empty datasets (train_set, val_set, test_set); fix its loader")


def _subset_set(dataset: Dataset, n: int | None, seed: int, stream: int) -> Dataset:
    if n is None or n >= len(dataset):
        return dataset
    return Subset(dataset, _permutation(len(dataset), seed, stream)[:n].tolist())


def check_workers(cfg: DataConfig, data: DataSplits) -> None:
    """Before a run folder exists: loader workers read streamed datasets; on tensors they would do nothing."""
    if cfg.workers and not data.streamed:
        raise EvoPaiError(f"data.workers: dataset '{cfg.name}' is held in memory, where loader workers have nothing "
                          "to read; set data.workers: 0, or stream it from disk (data.params.stream: true for "
                          "cifar10 / cifar100)")


def load_data(cfg: DataConfig) -> DataSplits:
    """Load the dataset named in `cfg` and apply the optional train/test subsets."""
    loader = DATASET.get(cfg.name)
    splits = loader(cfg)
    _check_splits(cfg.name, splits)
    if splits.streamed:
        return dataclasses.replace(
            splits, train_set=_subset_set(splits.train_set, cfg.train_subset, cfg.split_seed, _STREAM_TRAIN_SUBSET),
            test_set=_subset_set(splits.test_set, cfg.test_subset, cfg.split_seed, _STREAM_TEST_SUBSET))
    train_x, train_y = _subset(splits.train_x, splits.train_y, cfg.train_subset, cfg.split_seed, _STREAM_TRAIN_SUBSET)
    test_x, test_y = _subset(splits.test_x, splits.test_y, cfg.test_subset, cfg.split_seed, _STREAM_TEST_SUBSET)
    return dataclasses.replace(splits, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


# ----------------------------------------------------------------------------- IDX datasets


def _load_idx_dataset(name: str, cfg: DataConfig, directory: Path, fix: str) -> DataSplits:
    arrays = {}
    for key, base in IDX_FILES.items():
        path = find_idx(directory, base)
        if path is None:
            raise EvoPaiError(f"dataset {name}: '{directory / base}[.gz]' not found: {fix}")
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise EvoPaiError(
                f"dataset {name}: {split} files in '{directory}' have shapes {x.shape} and {y.shape}; "
                f"expected (N, H, W) images and N labels: replace the files"
            )

    def images(a: np.ndarray) -> torch.Tensor:
        # Stay uint8: no /255 needed, standardization divides by the pixel std anyway.
        return torch.from_numpy(a.copy()).unsqueeze(1)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    train_y, test_y = labels(arrays["train_y"]), labels(arrays["test_y"])
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    return _assemble(name, cfg, images(arrays["train_x"]), train_y, images(arrays["test_x"]), test_y, num_classes)


# ----------------------------------------------------------------------------- datasets


@register_dataset("digits", "sklearn 8x8 handwritten digits (1797 images, 10 classes, fixed 20% test split)")
def load_digits(cfg: DataConfig) -> DataSplits:
    from sklearn.datasets import load_digits as sk_load_digits  # sklearn import is slow; only when used

    _check_params("digits", cfg.params)
    bunch = sk_load_digits()
    x = torch.from_numpy(bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    perm = _permutation(len(y), cfg.split_seed, _STREAM_TEST)
    n_test = round(0.2 * len(y))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return _assemble("digits", cfg, x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10)


@register_dataset("fashion_mnist", "Fashion-MNIST 28x28 grayscale, 10 classes (local IDX files, Debian dataset-fashion-mnist)")
def load_fashion_mnist(cfg: DataConfig) -> DataSplits:
    _check_params("fashion_mnist", cfg.params)
    root = Path(cfg.root or FASHION_MNIST_ROOT)
    # Also accept a torchvision-style root (ROOT/FashionMNIST/raw) when the files are not at ROOT.
    tv = root / "FashionMNIST" / "raw"
    directory = tv if find_idx(root, IDX_FILES["train_x"]) is None and tv.is_dir() else root
    fix = "install it with `apt-get install dataset-fashion-mnist` or set data.root"
    return _load_idx_dataset("fashion_mnist", cfg, directory, fix)


@register_dataset("mnist", "MNIST 28x28 handwritten digits, 10 classes (torchvision files in ROOT/MNIST/raw)")
def load_mnist(cfg: DataConfig) -> DataSplits:
    _check_params("mnist", cfg.params)
    directory = Path(cfg.root or DEFAULT_ROOT) / "MNIST" / "raw"
    return _load_idx_dataset("mnist", cfg, directory, "place the torchvision files there or set data.root")


def _load_cifar(name: str, cfg: DataConfig, folder: str, train: list[str], test: list[str], label_key: bytes,
                classes: int) -> DataSplits:
    root = Path(cfg.root or DEFAULT_ROOT)
    directory = root / folder
    if not directory.is_dir() and (root / train[0]).is_file():
        raise EvoPaiError(f"data.root: '{root}' holds the {name} batch files themselves; set data.root to the folder "
                          f"that contains {folder}: '{root.parent}'")
    for fname in train + test:
        if not (directory / fname).is_file():
            raise EvoPaiError(f"dataset {name}: '{directory / fname}' not found: place the torchvision files there "
                              "or set data.root")
    stream = cfg.params.get("stream", False)
    if not isinstance(stream, bool):
        raise EvoPaiError(f"data.params.stream: must be true or false, got {stream!r}")
    if stream:  # uint8 in the host's memory, standardized per batch on the device
        return assemble_streamed(name, cfg, CifarBatches([directory / f for f in train], label_key),
                                 CifarBatches([directory / f for f in test], label_key), classes, (3, 32, 32))
    tr = [read_cifar_batch(directory / f, label_key) for f in train]
    te = [read_cifar_batch(directory / f, label_key) for f in test]

    def cat(parts: list[tuple[np.ndarray, np.ndarray]], i: int) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([p[i] for p in parts]))  # uint8 images: standardization scales

    return _assemble(name, cfg, cat(tr, 0), cat(tr, 1), cat(te, 0), cat(te, 1), classes)


@register_dataset("cifar10", "CIFAR-10 32x32 colour images, 10 classes (torchvision files in ROOT/cifar-10-batches-py; "
                             "params: stream)")
def load_cifar10(cfg: DataConfig) -> DataSplits:
    _check_params("cifar10", cfg.params, ("stream",))
    return _load_cifar("cifar10", cfg, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                       ["test_batch"], b"labels", 10)


@register_dataset("cifar100", "CIFAR-100 32x32 colour images, 100 classes or 20 superclasses (torchvision files in "
                              "ROOT/cifar-100-python; params: labels fine|coarse, stream)")
def load_cifar100(cfg: DataConfig) -> DataSplits:
    _check_params("cifar100", cfg.params, ("labels", "stream"))
    labels = cfg.params.get("labels", "fine")
    if labels not in ("fine", "coarse"):
        raise EvoPaiError(f"data.params.labels: must be fine (100 classes) or coarse (20 superclasses), got {labels!r}")
    return _load_cifar("cifar100", cfg, "cifar-100-python", ["train"], ["test"], f"{labels}_labels".encode(),
                       100 if labels == "fine" else 20)


_IMAGE_FOLDER_DEFAULTS: dict[str, Any] = {"train": "train", "test": "val", "size": None, "channels": 3, "stream": True}


@register_dataset("image_folder", "class folders of image files under ROOT/train and ROOT/val (ImageNet / "
                                  "Tiny-ImageNet layout), streamed from disk (params: train, test, size, channels, "
                                  "stream)")
def load_image_folder(cfg: DataConfig) -> DataSplits:
    _check_params("image_folder", cfg.params, tuple(_IMAGE_FOLDER_DEFAULTS))
    p = {**_IMAGE_FOLDER_DEFAULTS, **cfg.params}
    if p["channels"] not in (1, 3):
        raise EvoPaiError(f"data.params.channels: must be 1 (grayscale) or 3 (RGB), got {p['channels']!r}")
    size = p["size"]
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2
                                 and all(isinstance(v, int) and v > 0 for v in size)):
        raise EvoPaiError(f"data.params.size: must be [height, width] in pixels, got {size!r}")
    if not isinstance(p["stream"], bool):
        raise EvoPaiError(f"data.params.stream: must be true or false, got {p['stream']!r}")
    root = Path(cfg.root or DEFAULT_ROOT)
    classes, train = image_folder_index(root / p["train"])
    test = image_folder_index(root / p["test"], classes, f"'{root / p['train']}'")[1]
    if size is None:  # every image is read at the first training image's size (resized when it differs)
        size = tuple(ImageFiles(train[:1], p["channels"], None)[0][0].shape[1:])
    size = tuple(size)
    splits = assemble_streamed("image_folder", cfg, ImageFiles(train, p["channels"], size),
                               ImageFiles(test, p["channels"], size), len(classes), (p["channels"], *size))
    return splits if p["stream"] else splits.in_memory()


_SYNTHETIC_DEFAULTS: dict[str, Any] = {"n_train": 1000, "n_test": 500, "dim": 20, "classes": 4, "noise": 1.5}


@register_dataset("synthetic", "Gaussian class clusters generated from split_seed (params: n_train, n_test, dim, classes, noise)")
def load_synthetic(cfg: DataConfig) -> DataSplits:
    _check_params("synthetic", cfg.params, tuple(_SYNTHETIC_DEFAULTS))
    p = {**_SYNTHETIC_DEFAULTS, **cfg.params}
    for key in ("n_train", "n_test", "dim", "classes"):
        if not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < (2 if key != "dim" else 1):
            raise EvoPaiError(f"data.params.{key}: must be an integer >= {2 if key != 'dim' else 1}, got {p[key]!r}")
    if not isinstance(p["noise"], (int, float)) or p["noise"] < 0:
        raise EvoPaiError(f"data.params.noise: must be a number >= 0, got {p['noise']!r}")

    rng = _rng(cfg.split_seed, _STREAM_SYNTHETIC)
    # Unit-variance centres sit about sqrt(2 * dim) apart, so noise 1.5 overlaps the classes a
    # little: learnable quickly, yet not saturated at 100 % accuracy.
    centers = rng.normal(0.0, 1.0, size=(p["classes"], p["dim"]))

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.permutation(np.arange(n) % p["classes"])  # balanced classes
        x = centers[y] + p["noise"] * rng.normal(size=(n, p["dim"]))
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    train_x, train_y = sample(p["n_train"])
    test_x, test_y = sample(p["n_test"])
    return _assemble("synthetic", cfg, train_x, train_y, test_x, test_y, p["classes"])

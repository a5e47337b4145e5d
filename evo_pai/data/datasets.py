"""Datasets as in-memory tensors: registry entries, splitting, standardization.

Every loader returns standardized train/val/test tensors; `load_data` then applies the
optional train/test subsets. Nothing is ever downloaded: missing files raise an
`EvoPaiError` that says where the files were looked for and how to provide them.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evo_pai.core.config import DataConfig
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import DATASET, register_dataset

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
_STREAM_TEST, _STREAM_VAL, _STREAM_TRAIN_SUBSET, _STREAM_TEST_SUBSET, _STREAM_SYNTHETIC = range(5)


@dataclass
class DataSplits:
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]

    @property
    def n_train(self) -> int:
        return int(self.train_y.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "DataSplits":
        """Copy onto `device`; inputs (float tensors) also cast to `dtype` when given."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype) if dtype is not None and t.is_floating_point() else t.to(device)

        moved = {
            f.name: move(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


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


def load_data(cfg: DataConfig) -> DataSplits:
    """Load the dataset named in `cfg` and apply the optional train/test subsets."""
    loader = DATASET.get(cfg.name)
    splits = loader(cfg)
    train_x, train_y = _subset(splits.train_x, splits.train_y, cfg.train_subset, cfg.split_seed, _STREAM_TRAIN_SUBSET)
    test_x, test_y = _subset(splits.test_x, splits.test_y, cfg.test_subset, cfg.split_seed, _STREAM_TEST_SUBSET)
    return dataclasses.replace(splits, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


# ----------------------------------------------------------------------------- file readers

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise EvoPaiError(f"data file '{path}' is a corrupt gzip archive ({exc}): replace the file") from None
    return raw


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    p = Path(path)
    data = _read_bytes(p)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise EvoPaiError(f"data file '{p}' is not an IDX file (bad magic number): replace the file")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise EvoPaiError(f"data file '{p}' is truncated (IDX header incomplete): replace the file")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(dims)) if dims else 1
    if len(data) - header != count * dtype.itemsize:
        raise EvoPaiError(
            f"data file '{p}' has {len(data) - header} data bytes but its header {dims} needs "
            f"{count * dtype.itemsize}: replace the file"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    arr.flags.writeable = False  # cached and shared: callers must copy before changing it
    return arr


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a read-only numpy array; cached per file."""
    p = Path(path).resolve()
    st = p.stat()
    # mtime and size in the key so a replaced file is re-read rather than served stale.
    return _read_idx_cached(str(p), st.st_mtime_ns, st.st_size)


def _find(directory: Path, base: str) -> Path | None:
    for candidate in (directory / f"{base}.gz", directory / base):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_dataset(name: str, cfg: DataConfig, directory: Path, fix: str) -> DataSplits:
    arrays = {}
    for key, base in IDX_FILES.items():
        path = _find(directory, base)
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


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds only what a CIFAR-10 python batch holds: builtin containers, bytes/str, ints, numpy arrays.

    `pickle.load` runs any callable a file names; here every global outside that set is refused
    before it is called, so a crafted batch file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):  # bytes in a protocol-2 pickle written by Python 3
            return _latin1_bytes
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


class _Refused(Exception):
    pass


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode(..., {encoding!r})")
    return text.encode("latin-1")


@functools.lru_cache(maxsize=4)
def _read_cifar_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except _Refused as exc:
        raise EvoPaiError(f"data file '{path}' asks to run {exc}, which no CIFAR-10 batch needs; refused without "
                          "running it: replace the file with the official one") from None
    except Exception as exc:  # any unpickling / key / shape problem means the file is not a CIFAR batch
        raise EvoPaiError(
            f"data file '{path}' is not a CIFAR-10 python batch ({type(exc).__name__}): replace the file"
        ) from None
    if data.shape[0] != labels.shape[0]:
        raise EvoPaiError(f"data file '{path}' has {data.shape[0]} images but {labels.shape[0]} labels: replace the file")
    data.flags.writeable = False
    labels.flags.writeable = False
    return data, labels


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    p = path.resolve()
    st = p.stat()
    return _read_cifar_cached(str(p), st.st_mtime_ns, st.st_size)


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
    directory = tv if _find(root, IDX_FILES["train_x"]) is None and tv.is_dir() else root
    fix = "install it with `apt-get install dataset-fashion-mnist` or set data.root"
    return _load_idx_dataset("fashion_mnist", cfg, directory, fix)


@register_dataset("mnist", "MNIST 28x28 handwritten digits, 10 classes (torchvision files in ROOT/MNIST/raw)")
def load_mnist(cfg: DataConfig) -> DataSplits:
    _check_params("mnist", cfg.params)
    directory = Path(cfg.root or DEFAULT_ROOT) / "MNIST" / "raw"
    return _load_idx_dataset("mnist", cfg, directory, "place the torchvision files there or set data.root")


@register_dataset("cifar10", "CIFAR-10 32x32 colour images, 10 classes (torchvision files in ROOT/cifar-10-batches-py)")
def load_cifar10(cfg: DataConfig) -> DataSplits:
    _check_params("cifar10", cfg.params)
    directory = Path(cfg.root or DEFAULT_ROOT) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = []
    for fname in names:
        path = directory / fname
        if not path.is_file():
            raise EvoPaiError(
                f"dataset cifar10: '{path}' not found: place the torchvision files there or set data.root"
            )
        batches.append(_read_cifar_batch(path))

    def images(arrs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(arrs))  # uint8; standardization does the scaling

    train_x = images([b[0] for b in batches[:5]])
    train_y = torch.from_numpy(np.concatenate([b[1] for b in batches[:5]]))
    test_x = images([batches[5][0]])
    test_y = torch.from_numpy(batches[5][1].copy())
    return _assemble("cifar10", cfg, train_x, train_y, test_x, test_y, 10)


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

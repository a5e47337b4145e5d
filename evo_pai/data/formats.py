"""File formats, read without torchvision (its PyPI wheels do not import beside the pinned CPU torch):
IDX (MNIST, Fashion-MNIST), the torchvision CIFAR-10/100 python batches (through an unpickler that
refuses anything but arrays and containers), and ImageFolder trees (class folders of image files, PIL).
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from evo_pai.core.errors import EvoPaiError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".webp", ".tif", ".tiff")


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


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds only what a CIFAR-10/100 python batch holds: builtin containers, bytes/str, ints, numpy arrays.

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
def _read_cifar_cached(path: str, mtime_ns: int, size: int, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except _Refused as exc:
        raise EvoPaiError(f"data file '{path}' asks to run {exc}, which no CIFAR batch needs; refused without "
                          "running it: replace the file with the official one") from None
    except Exception as exc:  # any unpickling / key / shape problem means the file is not a CIFAR batch
        raise EvoPaiError(
            f"data file '{path}' is not a CIFAR python batch ({type(exc).__name__}): replace the file"
        ) from None
    if data.shape[0] != labels.shape[0]:
        raise EvoPaiError(f"data file '{path}' has {data.shape[0]} images but {labels.shape[0]} labels: replace the file")
    data.flags.writeable = False
    labels.flags.writeable = False
    return data, labels


def read_cifar_batch(path: Path, label_key: bytes = b"labels", cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x 3 x 32 x 32, int64 labels) of one torchvision CIFAR python batch; read-only, cached
    per file unless `cache` is false (a streamed set keeps its own copy: a cached one would be a second).
    `label_key`: b"labels" (CIFAR-10), b"fine_labels" / b"coarse_labels" (CIFAR-100)."""
    p = path.resolve()
    st = p.stat()
    read = _read_cifar_cached if cache else _read_cifar_cached.__wrapped__
    return read(str(p), st.st_mtime_ns, st.st_size, label_key)


def find_idx(directory: Path, base: str) -> Path | None:
    for candidate in (directory / f"{base}.gz", directory / base):
        if candidate.is_file():
            return candidate
    return None


def image_folder_index(directory: Path, classes: list[str] | None = None,
                       train: str = "") -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(file, class index)]) of an ImageFolder tree: one sub-folder per class, sorted by
    name as torchvision's ImageFolder sorts them, files sorted within each class. With the training
    split's `classes`, a test split must have those folders, or be Tiny-ImageNet's val layout
    (`images/` and `val_annotations.txt`: file, class per line)."""
    if not directory.is_dir():
        raise EvoPaiError(f"data.root: image folder '{directory}' not found: put one sub-folder of images per "
                          "class there or set data.root / data.params")
    if classes is not None and (directory / "val_annotations.txt").is_file():
        return classes, _annotated(directory, classes)
    found = sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = [(str(f), i) for i, c in enumerate(found) for f in sorted((directory / c).rglob("*"))
               if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if len(found) < 2 or not samples:
        raise EvoPaiError(f"data.root: image folder '{directory}' has {len(found)} class folder(s) and "
                          f"{len(samples)} image(s); it needs at least 2 class folders of images")
    if classes is not None and found != classes:
        raise EvoPaiError(f"data.params.test: the class folders of '{directory}' ({len(found)}) are not those of "
                          f"{train} ({len(classes)}); use the same class names")
    return found, samples


def _annotated(directory: Path, classes: list[str]) -> list[tuple[str, int]]:
    """Tiny-ImageNet's val split: images/<file> labelled by val_annotations.txt (tab-separated)."""
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for n, line in enumerate((directory / "val_annotations.txt").read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index or not (directory / "images" / parts[0]).is_file():
            raise EvoPaiError(f"data.root: line {n} of '{directory / 'val_annotations.txt'}' names no image of "
                              f"'{directory / 'images'}' with a training class: fix or replace the file")
        samples.append((str(directory / "images" / parts[0]), index[parts[1]]))
    return sorted(samples)


def read_image(path: str, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    """One image file as a uint8 tensor C x H x W (RGB or grayscale), resized to `size` (H, W) when given."""
    from PIL import Image  # Pillow: only when an image dataset is used

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except OSError as exc:
        raise EvoPaiError(f"data file '{path}' is not a readable image ({exc}): replace or remove it") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)

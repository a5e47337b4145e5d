"""Datasets read from disk as training goes: map-style `torch.utils.data.Dataset`s and their loaders.

A streamed dataset's items are `(x, label)` with x a tensor of the input shape (uint8 or float);
batches are standardized on the training device with per-channel statistics of a training sample,
so a uint8 batch crosses to the GPU at a quarter of the float size. The datasets hold file names (and
read files lazily), never the arrays: pickled to a DataLoader worker or rebuilt in a Ray actor from
the config, they read that node's files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from evo_pai.core.errors import EvoPaiError
from evo_pai.data.formats import read_cifar_batch, read_image

STATS_SAMPLE = 2048  # training images whose pixels give the standardization statistics


class CifarBatches(Dataset):
    """The torchvision CIFAR-10/100 python batches as one dataset of uint8 (3, 32, 32) images.

    The batch files are unpickled once per process (here now, which also checks them; again in a loader
    worker started by spawn): random access needs the whole of a batch file, so this saves the float copy
    and the device memory, not the file's bytes. Forked workers share this process's arrays."""

    def __init__(self, files: Sequence[Path], label_key: bytes = b"labels"):
        self.files, self.label_key = [Path(f) for f in files], label_key
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._len = len(self._load()[1])

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            parts = [read_cifar_batch(f, self.label_key, cache=False) for f in self.files]
            self._arrays = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return self._arrays

    def labels(self) -> np.ndarray:
        return self._load()[1]

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self._load()
        return torch.from_numpy(x[i].copy()), int(y[i])

    def __getstate__(self) -> dict:  # a worker re-reads the files rather than receiving the arrays
        return {**self.__dict__, "_arrays": None}


class ImageFiles(Dataset):
    """Image files with class indices (an ImageFolder tree, formats.image_folder_index), decoded per item.

    Paths and labels are held in numpy arrays, not lists of Python objects: a loader worker reading a
    list would touch every object's reference count and so copy the whole list into its own memory
    (ImageNet: over a million paths per worker)."""

    def __init__(self, samples: Sequence[tuple[str, int]], channels: int, size: tuple[int, int] | None):
        self.paths = np.asarray([os.fsencode(f) for f, _ in samples], dtype=np.bytes_)
        self.targets = np.asarray([c for _, c in samples], dtype=np.int64)
        self.channels, self.size = channels, size

    def labels(self) -> np.ndarray:
        return self.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return read_image(os.fsdecode(self.paths[i]), self.channels, self.size), int(self.targets[i])


def channel_stats(dataset: Dataset, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) of up to STATS_SAMPLE items drawn with `seed`, shaped to broadcast over
    an item ((C, 1, 1) for images, (D,) for vectors)."""
    n = len(dataset)
    idx = np.random.default_rng(seed).permutation(n)[:STATS_SAMPLE]
    x = torch.stack([dataset[int(i)][0] for i in np.sort(idx)]).double()
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    std, mean = torch.std_mean(x, dim=dims, keepdim=True)
    return mean[0].float(), std[0].clamp_min(1e-6).float()


def loader(dataset: Dataset, batches: Iterable[Sequence[int]], workers: int,
           device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The given index batches of `dataset`, in order, read by `workers` processes (0: this one).

    The order is the caller's (seeded), so the worker count changes how fast batches come, never which.
    A DataLoader re-raises a worker's error with the worker's traceback in the message; an EvoPaiError
    comes back as its own line."""
    try:
        yield from DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda")
    except EvoPaiError as exc:
        raise EvoPaiError(worker_error(str(exc))) from None


def worker_error(message: str) -> str:
    """The EvoPaiError line inside a DataLoader's re-raised worker message (with the worker's traceback)."""
    prefix = f"{EvoPaiError.__module__}.{EvoPaiError.__qualname__}: "
    lines = [line for line in message.splitlines() if line.startswith(prefix)]
    return lines[-1][len(prefix):] if lines else message


def in_order(n: int, rows: int) -> list[list[int]]:
    """Index batches 0..n-1 in order, `rows` at a time (evaluation, reading a whole split)."""
    return [list(range(i, min(i + rows, n))) for i in range(0, n, rows)]


def read_all(dataset: Dataset, stats: tuple[torch.Tensor, torch.Tensor] | None,
             rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of `dataset` as (x, y) tensors on CPU, standardized as the streamed batches are."""
    parts = [on_device(x, y, stats, torch.device("cpu"), torch.float32)
             for x, y in loader(dataset, in_order(len(dataset), rows), 0, torch.device("cpu"))]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]).long()


def on_device(x: torch.Tensor, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None,
              device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A loaded batch on the training device in `dtype`, standardized there when `stats` are given
    (in place: `x` is a batch the loader just made, and the copy would double a chunk's memory)."""
    x = x.to(device, non_blocking=True).to(dtype)
    if stats is not None:
        mean, std = stats
        x = x.sub_(mean.to(device, dtype)).div_(std.to(device, dtype))
    return x, y.to(device, non_blocking=True)

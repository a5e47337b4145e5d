"""Bad data refused before a run: non-finite inputs, labels that are not class indices, empty splits.

Each split is read once, in chunks of at most `CHUNK_BYTES` of inputs: tensors where they lie, a streamed
set through its loader (`data.workers`). Integer inputs (uint8 images) cannot hold NaN or ±inf, so only
their labels are read — from the dataset's `labels()` when it has one (the built-in streamed sets), with
no pass over the items (one probe item per split tells their dtype). What is wrong is described by `split_problem` / `streamed_problem` as the
rest of one line: the first bad index, what is there, and the fix; the caller names the split's source.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from evo_pai.core.errors import EvoPaiError
from evo_pai.data.datasets import DataSplits
from evo_pai.data.streaming import in_order, loader

CHUNK_BYTES = 32 * 2**20  # as data.batches.eval_batches: a chunk's temporaries stay small
INPUT_FIX = "drop or repair those examples (torch.isfinite(x).flatten(1).all(1) marks the good ones)"


def _rows(x: torch.Tensor) -> int:
    per_row = max(1, math.prod(x.shape[1:]) * x.element_size())
    return max(1, CHUNK_BYTES // per_row)


def first_nonfinite(x: torch.Tensor) -> tuple[int, float] | None:
    """(index, value) of the first example of `x` holding NaN or ±inf, or None; integer inputs never do.
    One reduction per chunk (min and max: NaN propagates, ±inf shows in one of them); rows only on a hit."""
    if not x.is_floating_point() or x.numel() == 0:
        return None
    rows = _rows(x)
    for start in range(0, x.shape[0], rows):
        chunk = x[start:start + rows]
        lo, hi = torch.aminmax(chunk)
        if math.isfinite(float(lo)) and math.isfinite(float(hi)):
            continue
        flat = chunk.reshape(chunk.shape[0], -1)
        row = int((~torch.isfinite(flat)).any(1).nonzero()[0])
        return start + row, float(flat[row][~torch.isfinite(flat[row])][0])
    return None


def bad_label(y: torch.Tensor, num_classes: int) -> tuple[int, str] | None:
    """(index, what is there) of the first label that is not a class index in [0, num_classes), or None."""
    if y.numel() == 0:
        return None
    if y.is_floating_point():
        odd = (~torch.isfinite(y) | (y != y.round())).nonzero()
        return (int(odd[0]), f"{float(y[int(odd[0])])!r}, not a whole number") if len(odd) else (0, f"of dtype {y.dtype}")
    if y.is_complex() or y.dtype == torch.bool:
        return 0, f"of dtype {y.dtype}"
    hits = ((y < 0) | (y >= num_classes)).nonzero()
    return (int(hits[0]), f"{int(y[int(hits[0])])}, outside the classes 0..{num_classes - 1}") if len(hits) else None


def label_line(index: int, what: str, classes_fix: str, origin: str = "") -> str:
    fix = classes_fix if "outside" in what else "labels are integer class indices: pass y.long()"
    return f"label at index {index}{origin} is {what}; {fix}"


def input_line(index: int, value: float, origin: str = "") -> str:
    return f"inputs hold {value} at index {index}{origin}; {INPUT_FIX}"


EMPTY = "empty (0 examples); every split needs examples"
CLASSES_FIX = "relabel the data or raise the dataset's num_classes"


def split_problem(x: torch.Tensor, y: torch.Tensor, num_classes: int, classes_fix: str = CLASSES_FIX) -> str | None:
    """What is wrong with one in-memory split (None: nothing), as the rest of a line that names it."""
    if y.shape[0] == 0 or x.shape[0] == 0:
        return EMPTY
    hit = first_nonfinite(x)
    if hit is not None:
        return input_line(*hit)
    label = bad_label(y, num_classes)
    return None if label is None else label_line(*label, classes_fix)


def source_index(ds: Dataset, i: int) -> tuple[Dataset, int]:
    """The dataset a (nested) Subset draws from, and which of its items index `i` is."""
    while isinstance(ds, Subset):
        ds, i = ds.dataset, int(ds.indices[i])
    return ds, i


def known_labels(ds: Dataset) -> np.ndarray | None:
    """Every label of a streamed set without reading its items: its `labels()` (through Subsets), or None."""
    picks = None
    while isinstance(ds, Subset):
        idx = np.asarray(ds.indices)
        picks, ds = idx if picks is None else idx[picks], ds.dataset
    labels = getattr(ds, "labels", None)
    if not callable(labels):
        return None
    values = np.asarray(labels())
    return values if picks is None else values[picks]


def streamed_problem(ds: Dataset, num_classes: int, workers: int = 0) -> str | None:
    """What is wrong with one streamed split (None: nothing), read at most once, in chunks."""
    n = len(ds)
    if n == 0:
        return EMPTY

    def origin(i: int) -> str:
        _, j = source_index(ds, i)
        return "" if j == i else f" (item {j} of the dataset it is drawn from)"

    labels = known_labels(ds)
    if labels is not None:
        label = bad_label(torch.from_numpy(labels), num_classes)
        if label is not None:
            return label_line(*label, CLASSES_FIX, origin(label[0]))
    x0 = torch.as_tensor(ds[0][0])
    if labels is not None and not x0.is_floating_point():
        return None  # integer inputs are finite: nothing left to read
    rows, start = _rows(x0.unsqueeze(0)), 0
    for x, y in loader(ds, in_order(n, rows), workers, torch.device("cpu")):
        hit = first_nonfinite(x)
        if hit is not None:
            return input_line(start + hit[0], hit[1], origin(start + hit[0]))
        label = None if labels is not None else bad_label(torch.as_tensor(y), num_classes)
        if label is not None:
            return label_line(start + label[0], label[1], CLASSES_FIX, origin(start + label[0]))
        start += len(y)
    return None


def check_data(name: str, data: DataSplits, workers: int = 0) -> None:
    """A registered dataset's splits as loaded (runs/preflight.py, before any folder exists): one line
    naming the dataset, the split, the first bad index and the fix."""
    for split in ("train", "val", "test"):
        if data.streamed:
            problem = streamed_problem(getattr(data, f"{split}_set"), data.num_classes, workers)
        else:
            problem = split_problem(getattr(data, f"{split}_x"), getattr(data, f"{split}_y"), data.num_classes)
        if problem:
            raise EvoPaiError(f"data.name: dataset '{name}', {split} split: {problem}")

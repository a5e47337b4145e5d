"""A user's own data as the dataset of a run (`evo_pai.search(model, train, val=, test=)`).

Each split may be an `(x, y)` pair of tensors, a map-style `torch.utils.data.Dataset` of `(x, y)`
items, or a `DataLoader`. Everything becomes the in-memory tensors the trainer uses: a Dataset's
items are read once and stacked (a random transform in `__getitem__` is therefore drawn once, not
per epoch); of a DataLoader only its dataset and batch size are used — its sampler / shuffle,
num_workers, collate_fn and drop_last are not (evo-pai draws every batch from its own seeded
generator, the same on every backend). Inputs are used as given, never standardized: the pruned
module then scores the user's data exactly as the run measured it.

Without `val`, a seeded split of `train` (`data.val_fraction`, `data.split_seed`) is the validation
data; without `test`, the validation data stands in for it and the summary says so.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from evo_pai.core.config import DataConfig
from evo_pai.core.errors import EvoPaiError, brief
from evo_pai.core.registry import DATASET
from evo_pai.data.checks import EMPTY, bad_label, first_nonfinite, input_line, label_line
from evo_pai.data.datasets import DataSplits, split_validation

PREFIX = "python:"  # the names of a model and data handed to evo_pai.search(): registered in-process only
LOADER_IGNORES = "sampler/shuffle, num_workers, collate_fn and drop_last"


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha1 of names, shapes, dtypes and bytes: the same tensors, the same string."""
    h = hashlib.sha1()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor
    kind: str  # tensors | Dataset | DataLoader
    batch_size: int | None = None  # a DataLoader's
    notes: list[str] = field(default_factory=list)


def _stack(name: str, items: list, what: str) -> torch.Tensor:
    try:
        return torch.stack([torch.as_tensor(v) for v in items])
    except Exception as exc:
        raise EvoPaiError(f"{name}: the {what} of its items cannot be stacked into one tensor ({brief(exc)}); "
                          "give every item the same shape") from None


def _from_dataset(name: str, ds) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(ds, IterableDataset) or not hasattr(ds, "__len__"):
        raise EvoPaiError(f"{name}: an iterable dataset has no length to split and draw batches from; pass a map-style "
                          "Dataset (with __len__ and __getitem__) or an (x, y) pair of tensors")
    items = [ds[i] for i in range(len(ds))]
    if not items or not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
        raise EvoPaiError(f"{name}: a Dataset must hold (input, label) pairs; got {len(items)} items"
                          + (f", the first a {type(items[0]).__name__}" if items else "") + ": return (x, y) from __getitem__")
    return _stack(name, [it[0] for it in items], "inputs"), _stack(name, [it[1] for it in items], "labels")


def to_split(name: str, obj) -> Split:
    """One split as tensors, with what of a DataLoader was used and what was not."""
    if isinstance(obj, DataLoader):
        x, y = _from_dataset(name, obj.dataset)
        used = f"its dataset and batch_size ({obj.batch_size}) are" if name == "train" else "its dataset is"
        ignored = LOADER_IGNORES if name == "train" else f"batch_size, {LOADER_IGNORES}"
        note = f"{name}: a DataLoader: {used} used; its {ignored} are not (evo-pai draws seeded batches itself)"
        split = Split(x, y, "DataLoader", obj.batch_size if name == "train" else None, [note])
    elif isinstance(obj, Dataset):
        split = Split(*_from_dataset(name, obj), "Dataset")
    elif isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        split = Split(obj[0], obj[1], "tensors")
    else:
        raise EvoPaiError(f"{name}: expected an (x, y) pair of tensors, a map-style torch Dataset or a DataLoader, got "
                          f"{type(obj).__name__}")
    split.x, split.y = split.x.detach().cpu(), split.y.detach().cpu()
    if split.y.dim() != 1 or split.y.is_floating_point() or split.y.is_complex() or split.y.dtype == torch.bool:
        raise EvoPaiError(f"{name}: labels must be one integer class index per example (shape (N,)), got "
                          f"{split.y.dtype} of shape {tuple(split.y.shape)}")
    if split.x.shape[0] == 0 or split.y.shape[0] == 0:
        raise EvoPaiError(f"{name}: {EMPTY} (at least 2)")
    if split.x.shape[0] != split.y.shape[0] or split.y.shape[0] < 2:
        raise EvoPaiError(f"{name}: {split.x.shape[0]} inputs and {split.y.shape[0]} labels; give as many labels as "
                          "inputs (at least 2)")
    hit = first_nonfinite(split.x)  # once, in chunks (data/checks.py): NaN or ±inf would train to nonsense
    if hit is not None:
        raise EvoPaiError(f"{name}: {input_line(*hit)}")
    split.y = split.y.long()
    return split


@dataclass
class UserData:
    """The dataset loader registered for a user's splits (picklable: a Ray actor receives it)."""

    train: Split
    val: Split | None
    test: Split | None
    num_classes: int

    def __call__(self, cfg: DataConfig) -> DataSplits:
        if self.val is not None:
            tx, ty, vx, vy = self.train.x, self.train.y, self.val.x, self.val.y
        else:
            tx, ty, vx, vy = split_validation(self.train.x, self.train.y, cfg.val_fraction, cfg.split_seed)
        test = self.test if self.test is not None else Split(vx, vy, "validation")
        return DataSplits(name=cfg.name, num_classes=self.num_classes, input_shape=tuple(tx.shape[1:]),
                          train_x=tx.contiguous(), train_y=ty, val_x=vx.contiguous(), val_y=vy,
                          test_x=test.x.contiguous(), test_y=test.y)


def read_splits(train, val=None, test=None) -> tuple[Split, Split | None, Split | None]:
    splits = to_split("train", train), None if val is None else to_split("val", val), None if test is None else to_split("test", test)
    shape = tuple(splits[0].x.shape[1:])
    for name, s in zip(("val", "test"), splits[1:]):
        if s is not None and tuple(s.x.shape[1:]) != shape:
            raise EvoPaiError(f"{name}: inputs of shape {tuple(s.x.shape[1:])} but train's are {shape}; give every split "
                              "the same input shape")
    return splits


def register_user_data(splits: tuple[Split, Split | None, Split | None], num_classes: int) -> dict:
    """Register the splits for this process; returns the config's `data` section (name + fingerprint)."""
    train, val, test = splits
    top = max(int(s.y.max()) for s in splits if s is not None)
    for split_name, s in zip(("train", "val", "test"), splits):
        label = None if s is None else bad_label(s.y, num_classes)
        if label is not None:
            fix = (f"the model outputs {num_classes} classes: give it {top + 1} outputs or relabel the data" if top >= num_classes
                   else "labels are class indices >= 0: relabel the data")
            raise EvoPaiError(f"{split_name}: {label_line(*label, fix)}")
    name = f"{PREFIX}{train.kind}"
    DATASET.register(name, f"{train.kind} handed to evo_pai.search()")(UserData(train, val, test, num_classes))
    tensors = {f"{n}.{k}": getattr(s, k) for n, s in zip(("train", "val", "test"), splits) if s is not None for k in "xy"}
    return {"name": name, "params": {"fingerprint": fingerprint(tensors), "val": val is not None,
                                     "test": test is not None}}

"""Loader workers that stay: one DataLoader for a run's streamed splits, its processes started once.

Building a DataLoader per pass started `data.workers` processes for every training pass and every
evaluation of every burst (fork, then each worker's first batch): on short bursts most of the epoch.
Here a run's three splits are one dataset addressed by (split, index) and read by one DataLoader with
`persistent_workers`; its batch sampler is a feed that the caller fills before each pass with its own
seeded index batches. The workers only read what they are told, in that order, so batch order and
augmentation stay functions of each model's seed and lineage step (data/batches.py) whatever the worker
count and however many bursts the workers have served; the loader has its own generator, so it draws
nothing from torch's global one.

A loader is shared by every `DataSplits` holding the same split datasets (the copies `.to(device)` makes)
and shut down when the last of them is garbage-collected, or by `close_all()`. With `data.workers: 0`
batches are read in the training process (data/streaming.loader), where there is nothing to keep.
"""
from __future__ import annotations

import weakref
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from evo_pai.core.errors import EvoPaiError
from evo_pai.data.streaming import worker_error, loader


class _Splits(Dataset):
    """The run's split datasets as one, items addressed (split, index)."""

    def __init__(self, sets: Sequence[Dataset]):
        self.sets = tuple(sets)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sets)

    def __getitem__(self, key: tuple[int, int]):
        split, i = key
        return self.sets[split][i]


class _Feed:
    """A batch sampler whose batches are set before each pass."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class RunLoader:
    """One DataLoader with persistent workers over the splits; `read` is one pass over given batches."""

    def __init__(self, sets: Sequence[Dataset], workers: int, pin: bool):
        self.sets, self.workers, self.pin = tuple(sets), workers, pin
        self.feed = _Feed()
        self.loader = DataLoader(_Splits(self.sets), batch_sampler=self.feed, num_workers=workers, pin_memory=pin,
                                 persistent_workers=True, generator=torch.Generator().manual_seed(0))
        self.busy = False
        self.users: set[int] = set()

    def read(self, dataset: Dataset, batches: Sequence[Sequence[int]],
             device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.busy:  # a pass inside another pass (no trainer makes one): a loader of its own
            yield from loader(dataset, batches, self.workers, device)
            return
        split = next(i for i, s in enumerate(self.sets) if s is dataset)
        self.feed.batches = [[(split, int(i)) for i in b] for b in batches]
        self.busy = True
        try:
            yield from self.loader
        except EvoPaiError as exc:
            raise EvoPaiError(worker_error(str(exc))) from None
        finally:
            self.busy, self.feed.batches = False, []

    def started(self) -> bool:
        return self.loader._iterator is not None

    def close(self) -> None:
        it, self.loader._iterator = self.loader._iterator, None
        if it is not None:
            it._shutdown_workers()


_OPEN: dict[tuple, RunLoader] = {}


def run_loader(data, workers: int, device: torch.device) -> RunLoader:
    """The loader of `data`'s streamed splits (a DataSplits) with `workers` processes, made on first use."""
    pin = device.type == "cuda"
    sets = (data.train_set, data.val_set, data.test_set)
    key = (*map(id, sets), workers, pin)
    run = _OPEN.get(key)
    if run is None:
        run = _OPEN[key] = RunLoader(sets, workers, pin)
    if id(data) not in run.users:
        run.users.add(id(data))
        weakref.finalize(data, _release, key, id(data))
    return run


def _release(key: tuple, user: int) -> None:
    run = _OPEN.get(key)
    if run is not None:
        run.users.discard(user)
        if not run.users:
            _OPEN.pop(key).close()


def close_all() -> None:
    """Shut every run loader's workers down (the next pass starts new ones)."""
    while _OPEN:
        _OPEN.popitem()[1].close()


def stream(data, dataset: Dataset, batches: Sequence[Sequence[int]], workers: int,
           device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`dataset` (one of data's splits) read in the given index batches: through the run's loader with
    `workers` > 0, in this process otherwise."""
    if workers == 0:
        return loader(dataset, batches, 0, device)
    return run_loader(data, workers, device).read(dataset, batches, device)

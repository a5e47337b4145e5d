"""The one source of training and evaluation batches, for one model (`train_masked`) or K at once
(the vectorized trainer): in-memory tensors or a streamed dataset, augmentation on the device.

Which examples a model sees at a step depends only on its seed and the lineage's step (a fresh
permutation per epoch from `torch.Generator(seed)`), and so does its augmentation: every backend
draws the same batches, and a continued lineage draws what the uninterrupted one would have drawn.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from evo_pai.core.config import AugmentConfig
from evo_pai.data import augment
from evo_pai.data.datasets import DataSplits
from evo_pai.data.loaders import stream
from evo_pai.data.streaming import in_order, on_device


def batch_order(n: int, steps: int, batch_size: int, generator: torch.Generator, skip: int = 0) -> list[torch.Tensor]:
    """Index batches for `steps` steps after the first `skip` of the stream: a fresh permutation per
    epoch, last partial batch kept. Skipping lets a continued run take the batches its lineage
    would have taken next (a 2-epoch run = 1 epoch + 1 more with skip = one epoch's steps)."""
    batches: list[torch.Tensor] = []
    while len(batches) < skip + steps:
        perm = torch.randperm(n, generator=generator)
        batches.extend(perm.split(batch_size))
    return batches[skip : skip + steps]


def batches_on(batches: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Per-step tensors on `device` in one host-to-device copy: a copy per step would make the host
    wait for the GPU at every step."""
    if device.type == "cpu":
        return batches
    return list(torch.cat(batches).to(device).split([len(b) for b in batches]))


class TrainBatches:
    """The `steps` training batches of models with `seeds`, after `offset` steps of their lineage.

    Iterating yields, per step, x of shape (K, B, *input shape) on `device` in `dtype` (model k's
    batch in row k, augmented) and the K·B labels, model after model."""

    def __init__(self, data: DataSplits, batch_size: int, seeds: Sequence[int], steps: int, offset: int,
                 device: torch.device, dtype: torch.dtype, aug: AugmentConfig = AugmentConfig(), workers: int = 0):
        self.data, self.k, self.device, self.dtype, self.workers = data, len(seeds), device, dtype, workers
        orders = [batch_order(data.n_train, steps, batch_size, torch.Generator().manual_seed(s), skip=offset)
                  for s in seeds]
        self.indices = [torch.cat([o[step] for o in orders]) for step in range(steps)]
        self.padding = aug.crop_padding
        self.aug = None
        if augment.active(aug):  # every step's draws made now and copied to the device once, like the indices
            self.aug = batches_on([torch.cat([augment.draw(aug, len(o[step]), s, offset + step)
                                              for o, s in zip(orders, seeds)]) for step in range(steps)], device)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data, k = self.data, self.k
        if data.streamed:
            batches = (on_device(x, y, data.stats, self.device, self.dtype) for x, y in
                       stream(data, data.train_set, [i.tolist() for i in self.indices], self.workers, self.device))
        else:  # index_select: the same rows as train_x[idx], gathered ~5x faster than advanced indexing
            batches = ((torch.index_select(data.train_x, 0, idx), data.train_y[idx])
                       for idx in batches_on(self.indices, self.device))
        for step, (x, y) in enumerate(batches):
            if self.aug is not None:
                x = augment.apply(x, self.aug[step], self.padding)
            yield x.view(k, x.shape[0] // k, *x.shape[1:]), y


EVAL_BYTES = 32 * 2**20  # inputs of one evaluation chunk at most: 224x224 RGB images come 55 at a time


def eval_batches(data: DataSplits, split: str, rows: int, device: torch.device, dtype: torch.dtype,
                 workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The `split` ("val" or "test") in order, `rows` examples at a time (fewer when their inputs would
    take over EVAL_BYTES: a streamed chunk is read, converted and standardized in memory), never augmented.
    The chunking depends on the input shape only, so streamed and in-memory data sum the same chunks."""
    rows = max(1, min(rows, EVAL_BYTES // (math.prod(data.input_shape) * dtype.itemsize)))
    if data.streamed:
        dataset = getattr(data, f"{split}_set")
        for x, y in stream(data, dataset, in_order(len(dataset), rows), workers, device):
            yield on_device(x, y, data.stats, device, dtype)
        return
    x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
    for i in range(0, len(x), rows):
        yield x[i : i + rows], y[i : i + rows]


def examples(data: DataSplits, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training examples `idx` (e.g. the sample a pruning score is computed on), standardized, on CPU
    for a streamed dataset, where the tensors are otherwise."""
    if not data.streamed:
        return data.train_x[idx], data.train_y[idx]
    items = [data.train_set[int(i)] for i in idx]
    x, y = torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
    return on_device(x, y, data.stats, torch.device("cpu"), torch.float32)

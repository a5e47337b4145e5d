"""Test plugin (`plugins: [bad_data_plugin]`): registered datasets holding one flaw each, as a user's loader
might return them — what tests/test_bad_data.py expects to be refused before any run folder exists.

params: split (train | val | test), index, and one of value ("nan", "inf", "-inf": into that example's
inputs), label (that example's label), empty (true: the split has no examples), float_labels (labels as
float32). `flawed_stream` streams float items (map-style Datasets through `assemble_streamed`) with a
non-finite value in item `index` of its training set."""
from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import Dataset

from evo_pai import register_dataset
from evo_pai.data.datasets import assemble_streamed, load_synthetic

SYNTHETIC = {"n_train": 300, "n_test": 100, "dim": 12, "classes": 3}


def _synthetic(cfg, **params):
    return load_synthetic(cfg.model_copy(update={"name": "synthetic", "params": {**SYNTHETIC, **params}}))


@register_dataset("flawed_synthetic", "synthetic data with one flaw (params: split, index, value, label, empty)")
def flawed_synthetic(cfg):
    p = cfg.params
    data = _synthetic(cfg)
    x, y = getattr(data, f"{p['split']}_x").clone(), getattr(data, f"{p['split']}_y").clone()
    if "value" in p:
        x[p["index"], 1] = float(p["value"])
    if "label" in p:
        y[p["index"]] = p["label"]
    if p.get("float_labels"):
        y = y.float()
    if p.get("empty"):
        x, y = x[:0], y[:0]
    return dataclasses.replace(data, **{f"{p['split']}_x": x, f"{p['split']}_y": y})


class FloatItems(Dataset):
    """float32 vectors and int labels, read item by item (no `labels()`: the check reads the items)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i].clone(), int(self.y[i])


@register_dataset("flawed_stream", "synthetic float items streamed from Datasets (params: index, value)")
def flawed_stream(cfg):
    data = _synthetic(cfg)
    train_x = torch.cat([data.train_x, data.val_x])
    train_y = torch.cat([data.train_y, data.val_y])
    if "value" in cfg.params:
        train_x[cfg.params["index"], 0] = float(cfg.params["value"])
    return assemble_streamed("flawed_stream", cfg, FloatItems(train_x, train_y), FloatItems(data.test_x, data.test_y),
                             data.num_classes, data.input_shape, standardize=False)

"""Search-cost accounting: model-epochs and training FLOPs a search spent.

Training FLOPs per example ≈ 3 × forward FLOPs (forward + backward ≈ 2 × forward), times the
examples seen (epochs × training-set size). `dense_equivalent` prices every example at the
dense network's forward cost: exact for what was run. `sparse` prices each task at its own
mask's forward cost — tracked per task by the evaluator (kept weights × epochs per layer), so
masks whose density changes during a search (DG, gmp, IMP, combined) are priced as they were.
Neither counts validation forward passes, pruner scoring batches or the dense backward pass
that masked training really does on CPU/GPU (masks save no time by themselves).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from evo_pai.models.networks import count_flops


def flops_per_weight(model: nn.Module, input_shape: Sequence[int], names: Sequence[str]) -> dict[str, int]:
    """Forward FLOPs one kept weight of each layer costs per example (2 × output positions)."""
    params = dict(model.named_parameters())
    dense = count_flops(model, input_shape)["dense"]
    out = {}
    for k in names:
        without = count_flops(model, input_shape, {k: torch.zeros_like(params[k], dtype=torch.bool)})["sparse"]
        out[k] = (dense - without) // max(1, params[k].numel())
    return out


def search_flops(model: nn.Module, input_shape: Sequence[int], n_train: int, epochs: float,
                 kept_epochs: Mapping[str, float]) -> dict[str, float]:
    dense_fwd = count_flops(model, input_shape)["dense"]
    per_weight = flops_per_weight(model, input_shape, list(kept_epochs))
    sparse_fwd_epochs = sum(per_weight[k] * v for k, v in kept_epochs.items())
    # Layers not masked by any task (none in practice) are priced dense in both numbers.
    unmasked = dense_fwd - sum(per_weight[k] * p.numel() for k, p in model.named_parameters() if k in per_weight)
    return {
        "dense_equivalent": 3.0 * dense_fwd * n_train * epochs,
        "sparse": 3.0 * n_train * (sparse_fwd_epochs + unmasked * epochs),
    }

"""What a trained network hands to the next training run of its lineage: weights, optimizer state
and the number of steps taken (where the batch stream and the learning-rate schedule continue).

A child under weight inheritance starts from its parent's `Carry` under its own (mutated) mask;
the trainer zeroes the weights and optimizer state of every masked weight, so a newly pruned
weight is exactly 0 and a regrown one starts at 0 (it was pruned, hence 0, in the parent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from evo_pai.training.optim import OptState


@dataclass(frozen=True)
class Carry:
    weights: dict[str, torch.Tensor]  # a full state_dict, on CPU
    opt_state: OptState | None  # by parameter name; None = a fresh optimizer
    steps: int  # optimizer steps the lineage has taken


def module_of(name: str) -> str:
    return name.rpartition(".")[0]


def compose(parts: Mapping[str, Carry]) -> Carry:
    """A crossover child's carry: each prunable layer's weights and optimizer state come from the
    parent whose mask layer the child took (`parts`: mask layer -> that parent's carry); the other
    parameters of the same module (its bias) come along; parameters of no prunable module come
    from the first parent. Steps: the first parent's (in a generational loop all are equal)."""
    first = next(iter(parts.values()))
    by_module = {module_of(layer): carry for layer, carry in parts.items()}
    weights = {n: by_module.get(module_of(n), first).weights[n] for n in first.weights}
    opt = None
    if all(c.opt_state is not None for c in parts.values()):
        opt = {}
        for n in first.opt_state:
            src = by_module.get(module_of(n), first).opt_state
            if n in src:
                opt[n] = src[n]
    return Carry(weights, opt, first.steps)

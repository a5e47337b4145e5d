"""DEAP individuals: a mask, a fitness, and the traits of the last training burst.

Defined at module level (not through `deap.creator`) so they pickle into Ray workers and
checkpoints without any runtime class creation.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from deap import base

from evo_pai.core.masks import MaskSet


class Fitness(base.Fitness):
    """Single-objective, maximised. Non-finite values become WORST (see fitness.py)."""

    weights = (1.0,)


class ParetoFitness2(base.Fitness):
    """Two objectives for NSGA-II: a fitness (maximised) and a cost (minimised)."""

    weights = (1.0, -1.0)


class ParetoFitness3(base.Fitness):
    """Three objectives: a fitness (maximised) and two costs (minimised), e.g. kept weights and latency."""

    weights = (1.0, -1.0, -1.0)


FITNESS_CLASSES = {1: Fitness, 2: ParetoFitness2, 3: ParetoFitness3}


class Individual:
    """A candidate mask. `traits` maps trait name -> layer -> tensor (e.g. rel_change, grad_accum)."""

    def __init__(self, mask: MaskSet, traits: dict[str, dict[str, torch.Tensor]] | None = None, objectives: int = 1):
        self.mask = mask
        self.fitness = FITNESS_CLASSES[objectives]()
        self.traits = traits
        self.metrics: dict[str, Any] = {}
        self.origin = "init"  # how it was made: init, elite, crossover, mutation
        # Weight inheritance (search.inherit: parent): the trained state a child starts from, a
        # `training.carry.Carry` (weights, optimizer state, steps); None = θ0 and a fresh optimizer.
        self.carry: Any = None
        # Hyperparameter genes (independent / pbt lineages): name -> value; None = the recipe's
        self.hparams: dict[str, float] | None = None

    @property
    def objectives(self) -> int:
        return len(self.fitness.weights)

    @property
    def key(self) -> str:
        return self.mask.hash()

    def clone(self) -> "Individual":
        """Copy with shared (read-only) tensors; operators build new masks, never edit in place."""
        other = Individual(self.mask, self.traits, self.objectives)
        other.fitness.values = self.fitness.values if self.fitness.valid else ()
        other.metrics = dict(self.metrics)
        other.origin = self.origin
        other.carry = self.carry
        other.hparams = None if self.hparams is None else dict(self.hparams)
        return other

    def __repr__(self) -> str:
        fit = f"{self.fitness.values[0]:.4f}" if self.fitness.valid else "?"
        return f"Individual(sparsity={self.mask.sparsity():.4f}, fitness={fit}, key={self.key[:8]})"


def derive_seed(search_seed: int, *parts: Any) -> int:
    """Seed for one task from the search seed and the task's identity (never the worker)."""
    h = hashlib.sha256(repr((search_seed,) + parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF

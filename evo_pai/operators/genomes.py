"""Genomes beyond a bit mask: the layer-budget gene, and its mutation and crossover.

Pruning at initialisation mostly decides *per-layer ratios* (Frankle et al., ICLR 2021): shuffling
a mask inside each layer keeps its accuracy. The layer-budget gene is an individual's per-layer
densities — held exactly by its mask's per-layer counts, so it needs no storage of its own and
survives checkpoints, Ray and the cache as the mask does. It is read as a deviation from the
reference budget (`masks.budget` at the mask's own sparsity: ERK by default), so a gene found at
60 % means the same tilt at 98 %.

`layer_budget` (mutation): deviation x exp(sigma * N(0, 1)) per layer, re-applied to the reference
budget at the step's sparsity and renormalised so the total hits it exactly (no layer emptied,
every class keeps `masks.min_output_fan_in` inputs); the mask inside each layer then follows the
scores of the last burst: the `score` kept weights with the highest score stay, and a layer that
grows regrows the pruned weights of largest accumulated |g| (regrown weights start at 0 under
inheritance, at θ0 under rewind). `budget_blend` (crossover): each child keeps one parent's mask,
traits and trained state and takes a geometric blend of both parents' budgets.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from evo_pai.core.budgets import fit_counts, layer_counts, total_keep
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet, _ensure_fan_in, _topk_mask
from evo_pai.operators.variation import PruneStep
from evo_pai.core.registry import register_crossover, register_mutation

SCORES = {
    "magnitude": lambda t, k: t["weight"][k].abs(),  # |w_t| after the burst
    "gradient": lambda t, k: t["grad_accum"][k],  # accumulated |g|
    "movement": lambda t, k: t["rel_change"][k],  # |w_t - w0| / |w0|: keep the weights that moved most
}


def floors(mask: MaskSet, step: PruneStep) -> dict[str, int]:
    """Fewest weights a layer may keep: one (unless empty layers are allowed); the classifier one
    per class times `min_output_fan_in`, so every class keeps an input."""
    low = {k: step.min_keep for k in mask}
    out = mask.output_layer
    if out and step.min_output_fan_in > 0:
        rows, fan_in = mask[out].shape[0], mask[out][0].numel()
        low[out] = max(low[out], rows * min(step.min_output_fan_in, fan_in))
    return low


def reference_density(mask: MaskSet, sparsity: float, budget: str) -> dict[str, float]:
    shapes, sizes = mask.shapes(), mask.sizes()
    ref = layer_counts(shapes, sparsity, budget, 1)
    if ref is None:  # global budget: no reference split; the gene is the density itself
        return {k: 1.0 for k in mask}
    return {k: ref[k] / sizes[k] for k in mask}


def budget_counts(mask: MaskSet, deviation: Mapping[str, float], sparsity: float, step: PruneStep) -> dict[str, int]:
    """Counts at `sparsity`: the reference budget there, tilted by `deviation`, total exact."""
    ref = reference_density(mask, sparsity, step.budget)
    sizes = mask.sizes()
    return fit_counts({k: ref[k] * deviation[k] for k in mask}, sizes, total_keep(mask.shapes(), sparsity),
                      floors(mask, step))


def deviation_of(mask: MaskSet, budget: str) -> dict[str, float]:
    """The gene: each layer's density relative to the reference budget at the mask's own sparsity."""
    ref = reference_density(mask, mask.sparsity(), budget)
    counts, sizes = mask.counts(), mask.sizes()
    return {k: max(counts[k], 1) / sizes[k] / ref[k] for k in mask}


def realise(ind: Individual, counts: Mapping[str, int], score: str, step: PruneStep) -> MaskSet:
    """The mask with exactly `counts` per layer: the best-scored kept weights stay; a layer that
    grows adds the pruned weights with the largest accumulated gradient."""
    if score not in SCORES:
        raise EvoPaiError(f"search.mutation_params.score: must be one of {sorted(SCORES)}, got {score!r}")
    traits, out = ind.traits, {}
    for k, m in ind.mask.items():
        kept = int(m.sum())
        if counts[k] <= kept:
            s = SCORES[score](traits, k).to(torch.float64).masked_fill(~m, -math.inf)
        else:  # every kept weight stays; the growth goes by gradient among the pruned ones
            s = traits["grad_accum"][k].to(torch.float64).masked_fill(m, math.inf)
        out[k] = _topk_mask(s, counts[k], ind.mask.pattern)  # an N:M pattern caps what a layer can keep
    mask = MaskSet(out, ind.mask.output_layer, ind.mask.pattern)
    o = mask.output_layer
    if o and step.min_output_fan_in > 0:
        fan = _ensure_fan_in(mask[o], traits["grad_accum"][o] + SCORES[score](traits, o), step.min_output_fan_in,
                             mask.pattern)
        mask = mask.with_layers({o: fan})
    return mask


@register_mutation("layer_budget", "evolve per-layer densities: log-normal tilt of the budget, total exact; "
                                   "mask by score inside each layer (params: sigma, score)")
def layer_budget(ind: Individual, step: PruneStep, generator: torch.Generator, sigma: float = 0.2,
                 score: str = "magnitude") -> MaskSet:
    if sigma < 0:
        raise EvoPaiError(f"search.mutation_params.sigma: must be >= 0, got {sigma}")
    sparsity = step.target if step.final else max(step.sparsity, ind.mask.sparsity())
    dev = deviation_of(ind.mask, step.budget)
    noise = torch.randn(len(dev), generator=generator, dtype=torch.float64).tolist()
    dev = {k: d * math.exp(sigma * z) for (k, d), z in zip(dev.items(), noise)}
    return realise(ind, budget_counts(ind.mask, dev, sparsity, step), score, step)


@register_crossover("budget_blend", "children keep one parent's mask and state each, with a geometric blend "
                                    "of both parents' layer budgets")
def budget_blend(a: Individual, b: Individual, generator: torch.Generator) -> tuple[Individual, Individual]:
    total = sum(a.mask.counts().values())
    # Both parents have the same total, hence the same reference budget: the blend does not depend
    # on which reference is used (it cancels when the counts are fitted back).
    budget = "erk"
    da, db = deviation_of(a.mask, budget), deviation_of(b.mask, budget)
    alpha = float(torch.rand((), generator=generator))
    mixed = {k: da[k] ** alpha * db[k] ** (1 - alpha) for k in da}
    children = []
    for parent in (a, b):
        if parent.traits is None:  # nothing to realise a new mask from
            child = parent.clone()
        else:
            sparsity = 1.0 - total / sum(parent.mask.sizes().values())
            step = PruneStep(sparsity, sparsity, True)
            child = Individual(realise(parent, budget_counts(parent.mask, mixed, sparsity, step), "magnitude", step),
                               parent.traits)
            child.carry = parent.carry
        child.origin = "crossover"
        children.append(child)
    return children[0], children[1]

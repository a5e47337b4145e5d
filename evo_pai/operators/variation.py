"""Variation operators: mutations (prune or swap weights), crossovers, selections.

Mutation signature: fn(ind: Individual, step: PruneStep, generator: torch.Generator, **params) -> MaskSet.
A sparsity-advancing mutation must return a mask at `step.sparsity` (schedule mode) or between
the parent's sparsity and `step.target`, and exactly at `step.target` when `step.final` is set.
Crossover signature: fn(a: Individual, b: Individual, generator) -> (Individual, Individual).
Selection signature: fn(population, k, **params) -> list[Individual].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from deap import tools

from evo_pai.core.budgets import layer_counts, total_keep
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet, _ensure_fan_in, _global_counts, pattern_caps
from evo_pai.core.registry import register_crossover, register_mutation, register_selection
from evo_pai.training.carry import compose

INF = float("inf")


@dataclass(frozen=True)
class PruneStep:
    """Where a sparsity-advancing mutation must take a mask in this step."""

    sparsity: float  # the schedule's sparsity for this step
    target: float  # the search's final target sparsity: never exceeded
    final: bool  # this step must land exactly on `target`
    budget: str = "erk"  # masks.budget: erk | uniform | global
    min_output_fan_in: int = 1
    allow_empty_layers: bool = False

    @property
    def min_keep(self) -> int:
        return 0 if self.allow_empty_layers else 1


def keep_counts(mask: MaskSet, sparsity: float, step: PruneStep, scope: str) -> dict[str, int] | int:
    """Per-layer kept counts at `sparsity` (layer scope), or the total (global scope / budget)."""
    if scope == "global" or step.budget == "global":
        return total_keep(mask.shapes(), sparsity)
    return layer_counts(mask.shapes(), sparsity, step.budget, step.min_keep, pattern_caps(mask.shapes(), mask.pattern))


def prune_to(mask: MaskSet, scores: Mapping[str, torch.Tensor], keep: dict[str, int] | int, step: PruneStep) -> MaskSet:
    """Keep the best-scoring kept weights: `keep` per layer, or in total ranked globally."""
    if isinstance(keep, int):
        masked = {k: scores[k].to(torch.float64).masked_fill(~mask[k], -INF) for k in mask}
        keep = _global_counts(masked, keep, step.min_keep)
    pruned = mask.prune(scores, _land_on_total(mask.counts(), keep))
    return fix_fan_in(pruned, scores, step)


def _land_on_total(counts: Mapping[str, int], keep: Mapping[str, int]) -> dict[str, int]:
    """Per-layer counts for a prune-only step: a layer already below its count (a crossover child whose
    total was repaired across layers) keeps what it has, and its shortfall is kept in the other layers
    in proportion to what they could still give (largest remainder), so the total lands on sum(keep)."""
    out = {k: min(int(keep[k]), c) for k, c in counts.items()}
    short = sum(int(keep[k]) for k in counts) - sum(out.values())
    spare = {k: c - out[k] for k, c in counts.items() if c > out[k]}
    if short <= 0 or not spare:
        return out
    short = min(short, sum(spare.values()))
    total = sum(spare.values())
    share = {k: short * v / total for k, v in spare.items()}
    add = {k: int(math.floor(x)) for k, x in share.items()}
    for k in sorted(share, key=lambda k: (add[k] - share[k], k))[: short - sum(add.values())]:
        add[k] += 1
    return {k: out[k] + add.get(k, 0) for k in out}


def fix_fan_in(mask: MaskSet, scores: Mapping[str, torch.Tensor], step: PruneStep) -> MaskSet:
    """Every output class keeps `step.min_output_fan_in` inputs (the layer's count unchanged)."""
    out = mask.output_layer
    if not out or step.min_output_fan_in <= 0:
        return mask
    return mask.with_layers({out: _ensure_fan_in(mask[out], scores[out], step.min_output_fan_in, mask.pattern)})


def grow_to(mask: MaskSet, scores: Mapping[str, torch.Tensor], keep: dict[str, int] | int, step: PruneStep) -> MaskSet:
    """Add the best-scoring pruned weights: up to `keep` per layer, or in total ranked globally."""
    if isinstance(keep, int):
        ranked = {k: scores[k].to(torch.float64).masked_fill(mask[k], INF) for k in mask}
        keep = _global_counts(ranked, keep, step.min_keep)
    return mask.grow(scores, {k: max(int(keep[k]), c) for k, c in mask.counts().items()})


def _threshold_keep(mask: MaskSet, rel: Mapping[str, torch.Tensor], step: PruneStep, scope: str, tau: float, frac: float):
    """The paper's literal rule: prune kept weights with rel_change <= tau, capped per step."""
    target = keep_counts(mask, step.target, step, scope)
    cand = {k: mask[k] & (rel[k] <= tau) for k in mask}
    kept = mask.counts()
    if isinstance(target, int):
        total = sum(kept.values())
        n = min(sum(int(c.sum()) for c in cand.values()), max(0, total - target), math.floor(frac * total))
        return total - n
    return {
        k: kept[k] - min(int(cand[k].sum()), max(0, kept[k] - target[k]), math.floor(frac * kept[k])) for k in mask
    }


@register_mutation("dissipating_gradients", "prune kept weights that moved least from w0 (|w_t-w0| <= tau*|w0|)")
def dissipating_gradients(
    ind: Individual,
    step: PruneStep,
    generator: torch.Generator,
    tau: float = 0.1,
    mode: str = "threshold",
    scope: str = "layer",
    max_step_fraction: float = 0.5,
) -> MaskSet:
    rel = ind.traits["rel_change"]
    if mode == "schedule":
        return prune_to(ind.mask, rel, keep_counts(ind.mask, step.sparsity, step, scope), step)
    if step.final:  # step limit reached: rank by relative change to land on the target
        return prune_to(ind.mask, rel, keep_counts(ind.mask, step.target, step, scope), step)
    # Non-candidates score +inf so only weights under the threshold can go in this step.
    scores = {k: torch.where(rel[k] <= tau, rel[k], torch.full_like(rel[k], INF)) for k in rel}
    return prune_to(ind.mask, scores, _threshold_keep(ind.mask, rel, step, scope, tau, max_step_fraction), step)


@register_mutation("magnitude", "gradual magnitude pruning control: prune the smallest |w_t| on the DG schedule")
def magnitude(ind: Individual, step: PruneStep, generator: torch.Generator, scope: str = "layer") -> MaskSet:
    scores = {k: w.abs() for k, w in ind.traits["weight"].items()}
    sparsity = step.target if step.final else step.sparsity
    return prune_to(ind.mask, scores, keep_counts(ind.mask, sparsity, step, scope), step)


@register_mutation("random_swap", "prune n random kept weights per layer and regrow n pruned ones (density kept)")
def random_swap(ind: Individual, step: PruneStep, generator: torch.Generator, fraction: float = 0.05, **_: object) -> MaskSet:
    if ind.mask.pattern:
        return _random_swap_in_pattern(ind.mask, step, generator, fraction)
    out = {}
    for k, m in ind.mask.items():
        flat = m.reshape(-1).clone()
        kept, free = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
        n = min(max(1, int(fraction * len(kept))), len(free), len(kept) - step.min_keep)
        if n > 0:
            flat[kept[torch.randperm(len(kept), generator=generator)[:n]]] = False
            flat[free[torch.randperm(len(free), generator=generator)[:n]]] = True
        out[k] = flat.reshape(m.shape)
    mask = MaskSet(out, ind.mask.output_layer)
    o = mask.output_layer
    if o and step.min_output_fan_in > 0:  # random scores for the output layer only: main's random stream, unchanged
        mask = mask.with_layers({o: _ensure_fan_in(mask[o], torch.rand(mask[o].shape, generator=generator),
                                                   step.min_output_fan_in)})
    return mask


def _random_swap_in_pattern(mask: MaskSet, step: PruneStep, generator: torch.Generator, fraction: float) -> MaskSet:
    """random_swap through the one ranking every mask uses (random scores), so an N:M pattern holds."""
    counts = mask.counts()
    drop = {k: max(0, min(max(1, int(fraction * c)), mask[k].numel() - c, c - step.min_keep)) for k, c in counts.items()}
    pruned = mask.prune({k: torch.rand(m.shape, generator=generator) for k, m in mask.items()},
                        {k: c - drop[k] for k, c in counts.items()})
    grow = {k: torch.rand(m.shape, generator=generator, dtype=torch.float64).masked_fill(m, -INF) for k, m in mask.items()}
    return fix_fan_in(pruned.grow(grow, counts), {k: torch.rand(m.shape, generator=generator) for k, m in mask.items()}, step)


@register_mutation("grow", "grow to step.sparsity (denser): regrow the pruned weights with the largest accumulated |gradient| (RigL's grow rule)")
def grow(ind: Individual, step: PruneStep, generator: torch.Generator, scope: str = "layer") -> MaskSet:
    # grad_accum is recorded before masking, so pruned weights carry the gradient they would have had.
    return grow_to(ind.mask, ind.traits["grad_accum"], keep_counts(ind.mask, step.sparsity, step, scope), step)


@register_mutation("regrow", "RigL-style swap: prune the n kept weights of smallest |w|, regrow the n pruned "
                             "weights of largest accumulated |g| (n = fraction x kept per layer; density kept)")
def regrow(ind: Individual, step: PruneStep, generator: torch.Generator, fraction: float = 0.1) -> MaskSet:
    """Density-keeping per layer, so usable as `search.explore_mutation` (or after any pruning step).

    Growth candidates are the weights pruned in `ind.mask`; a regrown weight starts at 0 under
    inheritance (it was pruned, hence 0, in the parent) and at θ0 under rewind."""
    if not 0.0 <= fraction <= 1.0:
        raise EvoPaiError(f"search.mutation_params.fraction: must be in [0, 1], got {fraction}")
    if ind.mask.pattern:
        return _regrow_in_pattern(ind, step, fraction)
    w, g = ind.traits["weight"], ind.traits["grad_accum"]
    out = {}
    for k, m in ind.mask.items():
        flat = m.reshape(-1)
        kept, free = int(flat.sum()), int((~flat).sum())
        n = min(int(round(fraction * kept)), free, kept - step.min_keep)
        if n <= 0:
            out[k] = m
            continue
        # NaN (a diverged network) ranks lowest, as in MaskSet.prune: sort would put it past ±inf and
        # drop already-pruned weights instead, breaking the density this operator promises.
        drop = torch.nan_to_num(w[k].reshape(-1).abs().to(torch.float64), nan=-INF).masked_fill(~flat, INF)
        grow = torch.nan_to_num(g[k].reshape(-1).to(torch.float64), nan=-INF).masked_fill(flat, -INF)
        new = flat.clone()
        new[torch.sort(drop, stable=True).indices[:n]] = False
        new[torch.sort(grow, descending=True, stable=True).indices[:n]] = True
        out[k] = new.reshape(m.shape)
    mask = MaskSet(out, ind.mask.output_layer)
    o = mask.output_layer
    if o and step.min_output_fan_in > 0:
        fixed = dict(mask)
        fixed[o] = _ensure_fan_in(mask[o], g[o] + w[o].abs(), step.min_output_fan_in)
        mask = MaskSet(fixed, o)
    return mask


def _regrow_in_pattern(ind: Individual, step: PruneStep, fraction: float) -> MaskSet:
    """`regrow` through the one ranking every mask uses, so an N:M pattern holds."""
    w, g, counts = ind.traits["weight"], ind.traits["grad_accum"], ind.mask.counts()
    drop = {k: max(0, min(int(round(fraction * c)), ind.mask[k].numel() - c, c - step.min_keep)) for k, c in counts.items()}
    pruned = ind.mask.prune({k: v.abs() for k, v in w.items()}, {k: c - drop[k] for k, c in counts.items()})
    # A weight dropped now ranks below every other candidate for regrowth.
    scores = {k: g[k].to(torch.float64).masked_fill(ind.mask[k], -INF) for k in g}
    return fix_fan_in(pruned.grow(scores, counts), {k: g[k] + w[k].abs() for k in g}, step)


def _child(parts: dict[str, tuple[Individual, str]], output_layer: str | None) -> Individual:
    first = next(iter(parts.values()))[0].mask
    mask = MaskSet({k: p.mask[k] for k, (p, _) in parts.items()}, output_layer, first.pattern)
    names = next(iter(parts.values()))[0].traits or {}
    traits = {t: {k: p.traits[t][k] for k, (p, _) in parts.items()} for t in names}
    child = Individual(mask, traits or None)
    child.origin = "crossover"
    if all(p.carry is not None for p, _ in parts.values()):  # inheritance: each layer's weights from its parent
        child.carry = compose({k: p.carry for k, (p, _) in parts.items()})
    return child


@register_crossover("layerwise", "each layer's mask (and traits) comes whole from one parent")
def layerwise(a: Individual, b: Individual, generator: torch.Generator) -> tuple[Individual, Individual]:
    pick = torch.rand(len(a.mask), generator=generator) < 0.5
    first, second = {}, {}
    for i, k in enumerate(a.mask):
        first[k], second[k] = ((a, k), (b, k)) if pick[i] else ((b, k), (a, k))
    c1, c2 = _child(first, a.mask.output_layer), _child(second, a.mask.output_layer)
    # Under a global budget parents' per-layer counts differ; repair children to the parent total.
    total = sum(a.mask.counts().values())
    return _match_total(c1, total), _match_total(c2, total)


def _match_total(ind: Individual, total: int) -> Individual:
    have = sum(ind.mask.counts().values())
    if have == total or ind.traits is None:
        return ind
    mask = ind.mask
    if have > total:  # drop the kept weights that moved least
        rel = ind.traits["rel_change"]
        scores = {k: rel[k].to(torch.float64).masked_fill(~mask[k], -INF) for k in mask}
        mask = mask.prune(rel, _global_counts(scores, total, 1))
    else:  # regrow the pruned weights with the largest accumulated gradient
        g = ind.traits["grad_accum"]
        scores = {k: g[k].to(torch.float64).masked_fill(mask[k], INF) for k in mask}
        mask = mask.grow(g, _global_counts(scores, total, 1))
    fixed = Individual(mask, ind.traits)
    fixed.origin, fixed.carry = ind.origin, ind.carry
    return fixed


@register_selection("tournament", "DEAP tournament selection (tournament_size from search.tournament_size)")
def tournament(population: list, k: int, tournament_size: int = 3) -> list:
    return tools.selTournament(population, k, tournsize=tournament_size)


@register_selection("best", "DEAP truncation: the k fittest")
def best(population: list, k: int, **_: object) -> list:
    return tools.selBest(population, k)

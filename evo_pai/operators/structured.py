"""Structured pruning: the `neuron` mutation removes whole hidden units / conv channels.

A unit goes with every weight into and out of it, so `evo-pai export --format compact` really
shrinks the network (unstructured masks mostly leave every unit alive). Units are ranked by a
registered *unit criterion* (`@register_unit_criterion(name)`: fn(ind, link, generator) -> one score
per unit, higher = keep). Each call removes up to `fraction` of the alive units of every hidden
layer, weakest first (interleaved across layers by rank), never below the step's kept count, then
lands exactly on it by magnitude among the remaining weights (weights of units left without any
output go first: they are useless). `scope: global` (default) fixes the total; the per-layer split
follows the removed units. `grow_alive` is the matching growth (never into a removed unit). Usable as `search.mutation`, or mixed with unstructured mutations in
nsga2's `prune_mutations`. Needs a sequential model (units.py).
"""
from __future__ import annotations

import torch

from evo_pai.core.budgets import total_keep
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.operators.variation import INF, PruneStep, grow_to, keep_counts, prune_to
from evo_pai.core.registry import UNIT_CRITERION, register_mutation, register_unit_criterion
from evo_pai.models.units import Link, alive_units, unit_columns, unit_rows


def _abs_kept(ind: Individual, name: str, trait: str) -> torch.Tensor | None:
    if ind.traits is None or name not in ind.traits.get(trait, {}) or name not in ind.mask:
        return None
    return ind.traits[trait][name].abs() * ind.mask[name]


def _in_out(ind: Individual, link: Link, trait: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _abs_kept(ind, link.producer, trait), _abs_kept(ind, link.consumer, trait)
    into = unit_rows(a).sum(1) if a is not None else torch.ones(link.units)
    out = unit_columns(b, link).sum(2).sum(0) if b is not None else torch.ones(link.units)
    return into, out


@register_unit_criterion("magnitude", "L1 of the unit's kept incoming |w| times L1 of its kept outgoing |w| (after the burst)")
def magnitude_units(ind: Individual, link: Link, generator: torch.Generator) -> torch.Tensor:
    into, out = _in_out(ind, link, "weight")
    return into * out


@register_unit_criterion("gradient", "accumulated |gradient| over the unit's kept incoming and outgoing weights")
def gradient_units(ind: Individual, link: Link, generator: torch.Generator) -> torch.Tensor:
    into, out = _in_out(ind, link, "grad_accum")
    return into + out


@register_unit_criterion("random", "uniformly random unit scores (the control)")
def random_units(ind: Individual, link: Link, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(link.units, generator=generator)


def _unit_weights(m: dict[str, torch.Tensor], link: Link, u: int) -> int:
    n = int(unit_rows(m[link.producer])[u].sum()) if link.producer in m else 0
    return n + (int(unit_columns(m[link.consumer], link)[:, u].sum()) if link.consumer in m else 0)


def _remove(m: dict[str, torch.Tensor], link: Link, u: int) -> None:
    if link.producer in m:
        unit_rows(m[link.producer])[u] = False
    if link.consumer in m:
        unit_columns(m[link.consumer], link)[:, u] = False


def _check(links: list[Link] | None, name: str) -> list[Link]:
    if not links:
        raise EvoPaiError(f"mutation '{name}' removes whole units: it needs a sequential model (mlp, lenet5, conv4)")
    return links


@register_mutation("neuron", "structured: remove whole hidden units / channels (unit criterion), then magnitude to the step")
def neuron(ind: Individual, step: PruneStep, generator: torch.Generator, links: list[Link] | None = None,
           criterion: str = "magnitude", fraction: float = 0.25, scope: str = "global", **_: object) -> MaskSet:
    links = _check(links, "neuron")
    if not 0.0 <= fraction <= 1.0:
        raise EvoPaiError(f"mutation neuron: fraction must be in [0, 1], got {fraction}")
    score_units = UNIT_CRITERION.get(criterion)
    sparsity = step.target if step.final else step.sparsity
    m = {k: v.clone() for k, v in ind.mask.items()}
    kept, target = sum(int(v.sum()) for v in m.values()), total_keep(ind.mask.shapes(), sparsity)
    candidates = []
    for li, link in enumerate(links):
        alive = alive_units(m, link).nonzero().squeeze(1)
        quota = min(int(fraction * len(alive)), len(alive) - 1)  # a layer keeps at least one unit
        if quota <= 0:
            continue
        scores = score_units(ind, link, generator)[alive].to(torch.float64)
        order = alive[torch.sort(scores, stable=True).indices][:quota]
        candidates += [(r / len(alive), li, int(u)) for r, u in enumerate(order)]
    for _, li, u in sorted(candidates):  # weakest first, interleaved across layers by relative rank
        cost = _unit_weights(m, links[li], u)
        if kept - cost >= target:  # structured removal never overshoots the step
            _remove(m, links[li], u)
            kept -= cost
    removed = ind.mask.with_layers(m)
    weights = ind.traits["weight"] if ind.traits and "weight" in ind.traits else {k: torch.ones(v.shape) for k, v in m.items()}
    scores = {k: weights[k].abs().to(torch.float64) for k in m}
    for link in links:  # units with no kept output: their incoming weights carry nothing
        if link.producer in m and link.consumer in m:
            orphan = ~unit_columns(m[link.consumer], link).any(2).any(0)
            unit_rows(scores[link.producer])[orphan] = -INF
    return prune_to(removed, scores, keep_counts(removed, sparsity, step, scope), step)


@register_mutation("grow_alive", "grow like `grow` (accumulated |gradient|), only into units still alive (structured searches)")
def grow_alive(ind: Individual, step: PruneStep, generator: torch.Generator, links: list[Link] | None = None,
                 scope: str = "global", **_: object) -> MaskSet:
    links = _check(links, "grow_alive")
    g = {k: v.to(torch.float64).clone() for k, v in ind.traits["grad_accum"].items()}
    m = dict(ind.mask)
    for link in links:
        dead = ~alive_units(m, link)
        if link.producer in g:
            unit_rows(g[link.producer])[dead] = -INF
        if link.consumer in g:
            unit_columns(g[link.consumer], link)[:, dead] = -INF
    return grow_to(ind.mask, g, keep_counts(ind.mask, step.sparsity, step, scope), step)

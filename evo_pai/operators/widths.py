"""Width genomes: how many channels each group keeps, and which (a channel criterion).

With `masks.granularity: channel` an individual's mask is a choice of channels per group
(models/channel_groups.py); its genes are the widths (kept channels per free group) and
`search.sparsity` is the fraction of the dense network's multiply-adds (MACs) removed. At θ0 a
layer's channels are exchangeable, so only the widths matter; after training (`search.inherit:
parent`) the criterion decides which channels go — progressive structured pruning.

- `repair`: widths → the MACs budget within `masks.macs_tolerance` (a common scale, then one
  channel at a time), as MetaPruning and EagleEye keep candidates at their FLOPs target.
- mutation `width`: per group, with probability `prob`, a log-normal step of the width (or, with
  `resample`, a uniform draw), then repair to the step's level; channels chosen by the criterion,
  those already kept first (a width that grows regrows the best pruned channels). `prob: 0` shrinks
  every group by one factor (uniform per-layer ratio); `scope: global` ranks every kept channel
  across groups (criterion over its group's mean) and removes the weakest until the level —
  Torch-Pruning's two rankings, as progressive pruning under `gmp` / `dissipating`.
- crossover `group_uniform`: each group's channels from either parent (the mutation that follows
  lands the child on the step's budget).
- channel criteria (`@register_channel_criterion(name)`: fn(group, state, traits, generator) -> one
  score per channel, higher = keep): `l1`, `group_norm` (L2 over the whole group, DepGraph),
  `taylor` (|w · accumulated grad|), `bn_scale` (|γ| of the group's BatchNorms), `random`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.core.registry import CHANNEL_CRITERION, register_channel_criterion, register_crossover, register_mutation
from evo_pai.models.channel_groups import ChannelGroup, ChannelStructure
from evo_pai.operators.variation import PruneStep


# -- channel criteria ---------------------------------------------------------------------------
def _per_channel(group: ChannelGroup, tensors: Mapping[str, torch.Tensor], power: float, members=None) -> torch.Tensor:
    out = torch.zeros(group.channels, dtype=torch.float64)
    for m in group.members if members is None else members:
        t = tensors.get(m.param)
        if t is None:
            continue
        per = t.detach().to(torch.float64).abs().pow(power).transpose(0, m.dim).reshape(t.shape[m.dim], -1).sum(1)
        out.index_add_(0, m.root, per[m.index])
    return out


@register_channel_criterion("l1", "L1 norm of each channel's weights over every layer of its group (trained weights)")
def l1_channels(group: ChannelGroup, state: Mapping[str, torch.Tensor], traits: Mapping | None,
                generator: torch.Generator) -> torch.Tensor:
    return _per_channel(group, state, 1.0)


@register_channel_criterion("group_norm", "L2 norm over the whole group (DepGraph's group norm)")
def group_norm_channels(group: ChannelGroup, state: Mapping[str, torch.Tensor], traits: Mapping | None,
                        generator: torch.Generator) -> torch.Tensor:
    return (_per_channel(group, state, 2.0) + _per_channel(group, state, 2.0, group.norms)).sqrt()


@register_channel_criterion("taylor", "first-order Taylor: sum |w| x accumulated |grad| over the group (after a burst)")
def taylor_channels(group: ChannelGroup, state: Mapping[str, torch.Tensor], traits: Mapping | None,
                    generator: torch.Generator) -> torch.Tensor:
    grads = (traits or {}).get("grad_accum")
    if not grads:
        return l1_channels(group, state, traits, generator)  # no burst yet: magnitude
    prod = {k: state[k].to(torch.float64).abs() * g.to(torch.float64) for k, g in grads.items() if k in state}
    return _per_channel(group, prod, 1.0)


@register_channel_criterion("bn_scale", "|gamma| of the group's BatchNorm layers (Network Slimming); l1 where it has none")
def bn_scale_channels(group: ChannelGroup, state: Mapping[str, torch.Tensor], traits: Mapping | None,
                      generator: torch.Generator) -> torch.Tensor:
    if not group.norms:
        return l1_channels(group, state, traits, generator)
    return _per_channel(group, state, 1.0, group.norms)


@register_channel_criterion("random", "uniformly random channel scores (the control)")
def random_channels(group: ChannelGroup, state: Mapping[str, torch.Tensor], traits: Mapping | None,
                    generator: torch.Generator) -> torch.Tensor:
    return torch.rand(group.channels, generator=generator, dtype=torch.float64)


# -- widths -> budget -----------------------------------------------------------------------------
def _scaled(widths: Sequence[int], full: Sequence[int], s: float, floor: int) -> list[int]:
    return [min(n, max(min(floor, n), int(round(w * s)))) for w, n in zip(widths, full)]


EXHAUSTIVE = 4096  # width vectors below which repair tries them all (coarse channels: greedy steps get stuck)


def _exhaustive(structure: ChannelStructure, w: Sequence[int], full: Sequence[int], floor: int, target: float,
                band: float) -> list[int]:
    """Of all width vectors within the band, the nearest to `w` (else the one nearest the target)."""
    import itertools

    best, key = None, None
    for cand in itertools.product(*[range(min(floor, n), n + 1) for n in full]):
        gap = abs(structure.macs_of_widths(cand) - target)
        k = (0, sum(abs(a - b) for a, b in zip(cand, w)), gap) if gap <= band else (1, gap, 0)
        if key is None or k < key:
            best, key = list(cand), k
    if key[0] == 1:
        raise EvoPaiError(f"masks.macs_tolerance: no widths land within {band / structure.dense_macs:g} of "
                          f"{target / structure.dense_macs:.4g} of the dense MACs; raise masks.macs_tolerance")
    return best


def _moves(w: Sequence[int], full: Sequence[int], floor: int, grow: bool):
    """Single-channel steps toward the target, then swaps (one group +1, another -1): small networks
    whose channels are coarse in MACs need the swaps to land within the tolerance."""
    ok = lambda c, i: min(floor, full[i]) <= c[i] <= full[i]  # noqa: E731
    for i in range(len(w)):
        c = list(w)
        c[i] += 1 if grow else -1
        if ok(c, i):
            yield c
    for i in range(len(w)):
        for j in range(len(w)):
            if i != j:
                c = list(w)
                c[i] += 1
                c[j] -= 1
                if ok(c, i) and ok(c, j):
                    yield c


def repair(structure: ChannelStructure, widths: Sequence[int], target: float, tolerance: float,
           floor: int = 1) -> list[int]:
    """Widths with MACs within `tolerance` (relative to the dense MACs) of `target` MACs: the widths
    scaled by one factor (bisection), then single channels added/removed where they move least."""
    full = structure.full_widths()
    lo_macs = structure.macs_of_widths(_scaled(widths, full, 0.0, floor))
    if lo_macs > target + tolerance * structure.dense_macs:
        raise EvoPaiError(f"search.sparsity: {1 - target / structure.dense_macs:.4g} of the MACs cannot be removed: "
                          f"even {floor} channel(s) per group keep {lo_macs / structure.dense_macs:.4g} of them; "
                          "lower search.sparsity (or masks.min_channels)")
    a, b = 0.0, max(n / max(w, 1) for w, n in zip(widths, full))
    for _ in range(60):  # macs(widths(s)) is monotone in s
        mid = (a + b) / 2
        if structure.macs_of_widths(_scaled(widths, full, mid, floor)) > target:
            b = mid
        else:
            a = mid
    w = _scaled(widths, full, a, floor)
    band = tolerance * structure.dense_macs
    if math.prod(n - min(floor, n) + 1 for n in full) <= EXHAUSTIVE:  # a small network: every width vector
        return _exhaustive(structure, w, full, floor, target, band)
    for _ in range(sum(full)):  # one channel at a time (or one here, one there): the move that lands closest
        macs = structure.macs_of_widths(w)
        if abs(macs - target) <= band:
            return w
        best, best_gap = None, abs(macs - target)
        for cand in _moves(w, full, floor, macs < target):
            gap = abs(structure.macs_of_widths(cand) - target)
            if gap < best_gap:
                best, best_gap = cand, gap
        if best is None:
            break
        w = best
    if abs(structure.macs_of_widths(w) - target) > band:
        raise EvoPaiError(f"masks.macs_tolerance: no widths land within {tolerance:g} of {target / structure.dense_macs:.4g} "
                          "of the dense MACs; raise masks.macs_tolerance")
    return w


def choose_channels(structure: ChannelStructure, widths: Sequence[int], scores: Mapping[int, torch.Tensor],
                    kept: Mapping[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """The top-`width` channels of each group by score, channels already kept ranked first."""
    out = {}
    for g, w in zip(structure.free, widths):
        order = torch.argsort(-scores[g.id].to(torch.float64).nan_to_num(nan=-math.inf), stable=True)
        if kept is not None:  # stable: among kept (then among pruned) channels the score order stays
            order = order[torch.argsort((~kept[g.id][order]).to(torch.int8), stable=True)]
        order = order[:w]
        k = torch.zeros(g.channels, dtype=torch.bool)
        k[order] = True
        out[g.id] = k
    return out


def channel_scores(structure: ChannelStructure, criterion: str, state: Mapping[str, torch.Tensor],
                   traits: Mapping | None, generator: torch.Generator) -> dict[int, torch.Tensor]:
    fn = CHANNEL_CRITERION.get(criterion)
    out = {}
    for g in structure.free:
        try:
            s = torch.as_tensor(fn(g, state, traits, generator), dtype=torch.float64).flatten()
        except EvoPaiError:
            raise
        except Exception as exc:
            raise EvoPaiError(f"channel criterion '{criterion}' raised {type(exc).__name__}: {exc}; fix the criterion") from exc
        if s.numel() != g.channels:
            raise EvoPaiError(f"channel criterion '{criterion}' returned {s.numel()} scores for group {g.id} "
                              f"({g.root}, {g.channels} channels); return one per channel")
        out[g.id] = s
    return out


def individual_state(ind: Individual, theta0: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ0, overlaid with the individual's inherited weights and its last burst's trained weights."""
    state = dict(theta0)
    if ind.carry is not None:
        state.update(ind.carry.weights)
    if ind.traits and "weight" in ind.traits:
        state.update(ind.traits["weight"])
    return state


def random_widths(structure: ChannelStructure, generator: torch.Generator) -> list[int]:
    return [int(torch.randint(1, g.channels + 1, (), generator=generator)) for g in structure.free]


def global_widths(structure: ChannelStructure, scores: Mapping[int, torch.Tensor], kept: Mapping[int, torch.Tensor],
                  target: float, floor: int) -> list[int]:
    """Widths from one ranking of every kept channel (each group's scores over their mean, so groups
    compare), removing the weakest until the MACs reach `target` (never below `floor` per group)."""
    widths = {g.id: int(kept[g.id].sum()) for g in structure.free}
    ranked = []
    for g in structure.free:
        sc = scores[g.id].to(torch.float64)
        live = sc[kept[g.id]]
        norm = float(live.abs().mean()) if live.numel() else 1.0
        ranked += [(float(v) / (norm or 1.0), g.id) for v in live.tolist()]
    order = [g.id for g in structure.free]
    for _, gid in sorted(ranked):
        if structure.macs_of_widths([widths[i] for i in order]) <= target:
            break
        if widths[gid] > floor:
            widths[gid] -= 1
    return [widths[i] for i in order]


# -- operators --------------------------------------------------------------------------------------
@register_mutation("width", "structured: per-group width steps (log-normal) repaired to the step's MACs level; channels by criterion")
def width(ind: Individual, step: PruneStep, generator: torch.Generator, structure: ChannelStructure | None = None,
          theta0: Mapping[str, torch.Tensor] | None = None, criterion: str = "l1", prob: float = 0.3,
          sigma: float = 0.3, resample: float = 0.0, tolerance: float = 0.02, min_channels: int = 1,
          scope: str = "group") -> MaskSet:
    if structure is None:
        raise EvoPaiError("mutation 'width' changes channel widths: it needs masks.granularity: channel")
    if not (0 <= prob <= 1 and 0 <= resample <= 1 and sigma >= 0):
        raise EvoPaiError("mutation width: prob and resample must be in [0, 1], sigma >= 0")
    kept = structure.kept(ind.mask)
    widths = []
    for g in structure.free:
        w = int(kept[g.id].sum())
        if float(torch.rand((), generator=generator)) < prob:
            if float(torch.rand((), generator=generator)) < resample:
                w = int(torch.randint(1, g.channels + 1, (), generator=generator))
            else:
                w = int(round(w * math.exp(sigma * float(torch.randn((), generator=generator)))))
        widths.append(min(g.channels, max(1, w)))
    target = (1.0 - step.sparsity) * structure.dense_macs
    scores = channel_scores(structure, criterion, individual_state(ind, theta0 or {}), ind.traits, generator)
    if scope == "global":  # Torch-Pruning's global ranking: the weakest channels anywhere go first
        widths = global_widths(structure, scores, kept, target, min_channels)
    elif scope != "group":
        raise EvoPaiError(f"mutation width: scope must be group or global, got {scope!r}")
    widths = repair(structure, widths, target, tolerance, min_channels)
    masks = structure.mask_of(choose_channels(structure, widths, scores, kept))
    return MaskSet(masks, ind.mask.output_layer)


@register_crossover("group_uniform", "structured: each channel group's kept channels from either parent")
def group_uniform(a: Individual, b: Individual, generator: torch.Generator,
                  structure: ChannelStructure | None = None) -> tuple[Individual, Individual]:
    if structure is None:
        raise EvoPaiError("crossover 'group_uniform' swaps channel groups: it needs masks.granularity: channel")
    ka, kb = structure.kept(a.mask), structure.kept(b.mask)
    ca, cb = {}, {}
    for g in structure.free:
        swap = float(torch.rand((), generator=generator)) < 0.5
        ca[g.id], cb[g.id] = (kb[g.id], ka[g.id]) if swap else (ka[g.id], kb[g.id])
    kids = []
    for keep, parent in ((ca, a), (cb, b)):
        child = Individual(MaskSet(structure.mask_of(keep), parent.mask.output_layer), parent.traits)
        child.carry, child.origin = parent.carry, "crossover"
        kids.append(child)
    return kids[0], kids[1]

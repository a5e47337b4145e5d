"""`masks.granularity: channel`: what the Experiment does differently when masks choose channels.

Masks are channel choices over the model's groups (models/channel_groups.py) and `sparsity` is the
fraction of the dense MACs removed. Random masks are random widths repaired to the level with random
channels (at θ0 they are exchangeable); mutations and crossovers that accept `structure` get it (and
θ0, the MACs tolerance, the minimum width); every result is checked here: channel-structured and at
the step's MACs level within `masks.macs_tolerance`.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.models.channel_groups import ChannelStructure
from evo_pai.operators.variation import PruneStep
from evo_pai.operators.widths import choose_channels, random_widths, repair


def accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def random_channel_mask(structure: ChannelStructure, sparsity: float, seed: int, tolerance: float,
                        min_channels: int, output_layer: str | None) -> MaskSet:
    gen = torch.Generator().manual_seed(seed)
    widths = repair(structure, random_widths(structure, gen), (1.0 - sparsity) * structure.dense_macs,
                    tolerance, min_channels)
    scores = {g.id: torch.rand(g.channels, generator=gen, dtype=torch.float64) for g in structure.free}
    return MaskSet(structure.mask_of(choose_channels(structure, widths, scores)), output_layer)


def uniform_channel_mask(structure: ChannelStructure, sparsity: float, scores: dict[int, torch.Tensor],
                         tolerance: float, min_channels: int, output_layer: str | None) -> tuple[MaskSet, list[int]]:
    """Every free group at one fraction (the width multiplier) at the MACs level; channels by `scores`."""
    widths = repair(structure, structure.full_widths(), (1.0 - sparsity) * structure.dense_macs, tolerance, min_channels)
    return MaskSet(structure.mask_of(choose_channels(structure, widths, scores)), output_layer), widths


def operator_params(fn: Callable, params: dict, structure: ChannelStructure, theta0: dict, tolerance: float,
                    min_channels: int) -> dict:
    """The structure-aware keyword arguments an operator accepts, under the user's own parameters."""
    extra = {"structure": structure, "theta0": theta0, "tolerance": tolerance, "min_channels": min_channels}
    return {**{k: v for k, v in extra.items() if accepts(fn, k)}, **params}


def check_channel_result(name: str, structure: ChannelStructure, parent: MaskSet, child: object,
                         step: PruneStep, tolerance: float) -> MaskSet:
    where = f"mutation '{name}'"
    if not isinstance(child, MaskSet) or set(child) != set(parent):
        raise EvoPaiError(f"{where} returned something other than a MaskSet over the parent's layers; fix the operator")
    rebuilt = structure.mask_of(structure.kept(child))
    for k, m in child.items():
        if tuple(m.shape) != tuple(parent[k].shape) or not torch.equal(m, rebuilt[k]):
            raise EvoPaiError(f"{where} returned a mask that is not a choice of whole channels (layer '{k}'); "
                              "with masks.granularity: channel build masks with structure.mask_of(...)")
    macs = structure.macs_of_mask(child)
    want = (1.0 - step.sparsity) * structure.dense_macs
    if abs(macs - want) > tolerance * structure.dense_macs * 1.0001:
        raise EvoPaiError(f"{where} returned a mask keeping {macs / structure.dense_macs:.4g} of the MACs; the step "
                          f"asked for {want / structure.dense_macs:.4g} within masks.macs_tolerance {tolerance:g}; fix the operator")
    return child


def preflight(cfg, model, input_shape, masked: list[str], output_layer: str | None) -> ChannelStructure | None:
    """With masks.granularity: channel — the groups proven, the operators structure-aware, the level
    reachable; one line naming the field otherwise. None for weight masks."""
    if cfg.masks.granularity != "channel":
        return None
    from evo_pai.core.registry import CROSSOVER, METHOD, MUTATION
    from evo_pai.models.group_check import channel_structure

    if cfg.masks.pattern:
        raise EvoPaiError("masks.pattern: N:M patterns choose single weights; drop it with masks.granularity: channel")
    s = cfg.search
    reads = METHOD.get(s.method).reads
    for field, reg, name in (("search.mutation", MUTATION, s.mutation), ("search.explore_mutation", MUTATION, s.explore_mutation),
                             ("search.crossover", CROSSOVER, s.crossover)):
        section = field if field != "search.explore_mutation" else "search.explore"
        if name and section in reads and name in reg and not accepts(reg.get(name), "structure"):
            fix = "width" if reg is MUTATION else "group_uniform"
            none = " (or null)" if field == "search.explore_mutation" else ""
            raise EvoPaiError(f"{field}: '{name}' works on single weights; with masks.granularity: channel use a "
                              f"structured one ({fix}{none})")
    if s.method == "nsga2":
        for field, name in nsga2_operators(cfg):
            if name in MUTATION and not accepts(MUTATION.get(name), "structure"):
                raise EvoPaiError(f"{field}: '{name}' works on single weights; with masks.granularity: channel use "
                                  "a structured one (width)")
    structure = channel_structure(model, input_shape, masked, output_layer)
    random_channel_mask(structure, s.sparsity, 0, cfg.masks.macs_tolerance, cfg.masks.min_channels, output_layer)
    return structure


def structure_summary(structure: ChannelStructure, mask) -> dict:
    """summary.json's `structure`: MACs removed, each group's kept width, every group (fixed ones with why)."""
    kept = structure.kept(mask)
    return {
        "macs_removed": 1.0 - structure.macs_of_mask(mask) / structure.dense_macs,
        "dense_macs": structure.dense_macs,
        "widths": {g.root: [int(kept[g.id].sum()), g.channels] for g in structure.free},
        "groups": structure.table(),
    }


def nsga2_operators(cfg) -> list[tuple[str, str]]:
    """(field, mutation) of every move nsga2 makes: each must be structure-aware in channel mode."""
    n = cfg.search.nsga2
    return ([("search.nsga2.prune_mutations", k) for k, w in n.prune_mutations.items() if w > 0]
            + [("search.nsga2.grow_mutation", n.grow_mutation), ("search.nsga2.swap_mutation", n.swap_mutation)])

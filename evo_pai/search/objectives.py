"""nsga2's objectives: a fitness (maximised) and one or two costs (minimised), and the density grid.

Costs are functions of the mask alone (not of the burst), so a member's cost never changes:
`kept_weights` (prunable weights kept), `flops` (sparse forward FLOPs per example, as in
summary.json), `compact_flops` (dense forward FLOPs of the network `evo-pai export --format compact`
writes: dead units removed) and `latency` (measured seconds per forward pass of that compacted
network at search.nsga2.latency_batch, on this CPU; timing noise makes a latency search
irreproducible, so prefer compact_flops unless the machine is quiet).

With `masks.granularity: channel` the compacted network is the physically pruned one
(`models/group_check.physically_pruned`, what `evo-pai export --format pruned` writes): `compact_flops`
counts its dense FLOPs and `latency` times it; both depend on the widths alone (which channels are
kept changes no shape), so each is measured once per distinct width vector.
"""
from __future__ import annotations

import math

import torch

from evo_pai.deploy.compact import compact_flops, compact_model, measure_latency
from evo_pai.core.config import Config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.models.networks import count_flops
from evo_pai.core.patterns import parse_pattern
from evo_pai.core.registry import FITNESS, MUTATION
from evo_pai.training.cost import flops_per_weight

COSTS = ("kept_weights", "flops", "compact_flops", "latency")


def density_levels(cfg: Config) -> list[float]:
    """The sparsities members live on, ascending (densest first)."""
    n = cfg.search.nsga2
    lo, hi = n.density_range
    if isinstance(n.levels, int):
        if n.levels < 1:
            raise EvoPaiError("search.nsga2.levels: an int must be at least 1 (the number of density levels)")
        if n.levels == 1:
            return [1.0 - hi]
        ratio = (lo / hi) ** (1.0 / (n.levels - 1))
        return sorted({round(1.0 - hi * ratio**i, 12) for i in range(n.levels)})
    levels = sorted(set(float(x) for x in n.levels))
    if not levels:
        raise EvoPaiError("search.nsga2.levels: give at least one sparsity, e.g. [0.8, 0.9, 0.95, 0.98, 0.99]")
    for s in levels:
        if not (1.0 - hi - 1e-9 <= s <= 1.0 - lo + 1e-9):
            raise EvoPaiError(f"search.nsga2.levels: sparsity {s} is outside density_range {list(n.density_range)} "
                              f"(sparsities {1 - hi:g}..{1 - lo:g}); widen the range or drop the level")
    return levels


def preflight(cfg: Config) -> None:
    """Everything nsga2 can refuse, before a run folder exists."""
    n = cfg.search.nsga2
    density_levels(cfg)
    first, *costs = n.objectives
    if first not in FITNESS:
        raise EvoPaiError(f"search.nsga2.objectives: the first objective must be a fitness (maximised), "
                          f"one of {', '.join(FITNESS.names())}; got '{first}'")
    for c in costs:
        if c not in COSTS:
            raise EvoPaiError(f"search.nsga2.objectives: '{c}' is not a cost; choose from {', '.join(COSTS)}")
    if len(set(costs)) != len(costs):
        raise EvoPaiError("search.nsga2.objectives: a cost appears twice")
    names = [k for k, w in n.prune_mutations.items() if w > 0] + [n.grow_mutation, n.swap_mutation]
    for name in names + list(n.mutation_params):
        if name not in MUTATION:
            raise EvoPaiError(f"search.nsga2: unknown mutation '{name}'; choose one of {', '.join(MUTATION.names())}")
    pattern = parse_pattern(cfg.masks.pattern)
    if pattern and 1.0 - min(density_levels(cfg)) > pattern[0] / pattern[1] + 1e-9:
        raise EvoPaiError(f"search.nsga2.levels: masks.pattern {cfg.masks.pattern} keeps at most "
                          f"{pattern[0]}/{pattern[1]} of the weights; every level must be >= {1 - pattern[0] / pattern[1]:g} sparse")
    if cfg.search.population < 2:
        raise EvoPaiError("search.population: nsga2 needs at least 2 members (a front of one is a single search)")


class Costs:
    """Computes the cost objectives of a member (and records them in its metrics)."""

    def __init__(self, exp, names: list[str]):
        self.names = names
        self.model = exp.model
        self.input_shape = exp.data.input_shape
        self.batch = exp.cfg.search.nsga2.latency_batch
        self.dense = count_flops(exp.model, exp.data.input_shape)["dense"]
        self.per_weight = flops_per_weight(exp.model, exp.data.input_shape, list(exp.shapes))
        self._compact_cache: dict[str, float] = {}
        self.structure = exp.structure if getattr(exp, "channels", False) else None  # channel mode: proven groups

    def sparse_flops(self, ind: Individual) -> float:
        removed = sum(self.per_weight[k] * (m.numel() - int(m.sum())) for k, m in ind.mask.items())
        return float(self.dense - removed)

    def __call__(self, ind: Individual) -> tuple[float, ...]:
        ind.metrics["kept_weights"] = float(sum(ind.mask.counts().values()))  # reported whatever the objectives
        ind.metrics["flops"] = self.sparse_flops(ind)
        values = []
        for name in self.names:
            if name == "kept_weights":
                v = float(sum(ind.mask.counts().values()))
            elif name == "flops":
                v = self.sparse_flops(ind)
            else:
                v = self._compacted(ind, name)
            ind.metrics[name] = v
            values.append(v)
        return tuple(values)

    def _compacted(self, ind: Individual, name: str) -> float:
        if self.structure is not None:
            return self._pruned(ind, name)
        key = f"{name}:{ind.key}"
        if key not in self._compact_cache:
            net = compact_model(self.model, ind.mask)  # shapes depend on the mask only: θ0's values do
            if name == "compact_flops":
                value = float(compact_flops(net, self.input_shape))
            else:
                value = measure_latency(net, self.input_shape, self.batch)
            self._compact_cache[key] = value if math.isfinite(value) else float("inf")
        return self._compact_cache[key]

    def _pruned(self, ind: Individual, name: str) -> float:
        """Channel mode: the cost of the physically pruned network, cached per width vector."""
        from evo_pai.models.group_check import physically_pruned

        kept = self.structure.kept(ind.mask)
        key = f"{name}:" + ",".join(str(int(kept[g.id].sum())) for g in self.structure.free)
        if key not in self._compact_cache:
            with torch.enable_grad():  # torch-pruning traces the forward with autograd
                net = physically_pruned(self.model, self.input_shape, self.structure, kept).eval()
            if name == "compact_flops":
                value = float(count_flops(net, self.input_shape)["dense"])
            else:
                value = measure_latency(net, self.input_shape, self.batch)
            self._compact_cache[key] = value if math.isfinite(value) else float("inf")
        return self._compact_cache[key]

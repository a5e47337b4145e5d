"""Hyperparameter genes and PBT's exploit / explore (Jaderberg et al. 2017, with Ray Tune's
`PopulationBasedTraining` rules), as pure functions of a population's scores and a torch generator.

A gene is a training hyperparameter an individual carries (`Individual.hparams`): `lr_scale`
(× train.lr), `weight_decay`, `explore_fraction` (the `fraction` of search.explore_mutation) and
`schedule_exponent` (e of the pruning schedule s_g = s + (p − s)(1 − g/G)^e: 3 is cubic, 1 linear).
Its space is a range — `[low, high]` or `{low, high, log: true}` — or `{choices: [...]}`.

Exploit (Ray's `_quantiles`): rank by score; the bottom ⌈K·quantile⌉ (at most ⌊K/2⌋) each copy a
member drawn uniformly from the top as many. Explore (Ray's `_explore`), gene by gene in the order
given: a range is resampled with `resample_probability`, else multiplied by a factor drawn from
`perturb_factors`, then clipped to the range (Ray does not clip; a weight decay or a fraction must stay
valid); a choice is resampled with that probability (or when the value is not among the choices), else
moved to the neighbouring choice below or above (clipped at the ends).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from evo_pai.core.errors import EvoPaiError

GENES = {
    "lr_scale": "multiplies train.lr (and its schedule) in the member's bursts",
    "weight_decay": "the member's weight decay, instead of train.weight_decay",
    "explore_fraction": "the fraction search.explore_mutation swaps (regrow, random_swap)",
    "schedule_exponent": "e of the member's pruning schedule s + (p - s)(1 - g/G)^e (cubic: 3, linear: 1)",
}
_LOWEST = {"lr_scale": (0.0, False), "weight_decay": (0.0, True), "explore_fraction": (0.0, True),
           "schedule_exponent": (0.0, False)}  # gene -> (bound, whether the bound itself is allowed)
_HIGHEST = {"explore_fraction": 1.0}
SHAPE = "give [low, high], {low: a, high: b, log: true} or {choices: [v1, v2, ...]}"


@dataclass(frozen=True)
class Gene:
    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[float, ...] = ()

    def sample(self, gen: torch.Generator) -> float:
        if self.choices:
            return self.choices[int(torch.randint(len(self.choices), (), generator=gen))]
        u = float(torch.rand((), generator=gen))
        if self.log:
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)

    def perturb(self, value: float, factors: tuple[float, ...], resample_probability: float,
                gen: torch.Generator) -> float:
        resample = float(torch.rand((), generator=gen)) < resample_probability
        if self.choices:
            if resample or value not in self.choices:
                return self.sample(gen)
            i = self.choices.index(value)
            down = float(torch.rand((), generator=gen)) > 0.5
            return self.choices[max(0, i - 1)] if down else self.choices[min(len(self.choices) - 1, i + 1)]
        if resample:
            return self.sample(gen)
        factor = factors[int(torch.randint(len(factors), (), generator=gen))]
        return min(self.high, max(self.low, value * factor))


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_gene(name: str, spec: Any, field: str = "search.pbt.genes") -> Gene:
    """One gene's space, checked: a known name, numbers within the gene's valid values."""
    where = f"{field}.{name}"
    if name not in GENES:
        raise EvoPaiError(f"{where}: unknown gene; choose from {', '.join(GENES)}")
    if isinstance(spec, (list, tuple)) and len(spec) == 2:
        spec = {"low": spec[0], "high": spec[1]}
    if isinstance(spec, Mapping) and set(spec) == {"choices"}:
        values = spec["choices"]
        if not isinstance(values, (list, tuple)) or not values or not all(_number(v) for v in values):
            raise EvoPaiError(f"{where}: choices must be a non-empty list of numbers; {SHAPE}")
        for v in values:
            _check_value(name, float(v), where)
        return Gene(name, choices=tuple(float(v) for v in values))
    if not isinstance(spec, Mapping) or not {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
        raise EvoPaiError(f"{where}: got {spec!r}; {SHAPE}")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if not (_number(low) and _number(high)) or not isinstance(log, bool):
        raise EvoPaiError(f"{where}: low and high must be numbers and log true or false; {SHAPE}")
    if not low < high:
        raise EvoPaiError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise EvoPaiError(f"{where}: a log range needs low > 0, got {low}")
    _check_value(name, float(low), where)
    _check_value(name, float(high), where)
    return Gene(name, float(low), float(high), log)


def _check_value(name: str, v: float, where: str) -> None:
    bound, inclusive = _LOWEST[name]
    if v < bound or (v == bound and not inclusive):
        raise EvoPaiError(f"{where}: {v} is out of range; {name} must be {'>=' if inclusive else '>'} {bound:g}")
    if name in _HIGHEST and v > _HIGHEST[name]:
        raise EvoPaiError(f"{where}: {v} is out of range; {name} must be <= {_HIGHEST[name]:g}")


def parse_genes(specs: Mapping[str, Any], field: str = "search.pbt.genes") -> list[Gene]:
    return [parse_gene(name, spec, field) for name, spec in specs.items()]


def explore(hparams: Mapping[str, float], genes: list[Gene], factors: tuple[float, ...], resample_probability: float,
            gen: torch.Generator) -> dict[str, float]:
    """A copy of `hparams` with every gene perturbed or resampled (Ray Tune's explore)."""
    out = dict(hparams)
    for g in genes:
        out[g.name] = g.perturb(out[g.name], factors, resample_probability, gen)
    return out


def exploit_pairs(scores: list[float], quantile: float, gen: torch.Generator) -> list[tuple[int, int]]:
    """[(bottom member, the top member it copies)] by Ray Tune's quantile rule; ties rank by index
    (a stable sort: the earlier member counts as the worse)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    n = math.ceil(len(scores) * quantile)
    if n > len(scores) / 2:
        n = len(scores) // 2
    if n == 0:
        return []
    top = order[-n:]
    return [(i, top[int(torch.randint(n, (), generator=gen))]) for i in order[:n]]

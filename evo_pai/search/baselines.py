"""The trivial references: the dense network and a random mask at the target sparsity."""
from __future__ import annotations

from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.core.individual import derive_seed
from evo_pai.core.registry import register_method


NO_SEARCH = {"plan": lambda cfg: (0, None), "params": {}, "reads": ()}  # trained by the final recipe alone


@register_method("dense", "no pruning: the unpruned network trained with the final recipe", sparse=False, **NO_SEARCH)
def dense(exp: Experiment) -> SearchOutcome:
    return SearchOutcome(exp.dense_mask())


@register_method("random", "one random mask at the target sparsity (layer budget from masks.budget)", **NO_SEARCH)
def random_mask(exp: Experiment) -> SearchOutcome:
    return SearchOutcome(exp.random_mask(exp.cfg.search.sparsity, derive_seed(exp.cfg.seed, "random")))


def _needs_channels(cfg) -> None:
    if cfg.masks.granularity != "channel":
        from evo_pai.core.errors import EvoPaiError

        raise EvoPaiError("search.method: 'uniform' keeps every channel group at the same fraction; it needs "
                          "masks.granularity: channel")


@register_method("uniform", "channel masks: every group kept at one fraction (a width multiplier), trained from θ0",
                 preflight=_needs_channels, **NO_SEARCH)
def uniform(exp: Experiment) -> SearchOutcome:
    import torch

    from evo_pai.search.channel_mode import uniform_channel_mask

    s, m = exp.structure, exp.cfg.masks
    gen = torch.Generator().manual_seed(derive_seed(exp.cfg.seed, "uniform"))
    scores = {g.id: torch.rand(g.channels, generator=gen, dtype=torch.float64) for g in s.free}  # θ0: exchangeable
    mask, widths = uniform_channel_mask(s, exp.cfg.search.sparsity, scores, m.macs_tolerance, m.min_channels,
                                        exp.output_layer)
    return SearchOutcome(mask, extra={"uniform_fraction": [w / g.channels for w, g in zip(widths, s.free)]})

"""The config's base section and its `masks` section (split from config.py, which holds the rest)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evo_pai.core.errors import EvoPaiError


class _Section(BaseModel):
    # allow_inf_nan=False: `train.lr: .inf` or a NaN anywhere is refused here, not by a diverged run.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MaskConfig(_Section):
    budget: Literal["erk", "uniform", "global"] = "erk"
    include_output: bool = True
    include_bias: bool = False
    # glob patterns (fnmatch) on parameter names: make matching parameters prunable / not, over the
    # defaults (models/prunable.py; `evo-pai list-layers CONFIG` shows the result); exclude wins
    include: list[str] = []
    exclude: list[str] = []
    min_output_fan_in: int = Field(1, ge=0)  # every output class keeps at least this many inputs
    allow_empty_layers: bool = False
    # "N:M": at most N kept of every M consecutive weights along the input dimension (2:4 = sparse tensor cores)
    pattern: str | None = None
    # weight: masks choose single weights, search.sparsity = fraction of weights removed. channel: masks
    # choose whole channels of the model's channel groups (docs/structured.md), search.sparsity = fraction
    # of the dense network's multiply-adds (MACs) removed, within macs_tolerance (of the dense MACs).
    granularity: Literal["weight", "channel"] = "weight"
    macs_tolerance: float = Field(0.01, gt=0, lt=1)
    min_channels: int = Field(1, ge=1)  # the narrowest a free group may become

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        from evo_pai.core.patterns import parse_pattern

        try:
            parse_pattern(v)
        except EvoPaiError as exc:
            raise ValueError(str(exc).split(": ", 1)[1]) from None
        return v

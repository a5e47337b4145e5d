"""MaskSet: layer name -> boolean keep-mask for every prunable weight.

Masks are created by ranking scores (random scores give random masks), so random,
one-shot and mutation-based masks share one code path and one set of invariants:
exact per-layer counts, no empty layer unless allowed, every output class keeps at
least `min_output_fan_in` inputs. A mask may carry an N:M `pattern` (patterns.py): every
ranking then keeps only pattern-eligible weights, so the pattern holds after every operator.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from evo_pai.core.budgets import layer_counts, numel, total_keep
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.patterns import Pattern, eligible, holds, max_keep, parse_pattern, room
from evo_pai.core.tensor_files import write_atomic


class MaskSet(Mapping):
    """Immutable-by-convention mapping of parameter name -> bool tensor (on CPU)."""

    def __init__(self, masks: Mapping[str, torch.Tensor], output_layer: str | None = None,
                 pattern: Pattern | None = None):
        self._m = {k: v.detach().to("cpu", torch.bool).contiguous() for k, v in masks.items()}
        self.output_layer = output_layer if output_layer in self._m else None
        self.pattern = tuple(pattern) if pattern else None  # N:M constraint honoured by every ranking
        self._hash: str | None = None

    # -- mapping protocol ---------------------------------------------------------
    def __getitem__(self, key: str) -> torch.Tensor:
        return self._m[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._m)

    def __len__(self) -> int:
        return len(self._m)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MaskSet) and self.hash() == other.hash()

    def __hash__(self) -> int:
        return hash(self.hash())

    def __repr__(self) -> str:
        return f"MaskSet(layers={len(self)}, sparsity={self.sparsity():.4f}, hash={self.hash()[:10]})"

    def __getstate__(self) -> dict:
        # Pack bits: a pickled population ships an eighth of the bytes.
        return {
            "shapes": {k: tuple(v.shape) for k, v in self._m.items()},
            "bits": {k: np.packbits(v.numpy().ravel()) for k, v in self._m.items()},
            "output_layer": self.output_layer,
            "pattern": self.pattern,
        }

    def __setstate__(self, state: dict) -> None:
        self._m = {
            k: torch.from_numpy(np.unpackbits(state["bits"][k], count=numel(s)).astype(bool).reshape(s))
            for k, s in state["shapes"].items()
        }
        self.output_layer = state["output_layer"]
        self.pattern = state.get("pattern")
        self._hash = None

    # -- construction -------------------------------------------------------------
    @classmethod
    def dense(cls, shapes: Mapping[str, tuple], output_layer: str | None = None, pattern: Pattern | None = None) -> "MaskSet":
        """All weights kept (a pattern, if given, applies from the first pruning on)."""
        return cls({k: torch.ones(s, dtype=torch.bool) for k, s in shapes.items()}, output_layer, pattern)

    @classmethod
    def from_scores(
        cls,
        scores: Mapping[str, torch.Tensor],
        sparsity: float,
        budget: str = "erk",
        output_layer: str | None = None,
        min_output_fan_in: int = 1,
        allow_empty_layers: bool = False,
        counts: Mapping[str, int] | None = None,
        pattern: Pattern | None = None,
    ) -> "MaskSet":
        """Keep the highest-scoring weights. -inf scores are never kept unless a layer needs them
        (under a pattern, never: only eligible weights are kept)."""
        shapes = {k: tuple(v.shape) for k, v in scores.items()}
        min_keep = 0 if allow_empty_layers else 1
        if pattern:  # ineligible weights leave every ranking, the global one included
            scores = {k: v.detach().to("cpu", torch.float64).masked_fill(~eligible(v, pattern), float("-inf"))
                      for k, v in scores.items()}
        if counts is None:
            counts = layer_counts(shapes, sparsity, budget, min_keep, pattern_caps(shapes, pattern))
        if counts is None:  # global budget: one ranking over all layers
            counts = _global_counts(scores, total_keep(shapes, sparsity), min_keep)
        masks = {k: _topk_mask(scores[k], counts[k], pattern) for k in scores}
        if output_layer in masks and min_output_fan_in > 0:
            masks[output_layer] = _ensure_fan_in(masks[output_layer], scores[output_layer], min_output_fan_in, pattern)
        return cls(masks, output_layer, pattern)

    @classmethod
    def random(
        cls,
        shapes: Mapping[str, tuple],
        sparsity: float,
        generator: torch.Generator,
        budget: str = "erk",
        output_layer: str | None = None,
        min_output_fan_in: int = 1,
        allow_empty_layers: bool = False,
        pattern: Pattern | None = None,
    ) -> "MaskSet":
        scores = {k: torch.rand(s, generator=generator) for k, s in shapes.items()}
        return cls.from_scores(scores, sparsity, budget, output_layer, min_output_fan_in, allow_empty_layers,
                               pattern=pattern)

    def prune(self, scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> "MaskSet":
        """Keep the `counts[layer]` best-scoring weights among those already kept (never regrows)."""
        out = {}
        for k, m in self._m.items():
            s = scores[k].detach().to("cpu", torch.float64).masked_fill(~m, float("-inf"))
            out[k] = _topk_mask(s, min(int(counts[k]), int(m.sum())), self.pattern)
        return MaskSet(out, self.output_layer, self.pattern)

    def grow(self, scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> "MaskSet":
        """Keep every kept weight and add the best-scoring pruned ones up to `counts[layer]` (never prunes)."""
        out = {}
        for k, m in self._m.items():
            s = torch.nan_to_num(scores[k].detach().to("cpu", torch.float64), nan=float("-inf"))
            out[k] = _topk_mask(s.masked_fill(m, float("inf")), max(int(counts[k]), int(m.sum())), self.pattern)
        return MaskSet(out, self.output_layer, self.pattern)

    def with_layers(self, masks: Mapping[str, torch.Tensor]) -> "MaskSet":
        """The same kind of mask (output layer, pattern) with some layers replaced."""
        return MaskSet({**self._m, **masks}, self.output_layer, self.pattern)

    def pattern_holds(self) -> bool:
        return self.pattern is None or all(holds(m, self.pattern) for m in self._m.values())

    def copy(self) -> "MaskSet":
        return MaskSet({k: v.clone() for k, v in self._m.items()}, self.output_layer, self.pattern)

    # -- measurements ---------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {k: int(v.sum()) for k, v in self._m.items()}

    def sizes(self) -> dict[str, int]:
        return {k: v.numel() for k, v in self._m.items()}

    def shapes(self) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in self._m.items()}

    def density(self) -> float:
        total = sum(self.sizes().values())
        return sum(self.counts().values()) / total if total else 1.0

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def layer_sparsity(self) -> dict[str, float]:
        return {k: 1.0 - int(v.sum()) / v.numel() for k, v in self._m.items()}

    def dead_units(self) -> dict[str, int]:
        """Per layer: output units (rows) with no kept incoming weight."""
        return {k: int((v.reshape(v.shape[0], -1).sum(1) == 0).sum()) for k, v in self._m.items() if v.dim() >= 2}

    def hash(self) -> str:
        if self._hash is None:
            h = hashlib.sha1()
            for k in sorted(self._m):
                h.update(k.encode())
                h.update(str(tuple(self._m[k].shape)).encode())
                h.update(np.packbits(self._m[k].numpy().ravel()).tobytes())
            self._hash = h.hexdigest()
        return self._hash

    def report(self) -> dict:
        return {
            "sparsity": self.sparsity(),
            "layers": {
                k: {"shape": list(v.shape), "kept": int(v.sum()), "sparsity": 1.0 - int(v.sum()) / v.numel()}
                for k, v in self._m.items()
            },
            "dead_units": self.dead_units(),
        }

    def validate(self, model: nn.Module, allow_empty_layers: bool = False) -> None:
        params = dict(model.named_parameters())
        for k, m in self._m.items():
            if k not in params:
                raise EvoPaiError(f"mask layer '{k}' is not a parameter of the model: use a mask made for this model")
            if tuple(params[k].shape) != tuple(m.shape):
                raise EvoPaiError(f"mask layer '{k}' has shape {tuple(m.shape)}, the model's is {tuple(params[k].shape)}")
            if not allow_empty_layers and not m.any():
                raise EvoPaiError(f"mask layer '{k}' prunes every weight: lower the sparsity or allow empty layers")

    # -- use with a model -----------------------------------------------------------
    def apply_(self, model: nn.Module, names: Mapping[str, str] | None = None) -> nn.Module:
        """Zero masked weights and keep them at zero (gradient hooks); layers matched by parameter name,
        dotted suffix or `names` (evo_pai/core/mask_formats.py); a mismatch is one error line."""
        from evo_pai.core.mask_formats import apply_mask

        return apply_mask(self._m, model, names)

    def to_torch_prune(self, model: nn.Module, names: Mapping[str, str] | None = None) -> nn.Module:
        """Attach as `torch.nn.utils.prune.custom_from_mask` (weight_orig + weight_mask buffers)."""
        from evo_pai.core.mask_formats import prune_with_torch

        return prune_with_torch(self._m, model, names)

    # -- files ----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save

        meta = {
            "format": "evo_pai.maskset/1",
            "output_layer": self.output_layer or "",
            "pattern": f"{self.pattern[0]}:{self.pattern[1]}" if self.pattern else "",
            "sparsity": json.dumps({"total": self.sparsity(), **self.layer_sparsity()}),
        }
        # Bytes first, then plain file I/O: a full disk is an OSError naming the file (not a SafetensorError).
        write_atomic(path, save({k: v.to(torch.uint8) for k, v in self._m.items()}, metadata=meta))

    def to_npz(self, path: str | Path) -> Path:
        """One boolean array per layer, keyed by parameter name (numpy only, no pickles)."""
        from evo_pai.core.mask_formats import save_npz

        return save_npz(self._m, path)

    @classmethod
    def from_npz(cls, path: str | Path) -> "MaskSet":
        from evo_pai.core.mask_formats import load_npz

        return cls(load_npz(path))

    @classmethod
    def load(cls, path: str | Path) -> "MaskSet":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "evo_pai.maskset/1":
                    raise EvoPaiError(f"'{path}' is not an evo-pai mask file (no evo_pai.maskset/1 header)")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except EvoPaiError:
            raise
        except Exception as exc:
            raise EvoPaiError(f"cannot read mask file '{path}': {exc}") from exc
        for k, t in tensors.items():
            if t.dtype != torch.uint8 or bool((t > 1).any()):
                raise EvoPaiError(f"mask file '{path}': layer '{k}' is not a 0/1 uint8 tensor")
        return cls({k: t.bool() for k, t in tensors.items()}, meta.get("output_layer") or None,
                   parse_pattern(meta.get("pattern") or None))


def pattern_caps(shapes: Mapping[str, tuple], pattern: Pattern | None) -> dict[str, int] | None:
    """Per layer, the most weights the pattern lets it keep (None: no pattern)."""
    return {k: max_keep(tuple(s), pattern) for k, s in shapes.items()} if pattern else None


def _topk_mask(scores: torch.Tensor, k: int, pattern: Pattern | None = None) -> torch.Tensor:
    """The k best scores; under an N:M pattern only among eligible positions (so at most k)."""
    flat = scores.detach().reshape(-1).to("cpu", torch.float64)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    k = max(0, min(int(k), flat.numel()))
    if pattern:
        allowed = eligible(scores, pattern).reshape(-1).nonzero().squeeze(1)
        k = min(k, allowed.numel())
        order = allowed[torch.sort(flat[allowed], descending=True, stable=True).indices[:k]]
        mask[order] = True
    elif k:
        # stable sort: ties go to the lower index, so equal scores give one answer everywhere
        order = torch.sort(flat, descending=True, stable=True).indices[:k]
        mask[order] = True
    return mask.reshape(scores.shape)


def _global_counts(scores: Mapping[str, torch.Tensor], keep: int, min_keep: int) -> dict[str, int]:
    names = list(scores)
    flat = torch.cat([scores[k].detach().reshape(-1).to("cpu", torch.float64) for k in names])
    keep_mask = _topk_mask(flat, keep)
    counts, start = {}, 0
    for k in names:
        n = scores[k].numel()
        counts[k] = max(min(min_keep, n), int(keep_mask[start : start + n].sum()))
        start += n
    return counts


def _ensure_fan_in(mask: torch.Tensor, scores: torch.Tensor, min_fan_in: int, pattern: Pattern | None = None) -> torch.Tensor:
    """Give every output row at least `min_fan_in` kept weights without changing the layer's count.

    A starved row takes its best-scored pruned weight; the row with the most kept weights
    gives up its worst-scored one. Rows are classes: a row with no input is a silenced class.
    """
    m = mask.clone().reshape(mask.shape[0], -1)
    s = scores.detach().to("cpu", torch.float64).reshape(m.shape).clone()
    s = torch.nan_to_num(s, nan=float("-inf"))
    need = min(min_fan_in, m.shape[1])
    if int(m.sum()) < need * m.shape[0]:
        return mask  # not enough weights in the layer to satisfy every row
    for row in range(m.shape[0]):
        while int(m[row].sum()) < need:
            free = ~m[row] if pattern is None else room(m[row : row + 1], pattern)[0]
            if not free.any():
                break  # the pattern leaves this row no slot
            cand = s[row].masked_fill(~free, float("-inf"))
            cand[free & (cand == float("-inf"))] = -1e300  # a free slot beats a taken one, whatever its score
            m[row, int(torch.argmax(cand))] = True
            donor = int(torch.argmax(m.sum(1)))
            give = s[donor].masked_fill(~m[donor], float("inf"))
            m[donor, int(torch.argmin(give))] = False
    return m.reshape(mask.shape)

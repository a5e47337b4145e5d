"""N:M sparsity patterns (`masks.pattern: "2:4"`): at most N kept of every M consecutive weights.

Groups run along the input dimension: a weight is viewed as (out, in·kh·kw) and each row is cut into
groups of M consecutive entries (a last, shorter group also keeps at most N). 2:4 is what NVIDIA's
sparse tensor cores and `torch.sparse.to_sparse_semi_structured` run. Every mask is made by ranking
scores (masks.py), so the pattern is enforced there, in one place: a position is *eligible* when it
ranks in the top N of its group; only eligible positions can be kept.
"""
from __future__ import annotations

import torch

from evo_pai.core.errors import EvoPaiError

Pattern = tuple[int, int]


def parse_pattern(text: str | None) -> Pattern | None:
    if text is None:
        return None
    try:
        n, m = (int(p) for p in str(text).split(":"))
    except ValueError:
        raise EvoPaiError(f"masks.pattern: '{text}' is not N:M (e.g. \"2:4\")") from None
    if not 1 <= n < m:
        raise EvoPaiError(f"masks.pattern: '{text}' needs 1 <= N < M (N kept of every M), e.g. \"2:4\"")
    return n, m


def _groups(t: torch.Tensor, m: int, fill) -> torch.Tensor:
    """(rows, groups, M) view of a weight-shaped tensor, the last group padded with `fill`."""
    rows = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
    pad = (-rows.shape[1]) % m
    if pad:
        rows = torch.cat([rows, torch.full((rows.shape[0], pad), fill, dtype=rows.dtype)], 1)
    return rows.reshape(rows.shape[0], -1, m)


def _ungroup(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    cols = like.reshape(like.shape[0], -1).shape[1] if like.dim() > 1 else like.numel()
    return g.reshape(g.shape[0], -1)[:, :cols].reshape(like.shape)


def eligible(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """True where a score ranks in the top N of its group (ties to the lower index) and is > -inf."""
    n, m = pattern
    s = torch.nan_to_num(scores.detach().to("cpu", torch.float64), nan=float("-inf"))
    g = _groups(s, m, float("-inf"))
    order = torch.sort(g, dim=2, descending=True, stable=True).indices[..., :n]
    top = torch.zeros_like(g, dtype=torch.bool).scatter_(2, order, True)
    return _ungroup(top, s) & (s > float("-inf"))


def room(mask: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """True at pruned positions whose group keeps fewer than N: adding one there keeps the pattern."""
    n, m = pattern
    g = _groups(mask.to(torch.int64), m, 0)
    free = (g.sum(2, keepdim=True) < n).expand_as(g)
    return _ungroup(free, mask) & ~mask


def holds(mask: torch.Tensor, pattern: Pattern) -> bool:
    n, m = pattern
    return bool((_groups(mask.to(torch.int64), m, 0).sum(2) <= n).all())


def max_keep(shape: tuple, pattern: Pattern) -> int:
    """The most weights a layer of this shape can keep under the pattern."""
    n, m = pattern
    rows = shape[0] if len(shape) > 1 else 1
    cols = int(torch.tensor(shape).prod()) // rows
    full, rest = divmod(cols, m)
    return rows * (full * n + min(n, rest))

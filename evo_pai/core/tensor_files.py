"""safetensors files that say what they are: a `format` tag in the metadata, checked on reading."""
from __future__ import annotations

from pathlib import Path

from evo_pai.core.errors import EvoPaiError


def read_tagged(path: str | Path, fmt: str, refusal: str) -> tuple[dict[str, str], dict]:
    """(metadata, tensors) of the safetensors file at `path`; EvoPaiError(refusal) when its metadata's
    `format` is not `fmt`. Unreadable files raise what safetensors raises: callers word that error."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != fmt:
            raise EvoPaiError(refusal)
        return meta, {k: f.get_tensor(k) for k in f.keys()}

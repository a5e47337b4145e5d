"""Files: the one atomic writer, and safetensors files that say what they are (a `format` tag in the
metadata, checked on reading)."""
from __future__ import annotations

import os
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


def write_atomic(path: str | Path, data: bytes) -> None:
    """Temp file + fsync + rename: a crash, a full disk or a read-only folder leaves the old file, and
    the OSError names `path` (not the temp file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)  # give back the space a full disk needs
        except OSError:
            pass
        if isinstance(exc, OSError):  # say which file could not be written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise

"""A run's mask for use elsewhere: `evo_pai.load_mask(run_dir)` and file exports.

The run folder keeps the mask as `mask.safetensors` (evo_pai.maskset/1: one uint8 0/1 tensor per
layer). `load_mask` accepts the folder, that file, or an `.npz` written by `export_mask`.
"""
from __future__ import annotations

from pathlib import Path

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet

MASK_FILE = "mask.safetensors"
EXPORT_FORMATS = ("npz", "safetensors")


def load_mask(run: str | Path) -> MaskSet:
    """The winning mask of a run folder (or a mask file: .safetensors or .npz)."""
    path = Path(run)
    if path.is_dir():
        if not (path / MASK_FILE).is_file():
            raise EvoPaiError(f"{path}: no {MASK_FILE} in this folder; pass a finished run folder of `evo-pai run`")
        path = path / MASK_FILE
    elif not path.is_file():
        raise EvoPaiError(f"{path}: no such run folder or mask file")
    return MaskSet.from_npz(path) if path.suffix == ".npz" else MaskSet.load(path)


def export_mask(run: str | Path, out: str | Path, fmt: str = "npz") -> Path:
    """Write a run's mask as `fmt` (npz: one boolean array per parameter name; safetensors: our format)."""
    if fmt not in EXPORT_FORMATS:
        raise EvoPaiError(f"mask format '{fmt}': choose one of {', '.join(EXPORT_FORMATS)}")
    mask, out = load_mask(run), Path(out)
    if fmt == "npz":
        return mask.to_npz(out)
    mask.save(out)
    return out

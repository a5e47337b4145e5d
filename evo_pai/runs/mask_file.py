"""A run's mask for use elsewhere: `evo_pai.load_mask(run_dir)` and file exports.

The run folder keeps the mask as `mask.safetensors` (evo_pai.maskset/1: one uint8 0/1 tensor per
layer). `load_mask` accepts the folder, that file, or an `.npz` written by `export_mask`.
"""
from __future__ import annotations

from pathlib import Path

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.runs.members import mask_file

MASK_FILE = "mask.safetensors"
EXPORT_FORMATS = ("npz", "safetensors")


def load_mask(run: str | Path, member: int | None = None) -> MaskSet:
    """The winning mask of a run folder (or front member N's, nsga2), or a mask file: .safetensors or .npz.
    The one reader of a run's masks (`evo_pai.load_mask`, `evo-pai export`)."""
    path = Path(run)
    if member is not None:
        return _member_mask(path, member)
    if path.is_dir():
        if not (path / MASK_FILE).is_file():
            raise EvoPaiError(f"{path}: no {MASK_FILE} in this folder; pass a finished run folder of `evo-pai run`")
        path = path / MASK_FILE
    elif not path.is_file():
        raise EvoPaiError(f"{path}: no such run folder or mask file")
    return MaskSet.from_npz(path) if path.suffix == ".npz" else MaskSet.load(path)


def _member_mask(run_dir: Path, member: int) -> MaskSet:
    path = run_dir / mask_file(member)
    if not path.is_file():
        folder = run_dir / "members"
        have = sorted(p.name.split(".")[0] for p in folder.glob("*.safetensors")
                      if not p.name.endswith(".model.safetensors")) if folder.is_dir() else []
        raise EvoPaiError(f"{run_dir}: no front member {member} (members: {', '.join(have) or 'none; a run with one answer'})")
    return MaskSet.load(path)


def export_mask(run: str | Path, out: str | Path, fmt: str = "npz") -> Path:
    """Write a run's mask as `fmt` (npz: one boolean array per parameter name; safetensors: our format)."""
    if fmt not in EXPORT_FORMATS:
        raise EvoPaiError(f"mask format '{fmt}': choose one of {', '.join(EXPORT_FORMATS)}")
    mask, out = load_mask(run), Path(out)
    if fmt == "npz":
        return mask.to_npz(out)
    mask.save(out)
    return out

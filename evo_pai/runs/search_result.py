"""What `evo_pai.search()` returns: the run folder's answer as Python objects."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from torch import nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.runs.mask_file import load_mask
from evo_pai.runs.members import model_file


def load_weights(model: nn.Module, path: Path) -> None:
    """The run's trained state_dict into `model`; a module of another shape is one line."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise EvoPaiError(f"apply: {path} is missing (an untrained front member?); use weights='init' to only mask")
    state = load_file(str(path))
    own = model.state_dict()
    wrong = [k for k in state if k not in own or tuple(own[k].shape) != tuple(state[k].shape)]
    missing = [k for k in own if k not in state]
    if wrong or missing:
        raise EvoPaiError(f"apply: this module is not the one the run trained (parameters not matched: "
                          f"{', '.join((wrong + missing)[:5])}); pass that module, or weights='init' to only mask")
    model.load_state_dict(state)


@dataclass
class Member:
    """One answer of a search with several (nsga2's front)."""

    index: int
    sparsity: float
    val_accuracy: float | None  # after the search's burst
    test_accuracy: float | None  # after its final training (None: not trained, see final.members)
    mask: MaskSet


@dataclass
class SearchResult:
    """`.mask` (MaskSet), `.summary` (summary.json's dict), `.history` (log.jsonl's records), `.front`
    (nsga2's members, else []), `.run_dir`; `.apply(model)`, `.export(format)`, `.save(path)`."""

    run_dir: Path
    summary: dict
    notes: list[str] = field(default_factory=list)  # what of the inputs was used and what was not
    model: object = None  # what was handed to search(): export rebuilds the network from it
    _temporary: object = field(default=None, repr=False)  # removes a temporary run folder with this result

    @property
    def mask(self) -> MaskSet:
        return load_mask(self.run_dir)

    @property
    def history(self) -> list[dict]:
        path = self.run_dir / "log.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    @property
    def front(self) -> list[Member]:
        return [Member(r["member"], r["sparsity"], r.get("val_accuracy"), r.get("test_accuracy"),
                       load_mask(self.run_dir, r["member"])) for r in self.summary.get("members", [])]

    def apply(self, model: nn.Module, weights: str = "trained", member: int | None = None,
              names: Mapping[str, str] | None = None) -> nn.Module:
        """Prune `model` (the module searched, or one like it) in place and return it.

        weights="trained": load the run's trained weights (its final training), so `model` scores what
        the summary says; "init": keep `model`'s own weights (pruning at initialization: train it yourself).
        Pruned weights are zeroed and kept at zero by gradient hooks; mask layers are matched to the
        module's parameters by name or dotted suffix, or through `names` (as `load_mask(...).apply_`)."""
        mask = self.mask if member is None else load_mask(self.run_dir, member)
        if weights not in ("trained", "init"):
            raise EvoPaiError(f"apply: weights must be 'trained' or 'init', got {weights!r}")
        if weights == "trained":
            load_weights(model, self.run_dir / (model_file(member) if member is not None else "model.safetensors"))
        return mask.apply_(model, names)

    def export(self, format: str = "compact", out: str | Path | None = None, member: int | None = None) -> dict:
        """`evo-pai export` of this run (compact, csr, torch-prune, npz, semi-structured, pruned): what it wrote."""
        from evo_pai.runs.python_export import export

        return export(self, format=format, out=out, member=member)

    def save(self, path: str | Path) -> "SearchResult":
        """Copy the run folder to `path` (a new folder) and point this result at it; a temporary folder is
        then removed. The copy is an ordinary run folder: `evo-pai export` / `report` read it."""
        path = Path(path)
        if path.exists():
            raise EvoPaiError(f"save: '{path}' exists; choose a new folder")
        shutil.copytree(self.run_dir, path)
        self.run_dir = path
        if self._temporary is not None:
            self._temporary()  # weakref.finalize: removes the temporary folder now, once
            self._temporary = None
        return self

    def __repr__(self) -> str:
        s = self.summary
        acc = s.get("test_accuracy")
        acc = f"test {100 * acc:.2f} %" if acc is not None else f"val {100 * (s.get('val_accuracy') or 0):.2f} % (no test data)"
        if s.get("diverged"):  # no accuracy is a result: say where the training went non-finite
            acc = f"diverged in {s['diverged_at']['stage']}, epoch {s['diverged_at'].get('epoch')}"
        return (f"SearchResult({s.get('method')} on {s.get('model')}: sparsity {100 * s.get('sparsity', 0):.1f} %, "
                f"{acc}, run_dir='{self.run_dir}')")

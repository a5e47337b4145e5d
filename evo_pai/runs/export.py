"""`evo-pai export RUN_DIR --format F [--member N]`: turn a found mask into a deployable network.

Formats (written to RUN_DIR/export/ unless --out says otherwise):
- `compact`: dead units removed, a smaller dense network (evo_pai/deploy/compact.py) -> `evo_pai.load_compact(path)`
- `csr`: Linear weights as torch.sparse_csr tensors (evo_pai/deploy/csr.py) -> `evo_pai.load_csr(path)`
- `torch-prune`: the model with torch.nn.utils.prune masks (weight_orig + weight_mask) -> `evo_pai.load_torch_prune(path)`
- `npz`: the mask alone, one bool array per layer (numpy) -> `numpy.load(path)`
- `semi-structured`: 2:4 masks for NVIDIA sparse tensor cores (CUDA only) -> `evo_pai.load_semi_structured(path)`
- `pruned`: runs with masks.granularity: channel — the dropped channels removed by torch-pruning, the model's
  own class (evo_pai/deploy/pruned.py) -> `evo_pai.load_pruned(path)`; a read-back off by more than
  PRUNED_TOLERANCE (relative) is not written
Every export that carries weights is checked after writing: the file is read back and its outputs are
compared with the masked network's on a seeded random batch; the largest difference is reported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evo_pai.deploy.compact import compact_model, load_compact, save_compact, widths
from evo_pai.core.config import Config, load_config, to_dict
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.models.networks import build_model
from evo_pai.deploy.pruned import load_pruned, pruned_from_mask, save_pruned
from evo_pai.deploy.csr import csr_model, load_csr, masked_copy, save_csr, semi_structured_model, semi_structured_supported
from evo_pai.training.tasks import dtype_of
from evo_pai.core.registry import MODEL
from evo_pai.models.user_model import is_user_name, not_rebuildable, rebuild
from evo_pai.runs.components import load_components
from evo_pai.runs.mask_file import load_mask
from evo_pai.runs.members import model_file

FORMATS = ("compact", "csr", "torch-prune", "npz", "semi-structured", "pruned")
SUFFIX = {"compact": ".safetensors", "csr": ".safetensors", "torch-prune": ".pt", "npz": ".npz",
          "semi-structured": ".safetensors", "pruned": ".safetensors"}
PRUNED_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}  # of the masked network's largest |output|
PRUNE_FORMAT = "evo_pai.torch_prune/1"


@dataclass
class Source:
    """What an export reads from a run folder: the config, one mask and (if trained) its weights."""

    cfg: Config
    mask: MaskSet
    state: dict[str, torch.Tensor] | None
    input_shape: tuple[int, ...]
    num_classes: int
    label: str  # "run" or "member-NN"

    def model(self) -> nn.Module:
        torch.manual_seed(self.cfg.seed)  # θ0 when no trained weights exist
        net = build_model(self.cfg.model, self.input_shape, self.num_classes).to(dtype_of(self.cfg))
        if self.state is not None:
            try:
                net.load_state_dict(self.state)
            except RuntimeError as exc:  # e.g. evo_pai.export(run, model=<another network>)
                raise EvoPaiError(f"model: {type(net).__name__} does not fit this run's trained weights "
                                  f"({' '.join(str(exc).split())[:200]}); pass the module the run searched") from None
        return net.eval()


def load_source(run_dir: Path, member: int | None = None) -> Source:
    from safetensors.torch import load_file

    if not (run_dir / "config.yaml").is_file():
        raise EvoPaiError(f"{run_dir}: not a run folder (no config.yaml); pass a folder written by `evo-pai run`")
    cfg = load_config(run_dir / "config.yaml")
    load_components(cfg.plugins)  # a plugin model is built from the plugins the run's config names
    if is_user_name(cfg.model.name) and cfg.model.name not in MODEL:
        raise not_rebuildable(cfg.model.name, f"export it from Python: evo_pai.export('{run_dir}', model=<that module>, "
                                              "format=...)")
    mask = load_mask(run_dir, member)
    weights = run_dir / (model_file(member) if member is not None else "model.safetensors")
    state = load_file(str(weights)) if weights.is_file() else None
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    if "input_shape" in summary:
        shape, classes = tuple(summary["input_shape"]), int(summary["num_classes"])
    else:  # an older run folder: the dataset says
        from evo_pai.data.datasets import load_data

        data = load_data(cfg.data)
        shape, classes = tuple(data.input_shape), data.num_classes
    return Source(cfg, mask, state, shape, classes, f"member-{member:02d}" if member is not None else "run")


def check_outputs(reference: nn.Module, exported: nn.Module, input_shape, dtype, device="cpu") -> float:
    """Largest |difference| of the two networks' outputs on a seeded random batch of 64."""
    x = torch.randn(64, *input_shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with torch.no_grad():
        return float((reference(x) - exported(x)).abs().max())


def export(run_dir: Path, fmt: str, member: int | None = None, out: Path | None = None) -> dict:
    """Write one export; returns facts for the CLI to print (path, sizes, output check)."""
    if fmt not in FORMATS:
        raise EvoPaiError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    src = load_source(run_dir, member)
    if fmt == "semi-structured" and semi_structured_supported():
        raise EvoPaiError(f"--format semi-structured {semi_structured_supported()}")
    if fmt == "pruned" and src.cfg.masks.granularity != "channel":
        raise EvoPaiError(f"--format pruned: {run_dir} masks single weights (masks.granularity: weight), which removes "
                          "no channel; search with masks.granularity: channel, or export this run with --format compact / csr")
    if fmt not in ("npz",) and src.state is None:
        raise EvoPaiError(f"{run_dir}: {src.label} has no trained weights (untrained front member? see final.members); "
                          "export its mask with --format npz, or train it")
    path = out or run_dir / "export" / f"{fmt.replace('-', '_')}{'' if member is None else f'-{src.label}'}{SUFFIX[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"path": str(path), "format": fmt, "source": src.label, "sparsity": src.mask.sparsity()}
    if fmt == "npz":
        np.savez_compressed(path, **{k: v.numpy() for k, v in src.mask.items()})
        return info
    model = src.model()
    reference = masked_copy(model, src.mask)
    dtype = dtype_of(src.cfg)
    if fmt == "compact":
        net = compact_model(model, src.mask)
        save_compact(net, path, {"source": src.label, "run": str(run_dir), "input_shape": list(src.input_shape)})
        info["widths"] = widths(net)
        info["max_abs_diff"] = check_outputs(reference, load_compact(path), src.input_shape, dtype)
    elif fmt == "csr":
        save_csr(csr_model(model, src.mask), path, to_dict(src.cfg)["model"], src.input_shape, src.num_classes,
                 src.cfg.plugins)
        info["max_abs_diff"] = check_outputs(reference, load_csr(path, user_model(src)), src.input_shape, dtype)
    elif fmt == "torch-prune":
        pruned = src.mask.to_torch_prune(src.model())
        torch.save({"format": PRUNE_FORMAT, "model": to_dict(src.cfg)["model"], "input_shape": list(src.input_shape),
                    "num_classes": src.num_classes, "state_dict": pruned.state_dict(), "plugins": src.cfg.plugins}, path)
        info["max_abs_diff"] = check_outputs(reference, load_torch_prune(path, user_model(src)), src.input_shape, dtype)
    elif fmt == "pruned":
        info.update(export_pruned(src, model, reference, path, run_dir))
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path),
                  metadata={"format": "evo_pai.semi_structured/1", "model": json.dumps(to_dict(src.cfg)["model"]),
                            "input_shape": json.dumps(list(src.input_shape)), "num_classes": str(src.num_classes),
                            "pattern": "2:4" if src.mask.pattern == (2, 4) else "", "plugins": json.dumps(src.cfg.plugins)})
        net, converted = load_semi_structured(path, src.mask, user_model(src))
        info["converted"] = converted
        info["max_abs_diff"] = check_outputs(reference.to("cuda", torch.float16), net, src.input_shape, torch.float16, "cuda")
    return info


def export_pruned(src: Source, model: nn.Module, reference: nn.Module, path: Path, run_dir: Path) -> dict:
    """Write the physically pruned network, read it back and compare with the masked one (relative to its
    largest |output|); a file that does not reproduce it is removed and refused."""
    dtype = dtype_of(src.cfg)
    net, groups, facts = pruned_from_mask(reference, src.mask, src.input_shape)  # masked weights: zeros stay zeros
    save_pruned(net, path, to_dict(src.cfg)["model"], src.input_shape, src.num_classes, groups, src.cfg.plugins,
                {"source": src.label, "run": str(run_dir)})
    x = torch.randn(64, *src.input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    loaded = load_pruned(path, user_model(src))
    with torch.no_grad():
        want, got = reference(x), loaded(x)
    diff = float((want - got).abs().max())
    rel = diff / max(float(want.abs().max()), 1e-30)
    tol = PRUNED_TOLERANCE.get(dtype, 1e-3)
    if not rel <= tol:
        path.unlink(missing_ok=True)
        raise EvoPaiError(f"--format pruned: the pruned network read back differs from the masked one by {rel:.2e} "
                          f"of its output scale (tolerance {tol:g}); nothing written — report this model")
    return {**facts, "max_abs_diff": diff, "max_rel_diff": rel,
            "params": sum(p.numel() for p in net.parameters()), "dense_params": sum(p.numel() for p in model.parameters())}


def user_model(src: Source) -> nn.Module | None:
    """The module of a run made by evo_pai.search() (registered in this process), for the read-back check."""
    return src.model() if is_user_name(src.cfg.model.name) else None


def load_torch_prune(path, model: nn.Module | None = None) -> nn.Module:
    """The model `evo-pai export --format torch-prune` wrote, with its torch.nn.utils.prune masks attached;
    the run's plugins are imported; a run of `evo_pai.search()` on a module needs that module: `model=`."""
    from torch.nn.utils import prune

    try:
        blob = torch.load(str(path), weights_only=True)  # never unpickle code from a file a user hands in
        if not isinstance(blob, dict) or blob.get("format") != PRUNE_FORMAT:
            raise EvoPaiError(f"'{path}' is not a torch-prune export written by `evo-pai export --format torch-prune`")
        net = rebuild(blob["model"], blob["input_shape"], blob["num_classes"], blob.get("plugins", []), model,
                      "evo_pai.load_torch_prune")
        state = blob["state_dict"]
    except EvoPaiError:
        raise
    except Exception as exc:
        raise EvoPaiError(f"cannot read torch-prune export '{path}': {exc}") from exc
    modules = dict(net.named_modules())
    for key in state:
        if key.endswith("_mask"):
            mod, _, pname = key[: -len("_mask")].rpartition(".")
            prune.identity(modules[mod], pname)  # creates weight_orig / weight_mask to load into
    net = net.to(next(iter(state.values())).dtype)
    net.load_state_dict(state)
    with torch.no_grad():  # prune's hooks recompute weight = orig * mask only when the module itself runs:
        for key in state:  # MultiheadAttention reads out_proj.weight without calling out_proj
            if key.endswith("_mask"):
                mod, _, pname = key[: -len("_mask")].rpartition(".")
                setattr(modules[mod], pname, getattr(modules[mod], pname + "_orig") * state[key])
    return net.eval()


def load_semi_structured(path, mask: MaskSet | None = None, model: nn.Module | None = None) -> tuple[nn.Module, list[str]]:
    """A `--format semi-structured` export on CUDA (fp16), 2:4 Linear layers converted where the kernels accept them."""
    from safetensors.torch import load_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "evo_pai.semi_structured/1":
        raise EvoPaiError(f"'{path}' is not a semi-structured export written by `evo-pai export`")
    state = load_file(str(path))
    net = rebuild(json.loads(meta["model"]), json.loads(meta["input_shape"]), int(meta["num_classes"]),
                  json.loads(meta.get("plugins", "[]")), model, "evo_pai.load_semi_structured")
    net.load_state_dict(state)
    mask = mask or MaskSet({k: v != 0 for k, v in state.items() if k.endswith("weight")}, None, (2, 4))
    return semi_structured_model(net, mask)

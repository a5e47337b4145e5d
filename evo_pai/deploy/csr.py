"""Sparse storage of a masked network's Linear layers: CSR on any device, 2:4 semi-structured on CUDA.

`csr_model` swaps every nn.Linear of a masked model for a `CSRLinear` whose weight is a
`torch.sparse_csr` tensor (only the kept weights are stored and multiplied); other layers (convs,
attention's weights) stay dense and masked. `semi_structured_model` does the same with `torch.sparse.to_sparse_semi_structured`
(NVIDIA sparse tensor cores: 2:4 masks, fp16/bf16, compute capability >= 8.0) for the layers whose
shape the kernels accept; the others stay dense. Outputs equal the masked model's up to float
rounding (CSR: summation order; semi-structured: fp16).
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.core.tensor_files import read_tagged


class CSRLinear(nn.Module):
    """y = W x + b with W a sparse CSR tensor (out, in)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and tested here
            warnings.simplefilter("ignore", UserWarning)
            self.weight = nn.Parameter(weight.to_sparse_csr(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]  # (batch, tokens, ...): every leading dim is a row
        y = torch.sparse.mm(self.weight, x.reshape(-1, x.shape[-1]).t()).t()  # CSR (out, in) @ dense (in, rows)
        y = y + self.bias if self.bias is not None else y
        return y.reshape(*lead, y.shape[-1])


def masked_copy(model: nn.Module, mask: MaskSet, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of `model` with `state` loaded and the masked weights zeroed, in eval mode."""
    net = copy.deepcopy(model)
    if state is not None:
        net.load_state_dict(state)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for k, m in mask.items():
            params[k].mul_(m.to(params[k].device, params[k].dtype))
    return net.eval()


def _replace_linears(net: nn.Module, make) -> list[str]:
    done = []
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            continue  # its out_proj is never called as a module (the attention reads .weight): stays dense, masked
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                new = make(child)
                if new is not None:
                    setattr(module, child_name, new)
                    done.append(f"{name}.{child_name}" if name else child_name)
    return done


def csr_model(model: nn.Module, mask: MaskSet, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    net = masked_copy(model, mask, state)
    with torch.no_grad():
        _replace_linears(net, lambda lin: CSRLinear(lin.weight.detach(), lin.bias))
    return net


def semi_structured_supported() -> str | None:
    """None when this machine can run 2:4 semi-structured kernels, else the one-line reason."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (NVIDIA sparse tensor cores); this machine has none"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"needs compute capability >= 8.0 (Ampere or newer); this GPU has {major}.x"
    return None


class SemiStructuredLinear(nn.Module):
    def __init__(self, lin: nn.Linear):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.weight = nn.Parameter(to_sparse_semi_structured(lin.weight.detach()), requires_grad=False)
        self.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False) if lin.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def semi_structured_model(model: nn.Module, mask: MaskSet, state: dict[str, torch.Tensor] | None = None,
                          dtype: torch.dtype = torch.float16) -> tuple[nn.Module, list[str]]:
    """The masked model on CUDA in `dtype`, Linear layers as 2:4 semi-structured tensors where the
    kernels accept their shape; returns (module, converted layer names)."""
    why = semi_structured_supported()
    if why:
        raise EvoPaiError(f"--format semi-structured {why}")
    if mask.pattern != (2, 4):
        raise EvoPaiError("--format semi-structured needs a 2:4 mask: run the search with masks.pattern: \"2:4\"")
    net = masked_copy(model, mask, state).to("cuda", dtype)

    def convert(lin: nn.Linear):
        try:
            return SemiStructuredLinear(lin)
        except (RuntimeError, ValueError):  # shape or dtype the kernels refuse: stays dense
            return None

    with torch.no_grad():
        converted = _replace_linears(net, convert)
    return net, converted


CSR_FORMAT = "evo_pai.csr/1"


def save_csr(net: nn.Module, path, model: dict, input_shape, num_classes: int, plugins=()) -> None:
    """Linear weights as CSR triplets (crow, col, values), everything else dense; the architecture in metadata."""
    import json

    from safetensors.torch import save_file

    tensors, csr = {}, []
    for name, mod in net.named_modules():
        if isinstance(mod, CSRLinear):
            w = mod.weight
            tensors.update({f"{name}.weight.crow": w.crow_indices(), f"{name}.weight.col": w.col_indices(),
                            f"{name}.weight.values": w.values()})
            csr.append({"name": name, "shape": list(w.shape)})
    skip = {f"{c['name']}.weight" for c in csr}
    tensors.update({k: v for k, v in net.state_dict().items() if k not in skip})
    meta = {"format": CSR_FORMAT, "model": json.dumps(model), "input_shape": json.dumps(list(input_shape)),
            "num_classes": str(num_classes), "csr": json.dumps(csr), "plugins": json.dumps(list(plugins))}
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def load_csr(path, model: nn.Module | None = None) -> nn.Module:
    """The module `evo-pai export --format csr` wrote: `evo_pai.load_csr("export/csr.safetensors")`; the run's
    plugins are imported; a run of `evo_pai.search()` on a module needs that module: `model=`."""
    import json

    from evo_pai.models.user_model import rebuild

    try:
        meta, tensors = read_tagged(path, CSR_FORMAT, f"'{path}' is not a CSR network written by `evo-pai export --format csr`")
        net = rebuild(json.loads(meta["model"]), json.loads(meta["input_shape"]), int(meta["num_classes"]),
                      json.loads(meta.get("plugins", "[]")), model, "evo_pai.load_csr")
        layers = json.loads(meta["csr"])
    except EvoPaiError:
        raise
    except Exception as exc:
        raise EvoPaiError(f"cannot read CSR network '{path}': {exc}") from exc
    dense = {k: v for k, v in tensors.items() if not k.endswith((".weight.crow", ".weight.col", ".weight.values"))}
    dtype = next(v.dtype for v in dense.values() if v.is_floating_point())
    net = net.to(dtype)
    net.load_state_dict({**net.state_dict(), **dense})
    modules = dict(net.named_modules())
    for c in layers:
        n = c["name"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            w = torch.sparse_csr_tensor(tensors[f"{n}.weight.crow"], tensors[f"{n}.weight.col"],
                                        tensors[f"{n}.weight.values"], size=tuple(c["shape"]))
        parent, _, child = n.rpartition(".")
        lin = modules[n]
        setattr(modules[parent] if parent else net, child, CSRLinear(w.to_dense(), lin.bias))
    return net.eval()

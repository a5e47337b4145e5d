"""Compaction and sparse export: outputs equal the masked network's; dead units really go.

Tolerance: compaction folds constant units into biases and reorders sums; it runs in float64 and
casts back, so float32 outputs agree to 1e-5 relative to the output scale and float64 to 1e-12.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli_inproc
from evo_pai.deploy.compact import compact_flops, compact_model, load_compact, save_compact, widths
from evo_pai.core.config import ModelConfig, build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.models.networks import build_model, count_flops, output_layer_name, prunable_names
from evo_pai.runs.export import export, load_torch_prune
from evo_pai.runs.runner import run_experiment
from evo_pai.deploy.csr import csr_model, load_csr, semi_structured_model
from evo_pai.models.units import links

CASES = [("mlp", (1, 28, 28)), ("lenet5", (1, 28, 28)), ("lenet5", (3, 32, 32)), ("conv4", (3, 16, 16))]


def model_and_mask(name, shape, sparsity, seed=0, dtype=torch.float32, budget="uniform"):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name=name), shape, 10).to(dtype)
    with torch.no_grad():  # biases large enough that a unit with no input matters (relu(b) > 0)
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0.0, 0.5)
    shapes = {k: tuple(dict(model.named_parameters())[k].shape) for k in prunable_names(model)}
    mask = MaskSet.random(shapes, sparsity, torch.Generator().manual_seed(seed + 1), budget, output_layer_name(model))
    return model, mask


def masked(model, mask):
    net = copy.deepcopy(model)
    mask.apply_(net)
    return net.eval()


def outputs(net, shape, dtype=torch.float32):
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("name, shape", CASES)
@pytest.mark.parametrize("sparsity", [0.9, 0.98])
def test_compact_equals_masked_network(name, shape, sparsity):
    model, mask = model_and_mask(name, shape, sparsity)
    net = compact_model(model, mask)
    a, b = outputs(masked(model, mask), shape), outputs(net, shape)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max())), float((a - b).abs().max())
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in model.parameters())
    assert 0 < compact_flops(net, shape) < count_flops(model, shape)["dense"]


def test_constant_units_are_folded_exactly_float64():
    """Units with outputs but no input are removed and their relu(b) folded into the next bias."""
    model, mask = model_and_mask("mlp", (1, 8, 8), 0.0, dtype=torch.float64)
    m = {k: v.clone() for k, v in mask.items()}
    m["layers.0.weight"][:150] = False  # 150 of 300 first-layer units lose every input, keep their outputs
    m["layers.2.weight"][:, 200:] = False  # and 100 more lose every output
    mask = mask.with_layers(m)
    net = compact_model(model, mask)
    assert widths(net)[0] == 50  # 300 - 150 constant - 100 without output
    a, b = outputs(masked(model, mask), (1, 8, 8), torch.float64), outputs(net, (1, 8, 8), torch.float64)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert float(torch.relu(model.layers[0].bias[:150].detach()).sum()) > 1  # the fold mattered


def test_dead_units_propagate_backwards_and_inputs_are_dropped():
    model, mask = model_and_mask("mlp", (1, 8, 8), 0.0)
    m = {k: v.clone() for k, v in mask.items()}
    m["layers.4.weight"][:, 10:] = False  # the output layer reads only 10 second-layer units
    m["layers.2.weight"][:, 30:] = False  # those read only 30 first-layer units
    m["layers.0.weight"][:, 20:] = False  # which read only 20 pixels
    net = compact_model(model, mask.with_layers(m))
    assert widths(net) == [30, 10, 10]
    assert net.spec["layers"][1] == {"type": "select", "size": 20}  # 44 of 64 pixels go: worth a gather


def test_conv_channel_into_padded_conv_is_kept_when_its_constant_is_not_zero():
    model, mask = model_and_mask("conv4", (3, 8, 8), 0.0)
    m = {k: v.clone() for k, v in mask.items()}
    m["features.0.weight"][:8] = False  # 8 channels without input, relu(b) mostly > 0; next conv pads
    net = compact_model(model, mask.with_layers(m))
    alive_const = int((torch.relu(model.features[0].bias[:8]) > 0).sum())
    assert widths(net)[0] == 64 - 8 + alive_const
    a, b = outputs(masked(model, mask.with_layers(m)), (3, 8, 8)), outputs(net, (3, 8, 8))
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))


def test_resnet_refused_in_one_line():
    model = build_model(ModelConfig(name="resnet20"), (3, 8, 8), 10)
    with pytest.raises(EvoPaiError, match="residual"):
        links(model)


def test_save_load_compact_roundtrip(tmp_path):
    model, mask = model_and_mask("lenet5", (1, 28, 28), 0.95)
    net = compact_model(model, mask)
    save_compact(net, tmp_path / "c.safetensors")
    back = load_compact(tmp_path / "c.safetensors")
    assert torch.equal(outputs(net, (1, 28, 28)), outputs(back, (1, 28, 28)))
    with pytest.raises(EvoPaiError, match="not a compact network"):
        mask.save(tmp_path / "m.safetensors")
        load_compact(tmp_path / "m.safetensors")


@pytest.mark.parametrize("name, shape", CASES[:2])
def test_csr_module_equals_masked_network(name, shape):
    model, mask = model_and_mask(name, shape, 0.95)
    net = csr_model(model, mask)
    assert any(p.layout == torch.sparse_csr for p in net.parameters())
    a, b = outputs(masked(model, mask), shape), outputs(net, shape)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    raw = {"seed": 0, "data": {"name": "digits"}, "model": {"name": "mlp", "params": {"hidden": [64, 32]}},
           "search": {"method": "magnitude", "sparsity": 0.9}, "final": {"epochs": 1}, "evaluation": {"device": "cpu"}}
    run_experiment(build_config(raw), out)
    return out


def reference_forward(run: Path, x: torch.Tensor) -> torch.Tensor:
    """The run's MLP by hand from its files: Linear (weight ⊙ mask) + ReLU, the last Linear without."""
    from safetensors.torch import load_file

    state, mask = load_file(str(run / "model.safetensors")), MaskSet.load(run / "mask.safetensors")
    layers = sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".weight")}, key=lambda n: int(n.split(".")[-1]))
    h = x.flatten(1)
    for i, layer in enumerate(layers):
        w = state[f"{layer}.weight"] * mask[f"{layer}.weight"].to(state[f"{layer}.weight"].dtype)
        h = torch.nn.functional.linear(h, w, state[f"{layer}.bias"])
        h = torch.relu(h) if i < len(layers) - 1 else h
    return h


@pytest.mark.parametrize("fmt", ["compact", "csr", "torch-prune"])
def test_export_formats_reload_with_the_masked_outputs(finished_run, fmt):
    """The reloaded export against a forward written here from the run's model and mask files (not the
    export's own check): the same outputs on random inputs."""
    info = export(finished_run, fmt)
    loader = {"compact": load_compact, "csr": load_csr, "torch-prune": load_torch_prune}[fmt]
    net = loader(info["path"])
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    want = reference_forward(finished_run, x)
    with torch.no_grad():
        got = net.eval()(x)
    assert got.shape == want.shape == (32, 10)
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))

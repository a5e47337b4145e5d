"""Compaction and sparse export: outputs equal the masked network's; dead units really go.

Tolerance: compaction folds constant units into biases and reorders sums; it runs in float64 and
casts back, so float32 outputs agree to 1e-5 relative to the output scale and float64 to 1e-12.
"""
from __future__ import annotations

import copy
import json

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


@pytest.mark.parametrize("fmt", ["compact", "csr", "torch-prune"])
def test_export_formats_reload_with_the_masked_outputs(finished_run, fmt):
    info = export(finished_run, fmt)
    assert info["max_abs_diff"] < 1e-4
    loader = {"compact": load_compact, "csr": load_csr, "torch-prune": load_torch_prune}[fmt]
    assert loader(info["path"]) is not None


def test_export_npz_holds_the_mask(finished_run):
    info = export(finished_run, "npz")
    arrays = np.load(info["path"])
    mask = MaskSet.load(finished_run / "mask.safetensors")
    assert set(arrays.files) == set(mask) and all(np.array_equal(arrays[k], mask[k].numpy()) for k in mask)


def test_export_refuses_a_folder_without_mask_in_one_line(capsys, tmp_path, finished_run):
    (tmp_path / "config.yaml").write_text((finished_run / "config.yaml").read_text())
    code, _, err = cli_inproc(capsys, "export", str(tmp_path), "--format", "compact")
    assert code == 2 and "no mask.safetensors" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli_inproc(capsys, "export", str(finished_run), "--format", "onnx")
    assert code == 2 and "choose one of" in err
    code, out, _ = cli_inproc(capsys, "export", str(finished_run), "--format", "compact")
    assert code == 0 and "evo_pai.load_compact" in out and "max |diff|" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured kernels need a CUDA GPU")
def test_semi_structured_export_on_cuda():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", params={"hidden": [256, 128]}), (1, 16, 16), 10)
    shapes = {k: tuple(dict(model.named_parameters())[k].shape) for k in prunable_names(model)}
    mask = MaskSet.random(shapes, 0.5, torch.Generator().manual_seed(0), "uniform", None, 0, pattern=(2, 4))
    net, converted = semi_structured_model(model, mask)
    assert converted  # at least the 256x256 layer runs on sparse tensor cores
    ref = masked(model, mask).to("cuda", torch.float16)
    x = torch.randn(64, 1, 16, 16, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        assert torch.allclose(ref(x), net(x), atol=5e-2, rtol=1e-2)


def test_summary_records_shapes_for_export(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["input_shape"] == [1, 8, 8] and summary["num_classes"] == 10


def test_inference_plan_sees_changed_weights():
    """CompactNet's prepared forward follows in-place updates, reassigned parameters, loaded state dicts
    and .to(): it equals nn.Sequential's forward over the same layers every time."""
    model, mask = model_and_mask("mlp", (1, 28, 28), 0.9)
    net = compact_model(model, mask)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    x0 = x.clone()

    def both():
        with torch.no_grad():
            fast, slow = net(x), net.layers(x)
        assert torch.allclose(fast, slow, atol=1e-5), float((fast - slow).abs().max())
        assert torch.equal(x, x0)
        return fast

    before = both()
    first = next(m for m in net.layers if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        first.weight.mul_(2.0)  # in place: version counter
    assert not torch.allclose(both(), before)
    first.weight = torch.nn.Parameter(first.weight.detach() * 0.5)  # a new tensor
    assert torch.allclose(both(), before, atol=1e-5)
    net.load_state_dict({k: v * 0 for k, v in net.state_dict().items()})
    assert float(both().abs().max()) == 0.0
    net.double()
    with torch.no_grad():
        assert net(x.double()).dtype == torch.float64

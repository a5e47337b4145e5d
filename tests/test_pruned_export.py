"""`evo-pai export --format pruned`: the physically pruned network of a channel-granularity run,
reloaded without the search, computes what the masked network computes; what is refused."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import evo_pai
from conftest import cli_inproc, tiny_raw
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.deploy.csr import masked_copy
from evo_pai.deploy.pruned import FORMAT
from evo_pai.models.vgg import vgg16
from evo_pai.runs.export import export, load_source
from evo_pai.runs.runner import run_experiment

CHANNEL_SEARCH = {"method": "combined", "sparsity": 0.5, "population": 2, "generations": 1, "burst_epochs": 0.25,
                  "initial_sparsity": 0.3, "mutation": "width", "crossover": "group_uniform", "explore_mutation": None}


def channel_raw(model: dict) -> dict:
    return {"seed": 0, "data": {"name": "digits", "train_subset": 256}, "model": model,
            "masks": {"granularity": "channel", "macs_tolerance": 0.05}, "search": dict(CHANNEL_SEARCH),
            "train": {"batch_size": 64}, "final": {"epochs": 1}, "evaluation": {"device": "cpu"}}


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """A short channel-mode search of ResNet-20 (width 4, projection shortcuts) on 8x8 digits."""
    out = tmp_path_factory.mktemp("r20")
    run_experiment(build_config(channel_raw({"name": "resnet20", "params": {"width": 4, "shortcut": "projection"}})), out)
    return out


def conv_channels(net: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def test_resnet20_projection_export_reload_same_outputs(resnet_run, capsys):
    code, out, err = cli_inproc(capsys, "export", str(resnet_run), "--format", "pruned")
    assert code == 0, err
    path = resnet_run / "export" / "pruned.safetensors"
    assert f'evo_pai.load_pruned("{path}")' in out and "channels per group after pruning" in out

    src = load_source(resnet_run)
    dense = src.model()
    masked = masked_copy(dense, src.mask)
    net = evo_pai.load_pruned(path)  # a fresh process would do just this: registry model + spec + weights
    assert type(net) is type(dense)
    # really smaller: fewer channels and parameters, and the widths the mask keeps
    assert sum(conv_channels(net)) < sum(conv_channels(dense))
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in dense.parameters())
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        groups = json.loads(f.metadata()["groups"])
    modules = dict(net.named_modules())
    for g in groups:
        assert modules[g["root"]].weight.shape[0] == len(g["kept"])  # each group root keeps what the spec says
    assert any(len(g["kept"]) < g["channels"] for g in groups)
    x = torch.randn(32, *src.input_shape, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():  # load_pruned and the network work under inference_mode too
        want, got = masked(x), evo_pai.load_pruned(path)(x)
    assert relative_gap(want, got) <= 1e-5
    assert relative_gap(want, net(x).detach()) <= 1e-5


def test_vgg16_search_result_export_reload_same_outputs(tmp_path):
    """A module handed to evo_pai.search() (VGG-16, width 2, 3x16x16): SearchResult.export('pruned'),
    evo_pai.load_pruned(path, model=module)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 3, 16, 16, generator=gen), torch.randint(0, 4, (128,), generator=gen)
    torch.manual_seed(0)
    module = vgg16((3, 16, 16), 4, width=2)
    config = {"masks": {"granularity": "channel", "macs_tolerance": 0.05}, "search": dict(CHANNEL_SEARCH),
              "train": {"batch_size": 64}, "final": {"epochs": 1}, "evaluation": {"device": "cpu"}}
    result = evo_pai.search(module, (x, y), config=config, sparsity=0.5, method="combined",
                            out=tmp_path / "run", progress=False)
    info = result.export("pruned")
    assert info["format"] == "pruned" and info["max_rel_diff"] <= 1e-5 and info["macs_kept"] < 0.6
    net = evo_pai.load_pruned(info["path"], model=module)
    masked = result.apply(copy.deepcopy(module)).eval()
    xs = torch.randn(16, 3, 16, 16, generator=gen)
    with torch.no_grad():
        assert relative_gap(masked(xs), net(xs)) <= 1e-5
    assert sum(conv_channels(net)) < sum(conv_channels(module))
    # another process has no such module registered: the loader says to pass it
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", f"import evo_pai; evo_pai.load_pruned({info['path']!r})"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "model=" in proc.stderr.strip().splitlines()[-1]


def test_weight_granularity_run_refused(tmp_path, capsys):
    run_experiment(build_config(tiny_raw()), tmp_path)
    code, out, err = cli_inproc(capsys, "export", str(tmp_path), "--format", "pruned")
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "masks single weights" in lines[0] and "masks.granularity: channel" in lines[0]
    assert "--format compact" in lines[0]
    assert not (tmp_path / "export" / "pruned.safetensors").exists()


def test_mask_not_whole_channels_refused(resnet_run, tmp_path):
    """A channel run whose mask was edited (one more weight zeroed inside a kept channel)."""
    import shutil

    from evo_pai.core.masks import MaskSet

    run = tmp_path / "run"
    shutil.copytree(resnet_run, run, ignore=shutil.ignore_patterns("export"))
    mask = MaskSet.load(run / "mask.safetensors")
    name = next(k for k, m in mask.items() if m.any())
    mask[name].view(-1)[mask[name].view(-1).nonzero()[0]] = False
    mask.save(run / "mask.safetensors")
    with pytest.raises(EvoPaiError, match=f"not a choice of whole channels \\(layer '{name}'\\)"):
        export(run, "pruned")
    assert not (run / "export" / "pruned.safetensors").exists()


def _rewrite(path, meta_edit=None, tensor_edit=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    save_file(tensors, str(path), metadata=meta)


def test_tampered_file_refused(resnet_run, tmp_path):
    info = export(resnet_run, "pruned", out=tmp_path / "ok.safetensors")
    good = (tmp_path / "ok.safetensors").read_bytes()
    evo_pai.load_pruned(info["path"])  # untouched: loads

    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(good)
    _rewrite(weights, tensor_edit=lambda t: t["conv1.weight"].mul_(1.5))
    with pytest.raises(EvoPaiError, match="checksum"):
        evo_pai.load_pruned(weights)

    kept = tmp_path / "kept.safetensors"  # other channels kept than the weights were cut for
    kept.write_bytes(good)

    def shift(meta):
        groups = json.loads(meta["groups"])
        g = next(g for g in groups if len(g["kept"]) < g["channels"])
        g["kept"] = sorted([i for i in range(g["channels"]) if i not in g["kept"]][:1] + g["kept"][1:])  # same count
        meta["groups"] = json.dumps(groups)
    _rewrite(kept, meta_edit=shift)
    with pytest.raises(EvoPaiError, match="checksum"):
        evo_pai.load_pruned(kept)

    other = tmp_path / "other.safetensors"
    other.write_bytes(good)
    _rewrite(other, meta_edit=lambda m: m.update(format="evo_pai.compact/1"))
    with pytest.raises(EvoPaiError, match="not a pruned network"):
        evo_pai.load_pruned(other)
    assert FORMAT == "evo_pai.pruned/1"


def test_read_back_mismatch_not_written(resnet_run, tmp_path, monkeypatch):
    """The read-back check can fail: a loader returning another network → refused, nothing left on disk."""
    import evo_pai.runs.export as export_module

    real = export_module.load_pruned

    def off_by_a_bit(path, model=None):
        net = real(path, model)
        with torch.no_grad():
            net.fc.bias.add_(1e-3)
        return net
    monkeypatch.setattr(export_module, "load_pruned", off_by_a_bit)
    with pytest.raises(EvoPaiError, match="differs from the masked one"):
        export(resnet_run, "pruned", out=tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()

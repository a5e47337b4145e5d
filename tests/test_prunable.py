"""What is prunable is decided in one place and shown: defaults (Linear / Conv / attention weights; never
norms, embeddings or, by default, biases), masks.include / exclude, the summary's parameter list and
`evo-pai list-layers`; a transformer plugin whose attention weights are pruned, trained, listed and
exported."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import cli_inproc, tiny_raw
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.core.registry import MODEL, register_model
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import make_evaluator
from evo_pai.models.networks import count_flops
from evo_pai.models.prunable import masked_names, parameter_roles, prunable_names
from evo_pai.runs.preflight import preflight
from evo_pai.runs.export import export, load_mask
from evo_pai.runs.runner import run_experiment
from evo_pai.training.tasks import initial_model


class TinyTransformer(nn.Module):
    """A 16-feature vector read as 4 tokens of 4: token projection, learned positions (an embedding),
    one self-attention layer with a packed in_proj_weight, LayerNorm, mean pooling, a classifier."""

    def __init__(self, features: int, classes: int, dim: int = 8):
        super().__init__()
        self.tokens = features // 4
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Embedding(self.tokens, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x.view(x.shape[0], self.tokens, 4)) + self.pos.weight
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a).mean(1))


if "test_tiny_transformer" not in MODEL:
    register_model("test_tiny_transformer", "a plugin transformer (tests)")(
        lambda input_shape, num_classes: TinyTransformer(math.prod(input_shape), num_classes))


def transformer_raw(method: str = "combined", **masks) -> dict:
    raw = tiny_raw(method, generations=2, mutation="magnitude")
    raw["model"] = {"name": "test_tiny_transformer"}
    # a transformer's recipe: AdamW (decoupled weight decay), label smoothing, gradient clipping (docs/config.md)
    raw["train"] = {**raw["train"], "optimizer": "adamw", "weight_decay": 0.01, "label_smoothing": 0.1,
                    "grad_clip_norm": 1.0}
    raw["masks"] = masks
    raw["evaluation"] = {"device": "cpu"}
    return raw


def test_default_roles_and_reasons():
    roles = {r.name: r for r in parameter_roles(TinyTransformer(16, 4))}
    assert [n for n, r in roles.items() if r.prunable] == ["embed.weight", "attn.in_proj_weight",
                                                          "attn.out_proj.weight", "head.weight"]
    assert "embedding" in roles["pos.weight"].why and "normalization" in roles["norm.weight"].why
    assert "include_bias" in roles["attn.in_proj_bias"].why and not roles["attn.out_proj.bias"].prunable
    with_bias = prunable_names(TinyTransformer(16, 4), include_bias=True)
    assert "attn.in_proj_bias" in with_bias and "norm.bias" not in with_bias
    # separate q/k/v projections when keys and values have their own sizes
    qkv = nn.MultiheadAttention(8, 2, kdim=6, vdim=5)
    assert prunable_names(qkv) == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]
    assert prunable_names(nn.Sequential(nn.Conv1d(2, 3, 3), nn.Conv3d(3, 4, 1), nn.Linear(4, 2))) == [
        "0.weight", "1.weight", "2.weight"]


def test_include_and_exclude_globs_override_the_defaults():
    model = TinyTransformer(16, 4)
    names = prunable_names(model, include=["norm.*", "pos.weight"], exclude=["attn.*", "norm.bias"])
    assert names == ["embed.weight", "pos.weight", "norm.weight", "head.weight"]
    why = {r.name: r.why for r in parameter_roles(model, include=["norm.*"], exclude=["norm.bias"])}
    assert why["norm.weight"].startswith("masks.include 'norm.*'") and why["norm.bias"] == "masks.exclude 'norm.bias'"
    cfg = build_config(transformer_raw(include=["attn.nope*"]))
    with pytest.raises(EvoPaiError, match=r"masks.include: 'attn.nope\*' matches no parameter"):
        masked_names(model, cfg.masks)
    with pytest.raises(EvoPaiError, match=r"masks.include: 'attn.nope\*' matches no parameter"):
        preflight(cfg)  # before a run folder exists


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("transformer")
    summary = run_experiment(build_config(transformer_raw(pattern="2:4")), out)
    return out, summary


def test_attention_weights_are_pruned_trained_and_listed(transformer_run):
    out, summary = transformer_run
    rows = {r["name"]: r for r in summary["parameters"]}
    assert rows["attn.in_proj_weight"]["prunable"] and rows["attn.out_proj.weight"]["prunable"]
    assert not rows["norm.weight"]["prunable"] and rows["pos.weight"]["rule"] == "embedding"
    assert summary["layer_sparsity"]["attn.in_proj_weight"] > 0.5
    mask = MaskSet.load(out / "mask.safetensors")
    assert mask.pattern == (2, 4) and mask.pattern_holds()  # N:M along each row of the packed q/k/v weight
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    w = state["attn.in_proj_weight"]
    assert (w[~mask["attn.in_proj_weight"]] == 0).all() and (w[mask["attn.in_proj_weight"]] != 0).any()
    cfg = build_config(transformer_raw(pattern="2:4"))
    theta0 = initial_model(cfg, load_data(cfg.data)).state_dict()
    for name in ("attn.in_proj_weight", "attn.out_proj.weight"):  # trained: the kept weights moved from θ0
        kept = mask[name]
        assert not torch.equal(state[name][kept], theta0[name][kept].to(state[name].dtype)), name
    assert summary["flops"]["sparse"] < summary["flops"]["dense"]


def test_attention_flops_count_the_projections():
    model = TinyTransformer(16, 4)
    dense = count_flops(model, (16,))["dense"]
    # 4 tokens x (embed 4x8 + in_proj 24x8 + out_proj 8x8) + head 8x4, 2 FLOPs per multiply-add
    assert dense == 2 * (4 * (4 * 8 + 24 * 8 + 8 * 8) + 8 * 4)


def test_vectorized_backend_batches_attention_through_vmap():
    """The hand path refuses attention; the vectorized backend runs it through torch.func.vmap, masks on
    the packed in_proj_weight applied by name as in the sequential trainer (tests/test_vmapped.py: equality)."""
    raw = transformer_raw()
    raw["evaluation"] = {"device": "cpu", "backend": "vectorized"}
    vec = make_evaluator(build_config(raw))
    assert type(vec.trainer.forward).__name__ == "VmapForward" and "MultiheadAttention" in vec.trainer.forward.hand_why


def test_exports_and_load_mask_with_attention(transformer_run):
    out, _ = transformer_run
    with pytest.raises(EvoPaiError, match="only sequential models"):
        export(out, "compact")
    for fmt in ("torch-prune", "csr", "npz"):
        info = export(out, fmt)
        assert info.get("max_abs_diff", 0.0) < 1e-5, fmt
    user = TinyTransformer(16, 4)
    load_mask(out).apply_(user)
    assert (user.attn.in_proj_weight[~load_mask(out)["attn.in_proj_weight"]] == 0).all()


def test_list_layers_prints_every_parameter(capsys):
    code, out, _ = cli_inproc(capsys, "list-layers", "configs/quickstart.yaml", "--set", "model.name=resnet20",
                              "--set", "model.params={width: 4}", "--set", "masks.exclude=[conv1.weight]")
    assert code == 0
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:-1]}
    assert len(lines) == 59 and "normalization: never pruned" in lines["bn1.weight"]
    assert "masks.exclude 'conv1.weight'" in lines["conv1.weight"] and " yes " in lines["fc.weight"]
    assert out.splitlines()[-1].startswith("19 of 59 tensors")

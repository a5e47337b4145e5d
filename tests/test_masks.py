import numpy as np
import pickle
import pytest
import torch
from torch import nn

from evo_pai.core.budgets import cubic_schedule, erk_counts, layer_counts, uniform_counts
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.models.networks import output_layer_name, prunable_names

LENET = {"l0.weight": (300, 784), "l1.weight": (100, 300), "l2.weight": (10, 100)}


@pytest.mark.parametrize("budget", ["uniform", "erk"])
def test_random_mask_has_exact_layer_counts(budget, gen):
    m = MaskSet.random(LENET, 0.9, gen, budget, "l2.weight")
    assert m.counts() == layer_counts(LENET, 0.9, budget)


def test_erk_total_is_exact_and_favours_small_layers():
    counts = erk_counts(LENET, 0.98)
    total = sum(np.prod(s) for s in LENET.values())
    assert sum(counts.values()) == round(0.02 * total)
    density = {k: counts[k] / np.prod(s) for k, s in LENET.items()}
    assert density["l2.weight"] > density["l1.weight"] > density["l0.weight"]


def test_uniform_98_silences_classes_but_default_does_not(gen):
    # The trap the default exists for: uniform keeps 20 of 1,000 output weights, and drawn at random
    # without the fan-in guard they leave some classes with no input at all.
    assert uniform_counts(LENET, 0.98)["l2.weight"] == 20
    dead = [MaskSet.random(LENET, 0.98, torch.Generator().manual_seed(seed), "uniform", "l2.weight",
                           min_output_fan_in=0).dead_units()["l2.weight"] for seed in range(5)]
    assert sum(dead) > 0, dead
    for seed in range(5):
        m = MaskSet.random(LENET, 0.98, torch.Generator().manual_seed(seed), "erk", "l2.weight")
        assert m.dead_units()["l2.weight"] == 0
    # even uniform, with the default min_output_fan_in=1, keeps every class alive
    m = MaskSet.random(LENET, 0.98, gen, "uniform", "l2.weight", min_output_fan_in=1)
    assert m.dead_units()["l2.weight"] == 0 and m.counts()["l2.weight"] == 20


def test_global_budget_total_exact(gen):
    m = MaskSet.random(LENET, 0.95, gen, "global", "l2.weight")
    total = sum(np.prod(s) for s in LENET.values())
    assert sum(m.counts().values()) == round(0.05 * total)


def test_from_scores_keeps_the_top_scores():
    scores = {"w": torch.tensor([[0.1, 0.9, 0.5, 0.3]])}
    m = MaskSet.from_scores(scores, 0.5, "uniform")
    assert m["w"].tolist() == [[False, True, True, False]]


def test_no_layer_is_emptied_unless_allowed(gen):
    shapes = {"a": (4, 4), "b": (2, 2)}
    scores = {"a": torch.ones(4, 4), "b": torch.full((2, 2), -1.0)}
    assert MaskSet.from_scores(scores, 0.9, "global")["b"].sum() >= 1
    assert MaskSet.from_scores(scores, 0.9, "global", allow_empty_layers=True)["b"].sum() == 0


def test_prune_never_regrows_and_hits_counts(gen):
    m = MaskSet.random(LENET, 0.5, gen, "uniform")
    target = layer_counts(LENET, 0.8, "uniform")
    p = m.prune({k: torch.rand(s, generator=gen) for k, s in LENET.items()}, target)
    assert p.counts() == target
    for k in LENET:
        assert not (p[k] & ~m[k]).any()


def test_hash_stable_and_pickle_round_trip(gen):
    m = MaskSet.random(LENET, 0.9, gen, "erk", "l2.weight")
    again = pickle.loads(pickle.dumps(m))
    assert again.hash() == m.hash() and again.output_layer == "l2.weight"
    assert all(torch.equal(again[k], m[k]) for k in m)
    assert m.copy().hash() == m.hash()


def test_save_load_records_sparsity(tmp_path, gen):
    m = MaskSet.random(LENET, 0.9, gen, "erk", "l2.weight")
    m.save(tmp_path / "mask.safetensors")
    back = MaskSet.load(tmp_path / "mask.safetensors")
    assert back == m and back.output_layer == "l2.weight"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "mask.safetensors"), framework="pt") as f:
        assert abs(eval(f.metadata()["sparsity"].replace("null", "None"))["total"] - 0.9) < 1e-3


def test_load_refuses_foreign_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EvoPaiError, match="not an evo-pai mask"):
        MaskSet.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(EvoPaiError):
        MaskSet.load(tmp_path / "junk.safetensors")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_apply_keeps_masked_weights_zero_through_training(gen):
    model = _mlp()
    names = prunable_names(model)
    m = MaskSet.random({k: tuple(dict(model.named_parameters())[k].shape) for k in names}, 0.7, gen,
                       "uniform", output_layer_name(model))
    m.apply_(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    for _ in range(20):
        loss = model(torch.randn(32, 8, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    for k in m:
        assert (params[k][~m[k]] == 0).all()
        assert (params[k][m[k]] != 0).any()


def test_export_to_torch_prune(gen):
    model = _mlp()
    shapes = {k: tuple(dict(model.named_parameters())[k].shape) for k in prunable_names(model)}
    m = MaskSet.random(shapes, 0.5, gen, "uniform")
    m.to_torch_prune(model)
    assert torch.equal(model[0].weight_mask.bool(), m["0.weight"])
    assert (model[0].weight[~m["0.weight"]] == 0).all()


def test_validate_catches_shape_mismatch():
    model = _mlp()
    with pytest.raises(EvoPaiError, match="shape"):
        MaskSet({"0.weight": torch.ones(3, 3, dtype=torch.bool)}).validate(model)


def test_dead_units_counts_rows_without_inputs():
    m = MaskSet({"w": torch.tensor([[True, False], [False, False], [False, True]])})
    assert m.dead_units() == {"w": 1}


def test_cubic_schedule_ends_at_target():
    s = cubic_schedule(0.5, 0.9, 4)
    assert s[-1] == pytest.approx(0.9) and all(a < b for a, b in zip([0.5] + s, s))

"""Dynamic sparse training (rigl, set): the drop/grow rules on hand-made tensors, the schedule, the
optimizer-state reset, exact per-layer density through training, and end-to-end runs on digits."""
from __future__ import annotations

import math

import pytest
import torch

from evo_pai.core.config import build_config
from evo_pai.data.datasets import load_data
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.runs.runner import run_experiment
from evo_pai.training.burst import train_masked
from evo_pai.training.drop_grow import (DynamicSpec, MaskUpdater, drop_and_grow, drop_fraction_at, end_step,
                                      interval_steps, is_update_step, protected_fan_in)
from evo_pai.training.tasks import initial_model

from conftest import tiny_raw

B = torch.tensor


def test_drop_smallest_w_grow_largest_g():
    mask = B([True, True, True, False, False, False])
    w = B([0.5, -0.1, 0.9, 0.0, 0.0, 0.0])
    g = B([0.05, 0.8, 0.0, -0.2, 0.7, 0.3])
    # n = 1: the smallest |w| (index 1) goes, the largest |g| among the rest (index 1 itself: 0.8) ...
    assert drop_and_grow(mask, w.abs(), g.abs(), 1).tolist() == mask.tolist()
    # ... and without index 1's gradient the best pruned position (index 4) comes in
    g1 = g.clone()
    g1[1] = 0.0
    assert drop_and_grow(mask, w.abs(), g1.abs(), 1).tolist() == [True, False, True, False, True, False]
    # n = 2: indices 1 and 0 go; candidates are {0, 1, 3, 4, 5}: 1 (0.8) and 4 (0.7) come in
    assert drop_and_grow(mask, w.abs(), g.abs(), 2).tolist() == [False, True, True, False, True, False]


def test_drop_and_grow_on_a_matrix_keeps_the_count_and_breaks_ties_by_index():
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[0, :3] = mask[2, 1:] = True
    w = torch.ones(4, 5)  # all tied: the lowest flat indices are dropped first
    g = torch.zeros(4, 5)
    g.view(-1)[[3, 4, 7]] = 1.0  # tied too: the lower free indices (3, 4) are grown first
    new = drop_and_grow(mask, w, g, 2)
    assert int(new.sum()) == int(mask.sum())
    assert new.flatten()[:5].tolist() == [False, False, True, True, True] and not new.flatten()[7]
    # asking for more than the kept weights drops at most all of them
    assert int(drop_and_grow(mask, w, g, 100).sum()) == int(mask.sum())


def test_protected_fan_in_keeps_every_row_its_best_input():
    mask = B([[True, False, False, False], [True, True, True, False]])
    w = B([[0.001, 0, 0, 0], [0.5, 0.2, 0.9, 0]])
    keep = protected_fan_in(mask, w, 1)
    assert keep.tolist() == [[True, False, False, False], [False, False, True, False]]
    g = B([[0, 5.0, 5.0, 5.0], [0, 0, 0, 0.1]])
    new = drop_and_grow(mask, w.abs(), g.abs(), 2, keep)
    assert new[0, 0] and new[1, 2]  # the protected ones survive although row 0's is the smallest |w|
    assert int(new.sum()) == int(mask.sum()) and int(new[0].sum()) >= 1


def test_cosine_decay_and_update_steps():
    spec = DynamicSpec(grow="gradient", drop_fraction=0.3, end_fraction=0.75)
    t_end = end_step(spec, 400)
    assert t_end == 300
    assert drop_fraction_at(spec, 0, t_end) == pytest.approx(0.3)
    assert drop_fraction_at(spec, 150, t_end) == pytest.approx(0.15)
    assert drop_fraction_at(spec, 75, t_end) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert drop_fraction_at(spec, 300, t_end) == pytest.approx(0.0)
    assert drop_fraction_at(DynamicSpec(grow="random", anneal="constant"), 250, t_end) == 0.3
    # ΔT from epochs: 0.25 of 430 steps per epoch = 108 steps (RigL's 100 at our full Fashion-MNIST)
    assert interval_steps(spec, 430) == 108 and interval_steps(spec, 2) == 1
    steps = [t for t in range(1, 401) if is_update_step(t, 100, t_end)]
    assert steps == [100, 200]  # strictly before T_end = 300


def layer(seed: int = 0):
    """A 6x8 weight with 16 kept, SGD momentum state everywhere, and a dense gradient."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(6, 8, generator=gen))
    mask = torch.zeros(48, dtype=torch.bool)
    mask[torch.randperm(48, generator=gen)[:16]] = True
    mask = mask.reshape(6, 8)
    with torch.no_grad():
        p.mul_(mask)
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.randn(6, 8, generator=gen)
    opt.step()  # creates a momentum buffer
    with torch.no_grad():
        p.mul_(mask)
    opt.state[p]["momentum_buffer"].fill_(1.0)
    p.grad = torch.randn(6, 8, generator=gen)
    return p, mask, opt


@pytest.mark.parametrize("grow", ["gradient", "random"])
def test_update_resets_grown_and_dropped_weights_and_their_state(grow):
    p, mask, opt = layer()
    before, grad = p.detach().clone(), p.grad.clone()
    masks = {"w": mask.clone()}
    spec = DynamicSpec(grow=grow, drop_fraction=0.25, anneal="constant")
    up = MaskUpdater(spec, masks, {"w": p}, opt, total_steps=100, steps_per_epoch=10, seed=3)
    up.update(10)
    new = masks["w"]
    assert int(new.sum()) == 16  # density exact
    # Expected, computed here: the 4 (= floor(0.25 * 16)) kept weights of smallest |w| are dropped ...
    kept_idx = torch.nonzero(mask.flatten()).flatten()
    drop = kept_idx[torch.topk(before.flatten()[kept_idx].abs(), 4, largest=False).indices]
    after = mask.flatten().clone()
    after[drop] = False
    assert bool((new.flatten() | ~after).all())  # every weight not dropped is still kept
    if grow == "gradient":  # ... and the 4 largest |g| among the positions not kept after the drop come in
        free = torch.nonzero(~after).flatten()
        grown = free[torch.topk(grad.flatten()[free].abs(), 4).indices]
        expected = after.clone()
        expected[grown] = True
        assert torch.equal(new.flatten(), expected)
    moved_in, moved_out, stayed = new & ~mask, mask & ~new, mask & new
    assert int(moved_in.sum()) == int(moved_out.sum()) and not bool((moved_in & mask).any())
    state = opt.state[p]["momentum_buffer"]
    assert bool((p[moved_in] == 0).all()) and bool((state[moved_in] == 0).all())  # new weights: 0, no momentum
    assert bool((p[moved_out] == 0).all()) and bool((state[moved_out] == 0).all())  # pruned: 0 and stays 0
    # kept weights (a just-dropped weight regrown at once among them) keep their value and state
    assert torch.equal(p[stayed], before[stayed]) and bool((state[stayed] == 1).all())


def set_update(seed: int, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p, mask, opt = layer()
    kept_idx = torch.nonzero(mask.flatten()).flatten()
    after = mask.flatten().clone()  # kept minus the 8 (= floor(0.5 * 16)) smallest |w|
    after[kept_idx[torch.topk(p.detach().flatten()[kept_idx].abs(), 8, largest=False).indices]] = False
    if not with_grad:
        p.grad = None
    masks = {"w": mask.clone()}
    spec = DynamicSpec(grow="random", drop_fraction=0.5, anneal="constant")
    MaskUpdater(spec, masks, {"w": p}, opt, 100, 10, seed).update(10)
    return mask, after.reshape(mask.shape), masks["w"]


def test_set_regrows_only_pruned_positions_at_random():
    grown_sets = set()
    for seed in range(5):
        mask, after, new = set_update(seed, True)
        grown = new & ~after
        assert bool((new | ~after).all())  # the weights that were not dropped are all still there
        assert int(grown.sum()) == 8 and int(new.sum()) == 16  # 8 in, among the positions pruned after the drop
        assert torch.equal(set_update(seed, False)[2], new)  # SET never reads the gradient
        grown_sets.add(tuple(torch.nonzero(grown.flatten()).flatten().tolist()))
    assert len(grown_sets) > 1  # different seeds, different random regrowth


def test_train_masked_keeps_density_exact_per_layer_and_pruned_weights_zero():
    cfg = build_config({**tiny_raw("rigl"), "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                                                       "batch_size": 32}})
    data = load_data(cfg.data)
    model = initial_model(cfg, data)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters() if k.endswith("weight")}
    mask = MaskSet.random(shapes, 0.8, torch.Generator().manual_seed(1), "erk", "layers.4.weight")
    for grow in ("gradient", "random"):
        spec = DynamicSpec(grow=grow, interval_epochs=0.5, output_layer="layers.4.weight")
        res = train_masked(model, theta0, theta0, mask, data, cfg.train, 6.0, seed=5, keep_state=True, dynamic=spec)
        # 360 examples / 32 = 12 steps per epoch, ΔT = 6, T_end = 0.75 * 72 = 54: updates at 6, 12, ..., 48
        assert res.metrics["mask_updates"] == 8
        assert res.mask is not None and res.mask.counts() == mask.counts() and res.mask != mask
        assert 0 < res.metrics["mask_turnover"] < 1
        for k, m in res.mask.items():
            assert bool((res.state[k][~m] == 0).all())
        assert min(res.mask["layers.4.weight"].sum(1).tolist()) >= 1


def digits(method: str, **extra) -> dict:
    raw = {"seed": 0, "data": {"name": "digits"}, "model": {"name": "mlp"},
           "search": {"method": method, "sparsity": 0.9, **extra}, "final": {"epochs": 30}}
    return raw


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_rigl_and_set_end_to_end_on_digits(method, tmp_path):
    out = tmp_path / method
    out.mkdir()
    s = run_experiment(build_config(digits(method)), out)
    r = run_experiment(build_config(digits("random")), None)
    saved = MaskSet.load(out / "mask.safetensors")
    assert s["search_model_epochs"] == 0 and s["final_epochs"] == 30
    assert s["layer_sparsity"] == r["layer_sparsity"]  # the same per-layer density as the random start
    assert saved.hash() != s["initial_mask"] and s["mask_turnover"] > 0.05
    # 1294 examples / 128 = 11 steps per epoch, ΔT = round(2.75) = 3, T_end = 0.75 * 330 = 247: 3, 6, ..., 246
    assert s["mask_updates"] == 82
    assert s["test_accuracy"] > 0.9 and s["flops"]["sparse"] < 0.2 * s["flops"]["dense"]
    longer = run_experiment(build_config(digits(method, params={"extra_epochs": 4})), None)
    assert longer["extra_epochs"] == 4 and longer["mask_updates"] == 93  # T_end = 0.75 * 374 = 280: 3, ..., 279


def test_vectorized_backend_trains_dynamic_tasks_one_by_one_with_the_same_result():
    local = run_experiment(build_config(digits("rigl")), None)
    vec = run_experiment(build_config({**digits("rigl"), "evaluation": {"backend": "vectorized"}}), None)
    for k in ["test_accuracy", "test_loss", "sparsity", "mask_turnover", "layer_sparsity", "mask_updates"]:
        assert vec[k] == local[k], k


def test_bad_dst_fields_are_refused_with_the_field_name():
    for key, value in [("drop_fraction", 0.0), ("interval_epochs", -1), ("end_fraction", 1.5), ("anneal", "linear")]:
        with pytest.raises(EvoPaiError, match=f"search.dst.{key}"):
            build_config(digits("rigl", dst={key: value}))

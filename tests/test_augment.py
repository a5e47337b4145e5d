"""data.augment: the batched crop/flip against a per-image reference, seeded reproducibility, the
same augmented batches on the local and vectorized backends, continued lineages and resume, and
validation never augmented."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

from conftest import tiny_raw, whole_and_interrupted, without_timing
from evo_pai.core.config import AugmentConfig, build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.data import augment
from evo_pai.data.batches import TrainBatches
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import make_evaluator
from evo_pai.runs.preflight import preflight
from evo_pai.runs.runner import run_experiment
from evo_pai.search.experiment import Experiment
from evo_pai.training.burst import train_masked
from evo_pai.training.tasks import BurstTask

AUG = AugmentConfig(crop_padding=2, flip=True)


def digits_raw(**train) -> dict:
    raw = tiny_raw(population=4, generations=2)
    raw["data"] = {"name": "digits", "train_subset": 200, "augment": {"crop_padding": 2, "flip": True}}
    raw["model"] = {"name": "lenet5"}
    raw["train"] = {"lr": 0.01, "batch_size": 32, **train}
    raw["final"] = {"epochs": 1}
    return raw


def test_batched_crop_and_flip_equal_a_per_image_reference():
    x = torch.randn(16, 3, 5, 7)
    params = augment.draw(AUG, 16, seed=3, step=0)
    got = augment.apply(x, params, 2)
    for i in range(16):
        dy, dx, flip = params[i].tolist()
        ref = F.pad(x[i], (2, 2, 2, 2))[:, dy : dy + 5, dx : dx + 7]
        assert torch.equal(got[i], ref.flip(-1) if flip else ref)
    assert 0 < int(params[:, 2].sum()) < 16 and int(params[:, :2].max()) == 4  # both flips, full offset range
    only_flip = augment.apply(x, augment.draw(AugmentConfig(flip=True), 16, 3, 0), 0)
    assert only_flip.shape == x.shape and not torch.equal(only_flip, x)


def test_same_seed_same_images_other_seed_others():
    data = load_data(build_config(digits_raw()).data)

    def first(seed: int, aug: AugmentConfig, offset: int = 0) -> torch.Tensor:
        return next(iter(TrainBatches(data, 32, [seed], 3, offset, torch.device("cpu"), torch.float32, aug)))[0]

    assert torch.equal(first(1, AUG), first(1, AUG))
    assert not torch.equal(first(1, AUG), first(2, AUG))
    assert not torch.equal(first(1, AUG), first(1, AugmentConfig()))  # the augmentation is applied
    both = TrainBatches(data, 32, [1, 2], 3, 0, torch.device("cpu"), torch.float32, AUG)
    x, y = next(iter(both))  # vectorized: model k's rows are what train_masked draws for seed k
    assert torch.equal(x[0], first(1, AUG)[0]) and torch.equal(x[1], first(2, AUG)[0]) and y.shape == (64,)


def test_local_and_vectorized_train_on_the_same_augmented_batches():
    raw = digits_raw(dtype="float64")
    cfg = build_config(raw)
    data = load_data(cfg.data)
    local = make_evaluator(cfg, data)
    vec = make_evaluator(build_config({**raw, "evaluation": {"backend": "vectorized"}}), data)
    exp = Experiment(cfg, local, data)
    tasks = [BurstTask(exp.random_mask(0.5, i), 1.0, 10 + i, keep_state=True) for i in range(3)]
    plain = make_evaluator(build_config({**raw, "data": {**raw["data"], "augment": {}}}), data)
    for a, b, c in zip(local.evaluate(tasks), vec.evaluate(tasks), plain.evaluate(tasks)):
        assert abs(a.metrics["train_loss"] - b.metrics["train_loss"]) < 1e-10
        assert all(float((a.state[n] - b.state[n]).abs().max()) < 1e-10 for n in a.state)
        assert abs(a.metrics["train_loss"] - c.metrics["train_loss"]) > 1e-6  # augmentation changed training


def test_continued_lineage_sees_the_uninterrupted_augmentation():
    cfg = build_config(digits_raw(dtype="float64"))
    data = load_data(cfg.data)
    ev = make_evaluator(cfg, data)
    ctx, exp = ev.context, Experiment(cfg, ev, data)
    mask, hp = exp.random_mask(0.5, 0), cfg.train
    steps = exp.steps(1.0)

    def run(start, epochs, opt=None, offset=0):
        return train_masked(ctx.model, start, ctx.theta0, mask, ctx.data, hp, epochs, 7, keep_state=True,
                            opt_state=opt, offset=offset, horizon=2 * steps, data_cfg=cfg.data)

    whole = run(ctx.theta0, 2.0)
    half = run(ctx.theta0, 1.0)
    rest = run(half.state, 1.0, half.opt_state, offset=half.steps)
    assert all(torch.equal(whole.state[n], rest.state[n]) for n in whole.state)


def test_resumed_run_with_augmentation_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = build_config(digits_raw())
    whole, ckpt = whole_and_interrupted(cfg, tmp_path, monkeypatch, 1)
    assert without_timing(whole) == without_timing(run_experiment(cfg, tmp_path / "run", resume=ckpt))


def test_validation_is_never_augmented():
    cfg = build_config(digits_raw(dtype="float64"))
    data = load_data(cfg.data)
    ev = make_evaluator(cfg, data)
    task = BurstTask(Experiment(cfg, ev, data).random_mask(0.5, 0), 1.0, 5, test=True, keep_state=True)
    res = ev.evaluate([task])[0]
    model, d = ev.context.model, ev.context.data
    model.load_state_dict(res.state)
    model.eval()
    with torch.no_grad():  # the trained network on the untouched val / test tensors
        assert res.metrics["val_loss"] == pytest.approx(float(F.cross_entropy(model(d.val_x), d.val_y)), abs=1e-12)
        assert res.metrics["test_loss"] == pytest.approx(float(F.cross_entropy(model(d.test_x), d.test_y)), abs=1e-12)


def test_augmenting_vectors_is_refused_before_a_run():
    raw = tiny_raw()
    raw["data"]["augment"] = {"flip": True}
    with pytest.raises(EvoPaiError, match=r"data\.augment\.flip: dataset 'synthetic' gives inputs of shape"):
        preflight(build_config(raw))

"""Structured search (masks.granularity: channel): channel groups of every model proven against
physical pruning, the refusal of groups that cannot be pruned, the MACs counter, width operators that
keep the budget, backends that agree in float64, resume, and a user's model through evo_pai.search()."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import cli_inproc, tiny_raw, whole_and_interrupted, without_timing
from evo_pai.core.config import MaskConfig, build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.registry import MODEL, register_model
from evo_pai.data.datasets import load_data
from evo_pai.evaluation.base import make_evaluator
from evo_pai.models.group_check import channel_structure, check_structure, physically_pruned, random_keep
from evo_pai.models.networks import build_model
from evo_pai.core.config import ModelConfig
from evo_pai.models.prunable import masked_names, output_layer_name
from evo_pai.runs.runner import run_experiment
from evo_pai.search.experiment import Experiment
from evo_pai.training.tasks import BurstTask
import test_batchnorm  # noqa: F401  registers test_bn_resnet (a user's residual block with a projection)

pytestmark = pytest.mark.usefixtures("one_thread")


class ConcatNet(nn.Module):
    """Two conv branches concatenated (channel offsets), a conv over the concatenation, a head."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.stem = nn.Conv2d(channels, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 4, 3, padding=1)
        self.b = nn.Conv2d(6, 5, 1)
        self.mix = nn.Conv2d(9, 8, 3, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = F.relu(self.mix(torch.cat([F.relu(self.a(h)), F.relu(self.b(h))], 1)))
        return self.head(h.mean((2, 3)))


class TinyEncoder(nn.Module):
    """A 16-feature vector read as 4 tokens: a TransformerEncoderLayer (attention, LayerNorm, MLP)."""

    def __init__(self, features: int, classes: int, dim: int = 8):
        super().__init__()
        self.tokens = features // 4
        self.embed = nn.Linear(4, dim)
        self.layer = nn.TransformerEncoderLayer(dim, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.layer(self.embed(x.reshape(x.shape[0], self.tokens, 4))).mean(1))


if "test_concat" not in MODEL:
    register_model("test_concat", "a plugin with a channel concatenation (tests)")(
        lambda input_shape, num_classes: ConcatNet(input_shape[0], num_classes))
    register_model("test_encoder", "a plugin transformer encoder layer (tests)")(
        lambda input_shape, num_classes: TinyEncoder(math.prod(input_shape), num_classes))


def structure_of(name: str, shape: tuple, **params):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, params=params), shape, 10)
    names = masked_names(model, MaskConfig())
    out = output_layer_name(model)
    return model, channel_structure(model, shape, names, out if out in names else None)


@pytest.mark.parametrize("name,shape,params,free", [
    ("mlp", (1, 8, 8), {}, 2), ("lenet5", (1, 28, 28), {}, 4), ("conv4", (3, 16, 16), {}, 6),
    ("resnet20", (1, 8, 8), {"width": 4, "shortcut": "projection"}, 12), ("vgg16", (3, 32, 32), {"width": 4}, 13),
    ("test_concat", (1, 8, 8), {}, 4), ("test_bn_resnet", (1, 8, 8), {}, 3), ("test_encoder", (16,), {}, 1),
])
def test_groups_of_every_model_are_proven_against_physical_pruning(name, shape, params, free):
    model, s = structure_of(name, shape, **params)
    assert len(s.free) == free
    outputs = [g for g in s.groups for m in g.members if m.param == output_layer_name(model)]
    assert all(m.dim == 1 for g in outputs for m in g.members if m.param == output_layer_name(model))  # classes kept
    if name == "test_concat":  # the concatenation: mix's 9 input channels split 4 + 5 between two groups
        cols = sorted(len(m.index) for g in s.free for m in g.members if m.param == "mix.weight" and m.dim == 1)
        assert cols == [4, 5]
    if name == "test_encoder":  # attention/LayerNorm dims fixed with why; the MLP's hidden dim is free
        assert s.free[0].root == "layer.linear1" and s.free[0].channels == 16
        assert any(g.fixed and ("LayerNorm" in g.fixed or "MultiheadAttention" in g.fixed) for g in s.groups)


def test_pruning_a_group_equals_masking_it():
    model, s = structure_of("resnet20", (1, 8, 8), width=4, shortcut="projection")
    model.eval()
    keep = random_keep(s, torch.Generator().manual_seed(3))
    pruned = physically_pruned(model, (1, 8, 8), s, keep).eval()
    masked = build_model(ModelConfig(name="resnet20", params={"width": 4, "shortcut": "projection"}), (1, 8, 8), 10)
    masked.load_state_dict(model.state_dict())
    masked.eval()
    with torch.no_grad():
        for k, m in s.mask_of(keep).items():
            masked.get_parameter(k).mul_(m)
        x = torch.randn(5, 1, 8, 8)
        assert (pruned(x) - masked(x)).abs().max() <= 1e-5 * masked(x).abs().max()
    assert pruned.conv1.out_channels == int(keep[next(g.id for g in s.free if g.root == "conv1")].sum())


def test_the_check_catches_a_wrong_channel_mapping():
    model, s = structure_of("lenet5", (1, 28, 28))
    g = next(g for g in s.free if g.root == "features.3")
    m = next(m for m in g.members if m.dim == 1)
    m.root = m.root.roll(1)  # consumer columns assigned to the wrong channels
    with pytest.raises(EvoPaiError, match=r"channel group \d+ \(rooted at layer 'features.3'.*differ"):
        check_structure(model, (1, 28, 28), s)


def test_zero_pad_shortcuts_are_refused_in_one_line_and_excluding_the_stem_keeps_the_inner_widths(capsys, tmp_path):
    raw = {"data": {"name": "digits"}, "model": {"name": "resnet20", "params": {"width": 4}},
           "masks": {"granularity": "channel"}}
    import yaml
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code, out, err = cli_inproc(capsys, "list-groups", str(tmp_path / "c.yaml"))
    assert code == 2 and err.count("\n") == 1 and "rooted at layer 'conv1'" in err and "masks.exclude" in err
    code, out, err = cli_inproc(capsys, "list-groups", str(tmp_path / "c.yaml"), "--set", "masks.exclude=[conv1.weight]")
    assert code == 0 and "9 of 10 groups prunable" in out and "never pruned: conv1.weight is not masked" in out


@pytest.mark.parametrize("name,shape,params", [("mlp", (1, 8, 8), {}), ("lenet5", (1, 28, 28), {}),
                                               ("resnet20", (1, 8, 8), {"width": 4, "shortcut": "projection"}),
                                               ("vgg16", (3, 32, 32), {"width": 4}), ("test_concat", (1, 8, 8), {})])
def test_macs_counter_equals_torch_flop_counter_on_the_pruned_network(name, shape, params):
    from torch.utils.flop_counter import FlopCounterMode

    model, s = structure_of(name, shape, **params)
    keep = random_keep(s, torch.Generator().manual_seed(1))
    mask = s.mask_of(keep)
    pruned = physically_pruned(model, shape, s, keep).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        pruned(torch.zeros(1, *shape))
    assert counter.get_total_flops() == 2 * s.macs_of_mask(mask)
    widths = s.widths(mask)
    assert s.macs_of_widths(widths) == pytest.approx(s.macs_of_mask(mask), rel=1e-12)


def channel_raw(method: str = "combined", dtype: str = "float32", **search) -> dict:
    raw = tiny_raw(method, mutation="width", crossover="group_uniform", explore_mutation=None, sparsity=0.6,
                   initial_sparsity=0.3, burst_epochs=0.5, **search)
    raw["data"] = {"name": "digits", "train_subset": 96}
    raw["model"] = {"name": "resnet20", "params": {"width": 4, "shortcut": "projection"}}
    raw["masks"] = {"granularity": "channel"}
    raw["train"] = {"dtype": dtype, "batch_size": 16, "lr": 0.01}
    raw["evaluation"] = {"device": "cpu"}
    raw["final"] = {"epochs": 1}
    return raw


def channel_experiment(raw: dict) -> Experiment:
    cfg = build_config(raw)
    data = load_data(cfg.data)
    return Experiment(cfg, make_evaluator(cfg, data), data)


def test_width_mutation_crossover_and_repair_keep_the_macs_budget():
    exp = channel_experiment(channel_raw())
    s, tol = exp.structure, exp.cfg.masks.macs_tolerance
    for level in (0.3, 0.6, 0.8):
        for seed in range(6):
            mask = exp.random_mask(level, seed)
            assert abs(1 - s.macs_of_mask(mask) / s.dense_macs - level) <= tol
    a, b = Individual(exp.random_mask(0.3, 1)), Individual(exp.random_mask(0.3, 2))
    assert s.widths(a.mask) != s.widths(b.mask)  # random widths, not a uniform shrink
    for _ in range(4):
        ca, cb = exp.crossover(a, b)
        step = exp.prune_step(0.6, final=True)
        for child in (ca, cb):
            out = exp.mutate(child, step)
            assert abs(1 - s.macs_of_mask(out) / s.dense_macs - 0.6) <= tol
            rebuilt = s.mask_of(s.kept(out))
            assert all(torch.equal(rebuilt[k], out[k]) for k in out)  # whole channels only


def test_a_weight_mutation_or_an_unreachable_budget_is_refused_before_a_run(tmp_path):
    from evo_pai.runs.preflight import preflight

    with pytest.raises(EvoPaiError, match=r"^search.mutation: 'magnitude' works on single weights.*\(width\)"):
        preflight(build_config({**channel_raw(), "search": {**channel_raw()["search"], "mutation": "magnitude"}}))
    with pytest.raises(EvoPaiError, match=r"^masks.pattern: N:M patterns choose single weights"):
        preflight(build_config({**channel_raw(), "masks": {"granularity": "channel", "pattern": "2:4"}}))
    with pytest.raises(EvoPaiError, match=r"search.sparsity: 0.999 of the MACs cannot be removed"):
        preflight(build_config({**channel_raw(), "search": {**channel_raw()["search"], "sparsity": 0.999}}))


def test_structured_candidates_train_alike_locally_vectorized_and_on_ray(local_ray):
    raw = channel_raw(dtype="float64")
    exp = channel_experiment(raw)
    tasks = [BurstTask(exp.random_mask(0.6, i), 0.5, 100 + i, keep_state=True) for i in range(3)]
    results = {}
    for backend, extra in (("local", {}), ("vectorized", {}), ("ray", {"num_actors": 2, "cpus_per_actor": 1, "actor_trainer": "sequential"})):
        cfg = build_config({**raw, "evaluation": {**raw["evaluation"], "backend": backend, **extra}})
        with make_evaluator(cfg, exp.data) as ev:
            results[backend] = ev.evaluate(tasks)
    for other in ("vectorized", "ray"):
        for a, b in zip(results["local"], results[other]):
            assert abs(a.metrics["val_loss"] - b.metrics["val_loss"]) <= 1e-10
            assert max(float((a.state[k] - b.state[k]).abs().max()) for k in a.state) <= 1e-10


def test_channel_search_resumed_after_a_kill_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = build_config(channel_raw(inherit="parent"))
    whole, ckpt = whole_and_interrupted(cfg, tmp_path, monkeypatch, 1)
    resumed = run_experiment(cfg, tmp_path / "run", resume=ckpt)
    assert without_timing(resumed) == without_timing(whole)
    st = whole["structure"]
    assert abs(st["macs_removed"] - 0.6) <= cfg.masks.macs_tolerance and len(st["widths"]) == 12
    assert any(w < n for w, n in st["widths"].values())


def test_a_users_model_through_search_gets_channel_groups(tmp_path):
    import evo_pai

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(160, 1, 8, 8, generator=gen), torch.randint(0, 10, (160,), generator=gen)
    torch.manual_seed(0)
    result = evo_pai.search(ConcatNet(1, 10), (x, y), sparsity=0.5, progress=False, overrides=[
        "masks.granularity=channel", "search.mutation=width", "search.crossover=group_uniform",
        "search.explore_mutation=null", "search.generations=2", "search.population=2", "search.burst_epochs=0.5",
        "final.epochs=1"])
    st = result.summary["structure"]
    assert abs(st["macs_removed"] - 0.5) <= 0.01 and set(st["widths"]) == {"stem", "a", "b", "mix"}


@pytest.mark.parametrize("params", [{"criterion": "l1"}, {"criterion": "bn_scale", "scope": "global"}])
def test_structured_gmp_prunes_progressively_to_the_budget(params):
    """gmp with channel masks: Torch-Pruning-style progressive pruning (uniform ratio or global ranking)."""
    from conftest import search_outcome

    raw = channel_raw("gmp", mutation_params=params)
    raw["search"]["dg"] = {"epochs": 3}
    raw["model"]["params"]["width"] = 8  # 8-channel groups: one channel is 1/8 of a group
    outcome, records = search_outcome(raw)
    exp = channel_experiment(raw)
    s = exp.structure
    assert [round(r["sparsity"], 2) for r in records][-1] <= 0.61
    assert abs(1 - s.macs_of_mask(outcome.mask) / s.dense_macs - 0.6) <= 0.01
    widths, full = s.widths(outcome.mask), s.full_widths()
    fractions = [w / n for w, n in zip(widths, full)]
    if params.get("scope") == "global":  # one ranking: groups end at different fractions
        assert max(fractions) - min(fractions) > 0.5
    else:  # one factor for every group (up to rounding and repair)
        assert max(fractions) - min(fractions) <= 0.13


def test_uniform_keeps_every_group_at_one_fraction_and_refuses_weight_masks():
    from conftest import search_outcome

    outcome, _ = search_outcome(channel_raw("uniform"))
    s = channel_experiment(channel_raw()).structure
    fractions = [w / n for w, n in zip(s.widths(outcome.mask), s.full_widths())]
    assert abs(1 - s.macs_of_mask(outcome.mask) / s.dense_macs - 0.6) <= 0.01
    assert max(fractions) - min(fractions) <= 0.5  # width 4 groups: one channel is 0.25
    from evo_pai.runs.preflight import preflight

    raw = channel_raw("uniform")
    raw["masks"] = {}
    with pytest.raises(EvoPaiError, match="needs masks.granularity: channel"):
        preflight(build_config(raw))


def test_a_plugin_channel_criterion_and_mutation_by_name():
    """A user's criterion (by name in mutation_params) decides which channels stay; a user's
    structure-aware mutation is used by name and its result is checked."""
    from evo_pai.core.masks import MaskSet
    from evo_pai.core.registry import CHANNEL_CRITERION, MUTATION, register_channel_criterion, register_mutation
    from evo_pai.operators.widths import width

    if "test_last_first" not in CHANNEL_CRITERION:
        register_channel_criterion("test_last_first", "keep the highest-numbered channels (tests)")(
            lambda group, state, traits, generator: torch.arange(group.channels, dtype=torch.float64))

        @register_mutation("test_half_width", "structure-aware: width with prob 1 (tests)")
        def half(ind, step, generator, structure=None, theta0=None, tolerance=0.01, min_channels=1):
            return width(ind, step, generator, structure=structure, theta0=theta0, criterion="test_last_first",
                         prob=1.0, tolerance=tolerance, min_channels=min_channels)

        @register_mutation("test_not_whole", "returns single weights (tests)")
        def not_whole(ind, step, generator, structure=None):
            m = {k: v.clone() for k, v in ind.mask.items()}
            m[next(iter(m))].view(-1)[0] = False
            return MaskSet(m, ind.mask.output_layer)

    exp = channel_experiment(channel_raw())
    s = exp.structure
    parent = Individual(exp.dense_mask())
    child = exp.mutate(parent, exp.prune_step(0.5, final=True), "test_half_width", {})
    for g, keep in s.kept(child).items():
        n = int(keep.sum())
        assert keep[-n:].all()  # the criterion's order: the last channels stay
    with pytest.raises(EvoPaiError, match="mutation 'test_not_whole' returned a mask that is not a choice of whole channels"):
        exp.mutate(parent, exp.prune_step(0.5, final=True), "test_not_whole", {})

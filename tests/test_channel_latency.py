"""nsga2's `latency` / `compact_flops` objectives with masks.granularity: channel: the physically pruned
network, measured once per distinct width vector."""
from __future__ import annotations

from types import SimpleNamespace

import torch

import evo_pai.search.objectives as objectives
from evo_pai.core.config import build_config
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.models.group_check import channel_structure
from evo_pai.models.networks import build_model, count_flops
from evo_pai.models.prunable import masked_names, output_layer_name
from evo_pai.operators.widths import choose_channels, repair
from evo_pai.runs.runner import run_experiment

SHAPE = (1, 8, 8)
MODEL = {"name": "resnet20", "params": {"width": 4, "shortcut": "projection"}}


def channel_exp():
    cfg = build_config({"model": MODEL, "data": {"name": "digits"}, "masks": {"granularity": "channel"}})
    torch.manual_seed(0)
    model = build_model(cfg.model, SHAPE, 10).eval()
    names = masked_names(model, cfg.masks)
    out = output_layer_name(model)
    structure = channel_structure(model, SHAPE, names, out if out in names else None)
    shapes = {k: tuple(model.get_parameter(k).shape) for k in names}
    exp = SimpleNamespace(model=model, data=SimpleNamespace(input_shape=SHAPE), shapes=shapes, channels=True,
                          structure=structure, cfg=SimpleNamespace(search=SimpleNamespace(nsga2=SimpleNamespace(latency_batch=4))))
    return exp, structure, out if out in names else None


def individual(structure, widths, seed, out):
    scores = {g.id: torch.rand(g.channels, generator=torch.Generator().manual_seed(seed + g.id), dtype=torch.float64)
              for g in structure.free}
    return Individual(MaskSet(structure.mask_of(choose_channels(structure, widths, scores)), out))


def test_latency_of_the_pruned_network_cached_per_width_vector(monkeypatch):
    exp, structure, out = channel_exp()
    timed = []

    def fake_latency(net, input_shape, batch=1, **_):
        timed.append((net, batch))
        return 1e-3 * sum(m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    monkeypatch.setattr(objectives, "measure_latency", fake_latency)
    costs = objectives.Costs(exp, ["latency", "compact_flops"])
    half = repair(structure, structure.full_widths(), 0.5 * structure.dense_macs, 0.02)
    quarter = repair(structure, structure.full_widths(), 0.25 * structure.dense_macs, 0.02)
    a, b, c = individual(structure, half, 0, out), individual(structure, half, 100, out), individual(structure, quarter, 0, out)
    assert not all(torch.equal(a.mask[k], b.mask[k]) for k in a.mask)  # same widths, other channels
    la, fa = costs(a)
    lb, fb = costs(b)
    lc, fc = costs(c)
    assert len(timed) == 2 and la == lb and fa == fb  # one measurement per width vector
    assert all(batch == 4 for _, batch in timed)  # search.nsga2.latency_batch
    net = timed[0][0]
    modules = dict(net.named_modules())
    for g, w in zip(structure.free, half):  # what was timed is the physically pruned network
        assert modules[g.root].weight.shape[0] == w
    assert fa == float(count_flops(net, SHAPE)["dense"])
    assert fc < fa < count_flops(exp.model, SHAPE)["dense"] and lc < la


def test_nsga2_channel_mode_latency_front(tmp_path):
    raw = {"seed": 0, "data": {"name": "digits", "train_subset": 256}, "model": MODEL,
           "masks": {"granularity": "channel", "macs_tolerance": 0.05},
           "search": {"method": "nsga2", "sparsity": 0.75, "population": 4, "generations": 1, "burst_epochs": 0.25,
                      "nsga2": {"objectives": ["val_accuracy", "latency"], "levels": [0.25, 0.5, 0.75],
                                "density_range": [0.2, 0.8], "prune_mutations": {"width": 1.0}, "grow_mutation": "width",
                                "swap_mutation": "width", "init": "random", "init_epochs": 0.25}},
           "train": {"batch_size": 64}, "final": {"epochs": 1}, "evaluation": {"device": "cpu"}}
    summary = run_experiment(build_config(raw), tmp_path)
    assert summary["members"] and all(0 < m["latency"] < 1 for m in summary["members"])
    assert "latency" in (tmp_path / "front.csv").read_text().splitlines()[0]

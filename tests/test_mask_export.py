"""A found mask used elsewhere: load a run's mask, apply it to the user's own model by parameter name,
export through torch.nn.utils.prune and as .npz (the README's 3-line path)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import evo_pai
from conftest import tiny_raw
from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.runs.mask_file import export_mask
from evo_pai.runs.runner import run_experiment


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run: kstarts on the tiny synthetic config (mlp 16-32-16-4, parameters layers.N.weight)."""
    out = tmp_path_factory.mktemp("run")
    run_experiment(build_config(tiny_raw("kstarts")), out)
    return out


def users_sequential() -> nn.Sequential:
    """The user's own copy of the searched network: the same layers, plain nn.Sequential names (0.weight ...)."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


class Named(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(16, hidden), nn.Linear(hidden, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_load_mask_and_torch_prune_on_users_sequential(run_dir):
    mask = evo_pai.load_mask(run_dir)
    assert set(mask) == {"layers.0.weight", "layers.2.weight", "layers.4.weight"}
    model = mask.to_torch_prune(users_sequential())  # was: KeyError: 'layers.0'
    for i, layer in [(0, "layers.0.weight"), (2, "layers.2.weight"), (4, "layers.4.weight")]:
        assert torch.equal(model[i].weight_mask.bool(), mask[layer])
        assert (model[i].weight[~mask[layer]] == 0).all() and (model[i].weight[mask[layer]] != 0).all()
    torch.nn.utils.prune.remove(model[0], "weight")  # permanent: a plain weight with zeros
    assert (model[0].weight[~mask["layers.0.weight"]] == 0).all()


def test_apply_keeps_pruned_weights_zero_while_the_user_trains(run_dir):
    mask = evo_pai.load_mask(run_dir)
    model = mask.apply_(users_sequential())
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all((model[i].weight[~mask[k]] == 0).all() for i, k in [(0, "layers.0.weight"), (4, "layers.4.weight")])
    density = sum(int((model[i].weight != 0).sum()) for i in (0, 2, 4)) / sum(model[i].weight.numel() for i in (0, 2, 4))
    assert density == pytest.approx(mask.density(), abs=1e-9)


def test_npz_export_is_plain_numpy_and_round_trips(run_dir, tmp_path):
    mask = evo_pai.load_mask(run_dir)
    path = export_mask(run_dir, tmp_path / "mask.npz", "npz")
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(mask) and all(f[k].dtype == np.bool_ for k in f.files)
        assert np.array_equal(f["layers.2.weight"], mask["layers.2.weight"].numpy())
    assert evo_pai.load_mask(path) == mask  # load_mask also reads the .npz
    assert MaskSet.from_npz(mask.to_npz(tmp_path / "again.npz")) == mask


def test_unmatched_layers_are_one_line_with_names_and_shapes(run_dir):
    mask = evo_pai.load_mask(run_dir)
    with pytest.raises(EvoPaiError) as err:
        mask.apply_(Named(hidden=64))  # other names and other shapes
    msg = str(err.value)
    assert "\n" not in msg and "layers.0.weight (32, 16)" in msg and "fc1.weight (64, 16)" in msg, msg


def test_other_names_same_shapes_get_a_names_mapping_that_works(run_dir):
    mask = evo_pai.load_mask(run_dir)
    with pytest.raises(EvoPaiError, match=r"names=\{'layers.0.weight': 'fc1.weight'") as err:
        mask.to_torch_prune(Named())
    names = {"layers.0.weight": "fc1.weight", "layers.2.weight": "fc2.weight", "layers.4.weight": "out.weight"}
    assert repr(names) in str(err.value)
    model = mask.to_torch_prune(Named(), names=names)
    assert torch.equal(model.fc2.weight_mask.bool(), mask["layers.2.weight"])


def test_a_prefix_from_a_wrapper_still_matches(run_dir):
    mask = evo_pai.load_mask(run_dir)
    wrapper = nn.Module()
    wrapper.net = nn.Module()
    wrapper.net.layers = users_sequential()  # parameters net.layers.0.weight ...
    mask.apply_(wrapper)
    assert (wrapper.net.layers[0].weight[~mask["layers.0.weight"]] == 0).all()


def test_load_mask_refuses_a_folder_without_a_mask(tmp_path):
    with pytest.raises(EvoPaiError, match="no mask.safetensors"):
        evo_pai.load_mask(tmp_path)
    with pytest.raises(EvoPaiError, match="no such run folder"):
        evo_pai.load_mask(tmp_path / "nope")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(EvoPaiError, match="cannot read mask file"):
        evo_pai.load_mask(tmp_path / "bad.npz")

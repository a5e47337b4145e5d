"""Pruners on tiny hand-made networks whose right mask can be worked out by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.operators.pruners import ScoreContext, exponential_schedule, prune
from evo_pai.core.registry import PRUNER

NAMES = ["0.weight", "1.weight"]


def two_layer(w1, w2) -> nn.Sequential:
    """x -> W1 x -> W2 (.) without biases or nonlinearity: every score has a closed form."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w1, dtype=torch.float64))
        net[1].weight.copy_(torch.tensor(w2, dtype=torch.float64))
    return net


def ctx_for(net, x, y) -> ScoreContext:
    return ScoreContext(net, NAMES, torch.tensor(x, dtype=torch.float64), torch.tensor(y), torch.Generator().manual_seed(0))


def dense(net) -> MaskSet:
    return MaskSet.dense({k: tuple(p.shape) for k, p in net.named_parameters()}, "1.weight")


W1 = [[0.5, -2.0], [1.0, 0.1]]
W2 = [[3.0, 0.2], [-0.4, 1.5]]


def test_every_pruner_is_registered():
    assert {"random", "magnitude", "snip", "grasp", "synflow"} <= set(PRUNER.names())


def test_magnitude_keeps_the_largest_initial_weights():
    net = two_layer(W1, W2)
    m = prune("magnitude", ctx_for(net, [[1.0, 1.0]], [0]), dense(net), 0.5, budget="uniform", min_output_fan_in=0)
    assert m["0.weight"].tolist() == [[False, True], [True, False]]  # |−2.0|, |1.0|
    assert m["1.weight"].tolist() == [[True, False], [False, True]]  # |3.0|, |1.5|


def test_snip_scores_are_gradient_times_weight_by_hand():
    net = two_layer(W1, W2)
    x, y = torch.tensor([[1.0, 2.0]], dtype=torch.float64), 1
    # Hand computation: h = W1 x, z = W2 h, dL/dz = softmax(z) − e_y, dL/dW2 = dz hᵀ, dL/dW1 = (W2ᵀ dz) xᵀ.
    w1, w2 = torch.tensor(W1, dtype=torch.float64), torch.tensor(W2, dtype=torch.float64)
    h = w1 @ x[0]
    dz = torch.softmax(w2 @ h, 0) - torch.nn.functional.one_hot(torch.tensor(y), 2).double()
    s2 = (torch.outer(dz, h) * w2).abs()
    s1 = (torch.outer(w2.T @ dz, x[0]) * w1).abs()
    scores = PRUNER.get("snip")(ctx_for(net, x.tolist(), [y]), dense(net))
    assert torch.allclose(scores["0.weight"], s1) and torch.allclose(scores["1.weight"], s2)
    m = prune("snip", ctx_for(net, x.tolist(), [y]), dense(net), 0.75, budget="global", min_output_fan_in=0)
    flat = torch.cat([s1.flatten(), s2.flatten()])
    top = torch.zeros(8, dtype=torch.bool)
    top[flat.topk(2).indices] = True
    assert torch.equal(torch.cat([m["0.weight"].flatten(), m["1.weight"].flatten()]), top)


def test_grasp_scores_are_weight_times_hessian_gradient():
    net = two_layer(W1, W2)
    x, y = [[1.0, -1.0], [0.5, 2.0]], [0, 1]
    t = 200.0

    def loss(flat):
        w1, w2 = flat[:4].reshape(2, 2), flat[4:].reshape(2, 2)
        out = (torch.tensor(x, dtype=torch.float64) @ w1.T) @ w2.T / t
        return torch.nn.functional.cross_entropy(out, torch.tensor(y))

    theta = torch.tensor(W1 + W2, dtype=torch.float64).flatten()
    g = torch.autograd.functional.jacobian(loss, theta)
    hess = torch.autograd.functional.hessian(loss, theta)
    expect = theta * (hess @ g)
    scores = PRUNER.get("grasp")(ctx_for(net, x, y), dense(net), temperature=t)
    got = torch.cat([scores["0.weight"].flatten(), scores["1.weight"].flatten()])
    assert torch.allclose(got, expect, rtol=1e-6, atol=1e-12)


def test_synflow_scores_are_path_norms():
    net = two_layer(W1, W2)
    a1, a2 = torch.tensor(W1, dtype=torch.float64).abs(), torch.tensor(W2, dtype=torch.float64).abs()
    # R = 1ᵀ|W2||W1|1: weight W1[i,j] carries |W1[i,j]| · Σ_k |W2[k,i]|; W2[k,i] carries |W2[k,i]| · Σ_j |W1[i,j]|.
    s1 = a1 * a2.sum(0).unsqueeze(1)
    s2 = a2 * a1.sum(1).unsqueeze(0)
    scores = PRUNER.get("synflow")(ctx_for(net, [[0.0, 0.0]], [0]), dense(net))
    assert torch.allclose(scores["0.weight"], s1) and torch.allclose(scores["1.weight"], s2)
    m = prune("synflow", ctx_for(net, [[0.0, 0.0]], [0]), dense(net), 0.5, budget="uniform", min_output_fan_in=0,
              params={"iterations": 1})
    assert m["1.weight"].tolist() == [[True, False], [False, True]]


def test_synflow_iterates_on_the_exponential_schedule_without_regrowth():
    sched = exponential_schedule(0.99, 4)
    assert sched[-1] == pytest.approx(0.99) and all(a < b for a, b in zip(sched, sched[1:]))
    assert 1 - sched[0] == pytest.approx(0.01 ** 0.25)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    shapes = {"0.weight": (16, 8), "2.weight": (4, 16)}
    ctx = ScoreContext(net, list(shapes), torch.randn(4, 8, dtype=torch.float64), torch.zeros(4, dtype=torch.long),
                       torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = prune("synflow", ctx, MaskSet.dense(shapes, "2.weight"), 0.9, budget="global", params={"iterations": 20})
    assert m.sparsity() == pytest.approx(0.9, abs=1 / 192)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # θ0 untouched
    # The mask after round k of 20 is prune's answer for k rounds to the k-th level (the same first k levels):
    # each round keeps a subset of the last (no regrowth), rounds differ (it iterates), the last is `m`.
    rounds = [prune("synflow", ctx, MaskSet.dense(shapes, "2.weight"), level, budget="global",
                    params={"iterations": k + 1}) for k, level in enumerate(exponential_schedule(0.9, 20))]
    assert rounds[-1] == m and len({r.hash() for r in rounds}) == 20
    for prev, nxt in zip(rounds, rounds[1:]):
        assert all(not bool((nxt[k] & ~prev[k]).any()) for k in shapes)
    one_shot = prune("synflow", ctx, MaskSet.dense(shapes, "2.weight"), 0.9, budget="global", params={"iterations": 1})
    assert one_shot != m  # iterating changes the answer


@pytest.mark.parametrize("name", ["random", "magnitude", "snip", "grasp", "synflow"])
def test_no_layer_is_pruned_away_unless_allowed(name):
    # The output layer's weights are tiny: a global ranking would drop the whole layer.
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3)).double()
    with torch.no_grad():
        net[2].weight.mul_(1e-6)
    shapes = {"0.weight": (20, 10), "2.weight": (3, 20)}
    ctx = ScoreContext(net, list(shapes), torch.randn(16, 10, dtype=torch.float64), torch.randint(0, 3, (16,)),
                       torch.Generator().manual_seed(0))
    start = MaskSet.dense(shapes, "2.weight")
    params = {"iterations": 5} if name == "synflow" else {}
    m = prune(name, ctx, start, 0.97, budget="global", min_output_fan_in=1, params=params)
    assert all(c > 0 for c in m.counts().values())  # the tiny output layer survives
    allowed = prune(name, ctx, start, 0.97, budget="global", min_output_fan_in=0, allow_empty_layers=True, params=params)
    assert sum(allowed.counts().values()) == round(0.03 * 260)


def test_bad_pruner_parameters_are_one_line_errors():
    net = two_layer(W1, W2)
    with pytest.raises(EvoPaiError, match="does not accept"):
        prune("snip", ctx_for(net, [[1.0, 1.0]], [0]), dense(net), 0.5, params={"nonsense": 1})
    with pytest.raises(EvoPaiError, match="iterations"):
        prune("synflow", ctx_for(net, [[1.0, 1.0]], [0]), dense(net), 0.5, params={"iterations": 0})

"""train.precision on CPU: tf32 changes nothing here (CUDA-only switches), bf16 autocast runs and stays
close to fp32, local and vectorized agree under each; numerics() restores torch's settings."""
from __future__ import annotations

import pytest
import torch

from evo_pai.core.config import build_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.training.precision import autocast_forward, numerics
from evo_pai.training.stacked import _StackedLinear

from test_vectorized import both, mixed_tasks, raw_for


def results(model: str, precision: str):
    raw = raw_for(model, "float32")
    raw["train"] = {**raw["train"], "precision": precision}
    local, vec, exp = both(raw)
    tasks = mixed_tasks(exp, n=3)
    return local.evaluate(tasks), vec.evaluate(tasks)


def weight_rel(a, b) -> float:
    w = a.traits["weight"]
    return max(float((w[n] - b.traits["weight"][n]).norm() / w[n].norm()) for n in w)


@pytest.mark.parametrize("model", ["mlp", "lenet5"])
def test_tf32_is_a_no_op_on_cpu_and_bf16_stays_close(model):
    fp32, tf32, bf16 = (results(model, p) for p in ("fp32", "tf32", "bf16"))
    for backend in (0, 1):
        for a, b, c in zip(fp32[backend], tf32[backend], bf16[backend]):
            assert a.metrics == b.metrics and weight_rel(a, b) == 0.0  # bitwise: CPU has no TF32
            assert 0 < weight_rel(a, c) < 0.05  # autocast really ran (bits differ), and stayed close
            assert abs(a.metrics["val_loss"] - c.metrics["val_loss"]) < 0.02
            assert abs(a.metrics["val_accuracy"] - c.metrics["val_accuracy"]) <= 0.05
    # local vs vectorized under bf16: metrics measured within 3e-7 and weights 2e-8 (relative) on this CPU,
    # while bf16 itself moves the weights by 2e-3 to 1e-2: a backend training in fp32 instead fails here
    for a, b in zip(*bf16):
        assert all(abs(a.metrics[k] - b.metrics[k]) < 1e-5 for k in a.metrics), (a.metrics, b.metrics)
        assert weight_rel(a, b) < 1e-6


def test_numerics_sets_then_restores_torch_settings():
    b = torch.backends
    before = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark)
    with numerics("tf32"):
        assert b.cuda.matmul.allow_tf32 and b.cudnn.allow_tf32 and b.cudnn.deterministic and not b.cudnn.benchmark
        with numerics("fp32"):  # nested: innermost wins, outer restored on exit
            assert not b.cuda.matmul.allow_tf32 and not b.cudnn.allow_tf32
        assert b.cuda.matmul.allow_tf32
    assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark) == before
    with pytest.raises(ValueError, match="precision"):
        with numerics("fp16"):
            pass


def test_stacked_linear_backward_under_bf16_autocast():
    x = torch.randn(3, 5, 4, requires_grad=True)
    w = torch.randn(3, 2, 4, requires_grad=True)
    bias = torch.randn(3, 2, requires_grad=True)
    fwd = autocast_forward(lambda *a: _StackedLinear.apply(*a), "bf16", torch.device("cpu"), torch.float32)
    out = fwd(x, w, bias)
    assert out.dtype == torch.float32
    out.sum().backward()  # dy in bf16 against float32 weights: one dtype inside the backward
    assert w.grad.dtype == bias.grad.dtype == x.grad.dtype == torch.float32
    ref = torch.bmm(torch.ones(3, 2, 5), x.detach())  # dW = dy^T x with dy = 1
    assert torch.allclose(w.grad, ref, rtol=2e-2, atol=2e-2) and not torch.equal(w.grad, ref)  # bf16 rounding


def test_reduced_precision_needs_float32_weights():
    with pytest.raises(EvoPaiError, match=r"^config error: train: precision bf16 needs float32 weights.*train.dtype float32"):
        build_config({"train": {"precision": "bf16", "dtype": "float64"}})
    with pytest.raises(EvoPaiError, match="train.precision"):
        build_config({"train": {"precision": "fp16"}})
    assert build_config({}).train.precision == "fp32"

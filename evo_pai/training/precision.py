"""How a burst's arithmetic is done on its device: `train.precision` and the cuDNN settings.

- `fp32` (default): float32 matmuls and convolutions in IEEE float32 on every device. On CUDA that
  means turning TF32 *off* for cuDNN convolutions too (torch leaves it on by default), so that CPU,
  CUDA, local and vectorized backends compute the same thing up to rounding order.
- `tf32`: CUDA matmuls and convolutions in TensorFloat-32 (10-bit mantissa inputs, float32
  accumulation) on Ampere and later GPUs. No effect on CPU: these flags are CUDA's alone.
- `bf16`: forward passes under `torch.autocast(dtype=bfloat16)` (CPU and CUDA); weights, optimizer
  state, gradients of the weights and the loss stay float32.

cuDNN: `deterministic=True, benchmark=False` while a burst trains. A run must be a pure function of
its seed (backends agree, resume equals an uninterrupted run, the cache is sound); autotuning
(`benchmark=True`) may pick different algorithms run to run and with them different float32 bits.
Every setting is restored when the burst ends, so a caller's own torch settings are untouched.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def _tf32_flags() -> list[tuple[object, str]]:
    """The CUDA TF32 switches, through torch's legacy attributes on purpose: torch >= 2.9 also has
    `fp32_precision` strings, but once those are set, any read of the legacy attributes (which
    torch.compile's inductor still does, e.g. for convolutions) raises; setting the legacy ones keeps
    both readable."""
    return [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]


@contextmanager
def numerics(precision: str) -> Iterator[None]:
    """Apply `precision`'s TF32 switches and deterministic cuDNN for the duration of a burst."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    settings = [(obj, attr, precision == "tf32") for obj, attr in _tf32_flags()]
    settings += [(torch.backends.cudnn, "deterministic", True), (torch.backends.cudnn, "benchmark", False)]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in settings]
    try:
        for obj, attr, value in settings:
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def autocast_forward(fn: Callable, precision: str, device: torch.device, dtype: torch.dtype) -> Callable:
    """`fn` itself, or for bf16 `fn` run under autocast with its output cast back to `dtype` (so the
    loss, its reduction and the evaluation sums are computed in float32, as without autocast)."""
    if precision != "bf16":
        return fn

    def forward(*args, **kwargs):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = fn(*args, **kwargs)
        return out.to(dtype)

    forward.wrapped = fn  # type: ignore[attr-defined]
    return forward

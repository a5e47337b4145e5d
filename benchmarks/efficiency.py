"""Achieved FLOP/s of population training as a fraction of this machine's dense GEMM FLOP/s.

    python benchmarks/efficiency.py [--quick] [--repeats N]

For LeNet-300-100 on Fashion-MNIST, a burst's useful work is its matrix multiplies: per step and
layer the forward GEMM, the weight-gradient GEMM and (except for the first layer, whose input
needs no gradient) the input-gradient GEMM, plus the validation forward. The same GEMMs, with the
same shapes, are replayed as plain `torch.bmm` / `torch.mm` calls in the same run, interleaved
with the bursts. efficiency = GEMM-only time / burst time = achieved FLOP/s / GEMM FLOP/s
(best rounds; "paired" = the median of the per-round ratios).
Everything else a burst does (data gather, ReLU, loss, masking, gradient accumulation for the
traits, the optimizer step, validation bookkeeping) is what keeps it below 100 %. The
parameter update alone (|g| accumulation + gradient masking + optimizer step, replayed on
tensors of the burst's sizes) is timed too: gemm / (gemm + update) bounds the efficiency any
trainer that must do that update could reach on this machine.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from _common import FMNIST, interleaved, machine, parse, table  # noqa: E402

from evo_pai.training.batched import eval_rows  # noqa: E402
from evo_pai.core.config import build_config  # noqa: E402
from evo_pai.data.datasets import load_data  # noqa: E402
from evo_pai.training.tasks import BurstTask
from evo_pai.evaluation.base import WorkerContext  # noqa: E402
from evo_pai.evaluation.vectorized import BatchedTrainer  # noqa: E402
from evo_pai.search.experiment import Experiment  # noqa: E402
from evo_pai.evaluation.local import LocalEvaluator  # noqa: E402
from evo_pai.runs.components import load_components  # noqa: E402
from evo_pai.training.burst import EVAL_BATCH  # noqa: E402

BATCH = 128


def gemm_plan(model: nn.Module, k: int, steps: int, n_val: int, val_rows: int) -> list[tuple[tuple, tuple, int]]:
    """(A shape, B shape, how many times) for every GEMM of a burst; k=0 means plain 2-D mm."""
    lead = (k,) if k else ()
    plan = []
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for i, m in enumerate(linears):
        fin, fout = m.in_features, m.out_features
        plan.append(((*lead, BATCH, fin), (*lead, fin, fout), steps))  # forward
        plan.append(((*lead, fout, BATCH), (*lead, BATCH, fin), steps))  # weight gradient
        if i:  # the first layer's input is data: no input gradient
            plan.append(((*lead, BATCH, fout), (*lead, fout, fin), steps))
        full, rest = divmod(n_val, val_rows)
        plan.append(((*lead, val_rows, fin), (*lead, fin, fout), full))  # validation forward
        if rest:
            plan.append(((*lead, rest, fin), (*lead, fin, fout), 1))
    return plan


def replay(plan, dtype=torch.float32):
    ops = [(torch.randn(a, dtype=dtype), torch.randn(b, dtype=dtype), n) for a, b, n in plan]

    def run(_r: int) -> None:
        for a, b, n in ops:
            mm = torch.bmm if a.dim() == 3 else torch.mm
            for _ in range(n):
                mm(a, b)

    flops = sum(2 * a.numel() * b.shape[-1] * n for a, b, n in ops)
    return run, flops


def update_replay(model: nn.Module, k: int, steps: int, masked: list[str], hp):
    """The per-step parameter work alone: |g| accumulation, gradient masking, optimizer step."""
    from evo_pai.training.batched import make_stacked_optimizer
    from evo_pai.training.burst import make_optimizer

    lead = (k,) if k else ()
    params = [torch.randn(*lead, *p.shape).requires_grad_() for _, p in model.named_parameters()]
    names = [n for n, _ in model.named_parameters()]
    grads = [torch.randn_like(p) for p in params]
    acc = {n: torch.zeros_like(p) for n, p in zip(names, params) if n in masked}
    keep = {n: torch.rand(p.shape) < 0.5 for n, p in zip(names, params) if n in masked}
    tmp = {n: torch.empty_like(a) for n, a in acc.items()}
    if k:  # as evo_pai.training.batched does it
        keep = {n: m.float() for n, m in keep.items()}
        opt = make_stacked_optimizer(params, hp)
    else:  # as evo_pai.training.train_masked does it
        opt = make_optimizer(params, hp)

    def run(_r: int) -> None:
        for _ in range(steps):
            for n, p, g in zip(names, params, grads):
                p.grad = g
                if n in acc:
                    acc[n].add_(torch.abs(g, out=tmp[n]) if k else g.abs())
                    g.mul_(keep[n])
            opt.step()

    return run


def main() -> None:
    args = parse(__doc__.splitlines()[0])
    load_components()
    steps, n_val, ks = (20, 512, [16]) if args.quick else (40, 800, [8, 16, 32])
    raw = {"seed": 0, "data": {**FMNIST, "train_subset": steps * BATCH}, "model": {"name": "mlp"},
           "train": {"batch_size": BATCH}, "evaluation": {"device": "cpu"}}
    cfg = build_config(raw)
    data = load_data(cfg.data)
    data = dataclasses.replace(data, val_x=data.val_x[:n_val], val_y=data.val_y[:n_val])
    ctx = WorkerContext(cfg, "cpu", data)
    local = LocalEvaluator(cfg, data)
    exp = Experiment(cfg, local, data)
    masks = [exp.random_mask(0.5, i) for i in range(max(ks))]
    print(f"efficiency: {machine()}, LeNet-300-100, batch {BATCH}, {steps} steps + {n_val} validation examples, "
          f"repeats={args.repeats}{' (quick)' if args.quick else ''}")
    header = ["trainer", "K", "burst_s", "gemm_s", "update_s", "achieved_GF/s", "gemm_GF/s", "efficiency",
              "gemm+update_bound", "paired"]
    masked = [n for n in exp.shapes]
    rows = []
    cases = [("local (one model)", 1, 0, EVAL_BATCH)] + [("vectorized", k, k, eval_rows(cfg.train)) for k in ks]
    for name, k, lead, rows_val in cases:
        gemm, flops = replay(gemm_plan(ctx.model, lead, steps, n_val, rows_val))
        if lead:
            trainer = BatchedTrainer(ctx)
            burst = lambda r, k=k, trainer=trainer: trainer.run([BurstTask(masks[i], 1.0, 100 * r + i) for i in range(k)])
        else:
            burst = lambda r: local.context.run(BurstTask(masks[0], 1.0, r))
        update = update_replay(ctx.model, lead, steps, masked, cfg.train)
        t = interleaved({"burst": burst, "gemm": gemm, "update": update}, args.repeats)
        burst_s, gemm_s, update_s = t.best("burst"), t.best("gemm"), t.best("update")
        rows.append([name, k, burst_s, gemm_s, update_s, flops / burst_s / 1e9, flops / gemm_s / 1e9,
                     f"{gemm_s / burst_s:.0%}", f"{gemm_s / (gemm_s + update_s):.0%}",
                     f"{1 / t.paired('burst', 'gemm'):.0%}"])
        print(table(header, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(header, rows))
    for r in rows:
        print(f"ratio efficiency {r[0]} K={r[1]}: {r[7]} (paired rounds {r[9]}; GEMM + update alone would allow {r[8]})")


if __name__ == "__main__":
    main()

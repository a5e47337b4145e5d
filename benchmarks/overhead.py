"""Framework overhead: one burst through evo-pai vs a minimal hand-written torch loop.

    python benchmarks/overhead.py [--quick] [--repeats N]

Both train LeNet-300-100 with Adam on the same Fashion-MNIST data, from the same θ0, with the
same mask (gradients and weights masked every step) and the same batches (torch.randperm from a
torch.Generator seeded alike), then compute validation loss and accuracy. The hand loop does
nothing else; the framework burst (Evaluator.evaluate -> WorkerContext.run -> train_masked) also
records the traits fitness and DG need (per-weight |gradient| accumulation, relative change,
final weights), checks finiteness and goes through the evaluator's cache lookup.
overhead = framework time / hand-loop time - 1 (best rounds; "paired" = median per-round ratio).
A third variant, the hand loop plus the per-step |gradient| accumulation, shows how much of the
overhead is that trait (needed by the gradient fitness and DG) rather than plumbing.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import FMNIST, interleaved, machine, parse, table  # noqa: E402

from evo_pai.core.config import build_config  # noqa: E402
from evo_pai.data.datasets import load_data  # noqa: E402
from evo_pai.training.tasks import BurstTask  # noqa: E402
from evo_pai.evaluation.local import LocalEvaluator  # noqa: E402
from evo_pai.search.experiment import Experiment  # noqa: E402
from evo_pai.runs.components import load_components  # noqa: E402

BATCH = 128


def hand_loop(model, theta0, mask, data, lr: float, seed: int, traits: bool = False) -> tuple[float, float]:
    """`traits`: also accumulate |gradient| per weight every step, as fitness and DG need."""
    model.load_state_dict(theta0)
    params = dict(model.named_parameters())
    keep = {k: mask[k] for k in mask}
    with torch.no_grad():
        for k, m in keep.items():
            params[k].mul_(m)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    accum = {k: torch.zeros_like(params[k]) for k in keep}
    for idx in torch.randperm(data.n_train, generator=gen).split(BATCH):
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        for k, m in keep.items():
            if traits:
                accum[k].add_(params[k].grad.abs())
            params[k].grad.mul_(m)
        opt.step()  # masked gradients keep masked weights at exactly 0: no re-masking needed
    with torch.no_grad():
        out = model(data.val_x)
        return float(F.cross_entropy(out, data.val_y)), float((out.argmax(1) == data.val_y).float().mean())


def main() -> None:
    args = parse(__doc__.splitlines()[0])
    load_components()
    train, n_val = (4096, 1000) if args.quick else (None, 6000)
    cfg = build_config({"seed": 0, "data": {**FMNIST, "train_subset": train}, "model": {"name": "mlp"},
                        "train": {"batch_size": BATCH}, "evaluation": {"device": "cpu"}})
    data = load_data(cfg.data)
    data = dataclasses.replace(data, val_x=data.val_x[:n_val], val_y=data.val_y[:n_val])
    local = LocalEvaluator(cfg, data)
    exp = Experiment(cfg, local, data)
    mask = exp.random_mask(0.5, 0)
    model = exp.model
    ctx = local.context
    # Same work, checked once: the two ways must agree before their times mean anything.
    seed = 7
    fw = local.evaluate([BurstTask(mask, 1.0, seed)])[0].metrics
    hand = hand_loop(model, exp.theta0, mask, ctx.data, cfg.train.lr, seed)
    assert abs(fw["val_loss"] - hand[0]) < 1e-4 and abs(fw["val_accuracy"] - hand[1]) < 2e-3, (fw, hand)
    variants = {
        "framework": lambda r: local.evaluate([BurstTask(mask, 1.0, 1000 + r)]),
        "hand_loop": lambda r: hand_loop(model, exp.theta0, mask, ctx.data, cfg.train.lr, 1000 + r),
        "hand_loop_traits": lambda r: hand_loop(model, exp.theta0, mask, ctx.data, cfg.train.lr, 1000 + r, True),
    }
    print(f"overhead: {machine()}, LeNet-300-100, {data.n_train} training + {n_val} validation examples, "
          f"repeats={args.repeats}{' (quick)' if args.quick else ''}")
    t = interleaved(variants, args.repeats)
    ratio, paired = t.ratio("framework", "hand_loop"), t.paired("framework", "hand_loop")
    traits = t.ratio("hand_loop_traits", "hand_loop")
    print(table(["framework_s", "hand_loop_s", "overhead", "paired", "hand_loop+|g|_s", "|g|_share"],
                [[t.best("framework"), t.best("hand_loop"), f"{ratio - 1:+.1%}", f"{paired - 1:+.1%}",
                  t.best("hand_loop_traits"), f"{traits - 1:+.1%}"]]))
    print(f"ratio overhead framework/hand_loop: {ratio:.3f} ({ratio - 1:+.1%}; paired rounds {paired - 1:+.1%})")
    print(f"ratio traits hand_loop+|g|/hand_loop: {traits:.3f} (the per-step |gradient| accumulation alone)")


if __name__ == "__main__":
    main()

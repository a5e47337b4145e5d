"""Population training: K bursts one after another (backend local) vs together (backend vectorized).

    python benchmarks/population_throughput.py [--quick] [--repeats N]

One burst = one epoch of Adam (batch 128) on a Fashion-MNIST training subset, then validation
(LeNet-300-100: 16384 training / 1800 validation examples, the 9:1 ratio of the full set;
Conv-4: 256 / 128, its cost per example is ~500x LeNet's; ResNet-20 with BatchNorm: 256 / 128; plugin models of
benchmarks/_plugin_models.py: `encoder`, a transformer with dropout, 1024 / 256, which the vectorized backend
runs through torch.func.vmap; `dropout_resnet`, a ResNet with Dropout, Dropout2d and a `mean((2, 3))` head,
256 / 128, which its hand path batches — `--with-vmap` times vmap on it in the same rounds). Both backends get the same tasks
(masks, seeds) each round; seeds change between rounds so the result cache never hits.
Times are each way's best round; speedup = best sequential / best vectorized; "paired" is
the median over rounds of the two times measured back to back.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import FMNIST, interleaved, machine, parse, table  # noqa: E402
from _plugin_models import register  # noqa: E402

from evo_pai.core.config import build_config  # noqa: E402
from evo_pai.data.datasets import load_data  # noqa: E402
from evo_pai.training.tasks import BurstTask  # noqa: E402
from evo_pai.evaluation.local import LocalEvaluator  # noqa: E402
from evo_pai.evaluation.vectorized import BatchedTrainer, VectorizedEvaluator  # noqa: E402
from evo_pai.search.experiment import Experiment  # noqa: E402
from evo_pai.runs.components import load_components  # noqa: E402
from evo_pai.training.vmapped import VmapForward  # noqa: E402

SPARSITY = 0.5


def case(model: str, train: int | None, val: int, ks: list[int], with_vmap: bool):
    name = f"bench_{model}" if model in ("encoder", "dropout_resnet") else model
    raw = {"seed": 0, "data": {**FMNIST, "train_subset": train}, "model": {"name": name},
           "evaluation": {"device": "cpu"}}
    cfg = build_config(raw)
    data = load_data(cfg.data)
    data = dataclasses.replace(data, val_x=data.val_x[:val], val_y=data.val_y[:val])
    local = LocalEvaluator(cfg, data)
    vec = VectorizedEvaluator(build_config({**raw, "evaluation": {"backend": "vectorized", "device": "cpu"}}), data)
    exp = Experiment(cfg, local, data)
    masks = [exp.random_mask(SPARSITY, i) for i in range(max(ks))]
    for k in ks:
        def tasks(r: int, k=k):
            # seeds unique per (K, round): no result of another case or round is ever a cache hit
            return [BurstTask(masks[i], 1.0, 1_000_000 * k + 1000 * (r + 2) + i) for i in range(k)]
        variants = {"sequential": lambda r, k=k: local.evaluate(tasks(r)),
                    "vectorized": lambda r, k=k: vec.evaluate(tasks(r))}
        if with_vmap:  # same trainer, forward/backward by torch.func.vmap instead of hand batching
            trainer = BatchedTrainer(vec.context)
            trainer.forward = VmapForward(vec.context.model, name, data.input_shape)
            variants["vmap"] = lambda r, k=k: trainer.run(tasks(r))
        yield k, data.n_train, variants


def main() -> None:
    def extra(p):
        p.add_argument("--models", default="mlp,conv4", help="comma-separated: mlp (LeNet-300-100), conv4, resnet20, "
                       "encoder, dropout_resnet")
        p.add_argument("--ks", default=None, help="comma-separated population sizes (default 8,16,32; quick 8,16 / 4)")
        p.add_argument("--with-vmap", action="store_true", help="also time torch.func.vmap as the batching mechanism")

    args = parse(__doc__.splitlines()[0], extra)
    load_components()
    register()
    plugins = ["encoder", "dropout_resnet"]
    if args.quick:
        plan = [("mlp", 1024, 256, [8, 16]), ("conv4", 16, 16, [4]), ("resnet20", 16, 16, [4]),
                *[(m, 64, 32, [4]) for m in plugins]]
    else:
        plan = [("mlp", 16384, 1800, [8, 16, 32]), ("conv4", 256, 128, [8, 16, 32]), ("resnet20", 256, 128, [8, 16]),
                ("encoder", 1024, 256, [8]), ("dropout_resnet", 256, 128, [8])]
    models = args.models.split(",")
    plan = [(m, tr, va, [int(k) for k in args.ks.split(",")] if args.ks else ks) for m, tr, va, ks in plan if m in models]
    if not plan:
        raise SystemExit("--models: choose from mlp, conv4, resnet20, " + ", ".join(plugins))
    print(f"population_throughput: {machine()}, repeats={args.repeats}{' (quick)' if args.quick else ''}")
    header = ["model", "K", "train", "seq_s", "vec_s", "speedup", "seq_model_ep/s", "vec_model_ep/s", "paired"]
    if args.with_vmap:
        header += ["vmap_s", "vmap_speedup"]
    rows = []
    for model, train, val, ks in plan:
        for k, n_train, variants in case(model, train, val, ks, args.with_vmap):
            t = interleaved(variants, args.repeats)
            seq, vec = t.best("sequential"), t.best("vectorized")
            rows.append([model, k, n_train, seq, vec, t.ratio("sequential", "vectorized"), k / seq, k / vec,
                         t.paired("sequential", "vectorized")])
            if args.with_vmap:
                rows[-1] += [t.best("vmap"), t.ratio("sequential", "vmap")]
            print(table(header, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(header, rows))
    for r in rows:
        print(f"ratio speedup {r[0]} K={r[1]}: {r[5]:.2f}x (paired rounds {r[8]:.2f}x)"
              + (f", vmap: {r[10]:.2f}x" if args.with_vmap else ""))


if __name__ == "__main__":
    main()

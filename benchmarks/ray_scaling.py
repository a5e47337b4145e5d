"""One combined-search generation: the local backend vs Ray with 2 CPU actors.

    python benchmarks/ray_scaling.py [--quick] [--repeats N] [--actors N]

The generation is configs/combined_fmnist.yaml with K=16 and one generation (K bursts of
LeNet-300-100 on Fashion-MNIST, the fittest wins). The local backend runs with torch's default
thread count (all cores) and with one thread (what each 1-CPU actor uses); local and Ray rounds
alternate, rotating which goes first, so load on a shared machine hits all of them. Ray runs
with sequential actors (one burst per call, the local backend's arithmetic) and with vectorized
actors (each trains its share of the population in one batched pass); the single-process
vectorized backend is the third reference. For Ray each round pays its fixed cost again
(ray.init, starting the actors, which load the data, and shutdown), reported apart from the
generation itself. `--quick` uses K=4 on a 2,000-example subset (1,200 for validation) and one
round (< 1 min).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table  # noqa: E402

from evo_pai.core.config import load_config  # noqa: E402
from evo_pai.data.datasets import load_data  # noqa: E402
from evo_pai.evaluation.base import make_evaluator  # noqa: E402
from evo_pai.search.experiment import Experiment  # noqa: E402
from evo_pai.core.registry import METHOD
from evo_pai.runs.components import load_components  # noqa: E402
from evo_pai.runs.runner import seed_everything  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "combined_fmnist.yaml"


def generation(cfg, data):
    """Run one combined generation on a fresh evaluator; (seconds, winner's mask hash)."""
    seed_everything(cfg.seed)
    with make_evaluator(cfg, data) as ev:
        exp = Experiment(cfg, ev, data)
        t = time.perf_counter()
        outcome = METHOD.get("combined")(exp)
        return time.perf_counter() - t, outcome.mask.hash()


def ray_round(cfg, data) -> dict:
    """The laptop path: the evaluator starts Ray itself (evaluation.address empty) and stops it."""
    ev = make_evaluator(cfg, data)  # ray.init, then the actors; each loads the dataset
    try:
        exp = Experiment(cfg, ev, data)
        seed_everything(cfg.seed)
        t = time.perf_counter()
        outcome = METHOD.get("combined")(exp)
        seconds = time.perf_counter() - t
    finally:
        ev.close()
    init, actors, shutdown = ev.timings["ray_init"], ev.timings["actors"], ev.timings["shutdown"]
    return {"generation": seconds, "fixed": init + actors + shutdown, "init": init, "actors": actors,
            "shutdown": shutdown, "winner": outcome.mask.hash()}


def local_round(cfg, data, threads: int) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seconds, winner = generation(cfg, data)
    finally:
        torch.set_num_threads(before)
    return {"generation": seconds, "fixed": 0.0, "winner": winner}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="K=4 on a 2,000-example subset, one round (< 1 min)")
    p.add_argument("--repeats", type=int, default=None, help="rounds per backend (default 3, quick 1)")
    p.add_argument("--actors", type=int, default=2, help="Ray actors, 1 CPU each (default 2)")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    load_components()
    k = 4 if args.quick else 16
    common = [f"search.population={k}", "search.generations=1"]
    if args.quick:
        common += ["data.train_subset=2000", "data.test_subset=500", "data.val_fraction=0.02"]
    cpu = common + ["evaluation.device=cpu"]
    local_cfg = load_config(CONFIG, cpu + ["evaluation.backend=local"])
    ray_common = cpu + ["evaluation.backend=ray", f"evaluation.num_actors={args.actors}", "evaluation.cpus_per_actor=1"]
    ray_cfg = load_config(CONFIG, ray_common + ["evaluation.actor_trainer=sequential"])
    ray_vec_cfg = load_config(CONFIG, ray_common + ["evaluation.actor_trainer=vectorized"])
    vec_cfg = load_config(CONFIG, cpu + ["evaluation.backend=vectorized"])
    data = load_data(local_cfg.data)
    threads = torch.get_num_threads()
    variants = {
        f"local ({threads} threads)": lambda: local_round(local_cfg, data, threads),
        "local (1 thread)": lambda: local_round(local_cfg, data, 1),
        f"local vectorized ({threads} threads)": lambda: local_round(vec_cfg, data, threads),
        f"ray, {args.actors} actors x 1 CPU": lambda: ray_round(ray_cfg, data),
        f"ray, {args.actors} vectorized actors x 1 CPU": lambda: ray_round(ray_vec_cfg, data),
    }
    if torch.cuda.is_available():  # one GPU shared by four actors, against the local backend on that GPU
        gpu = common + ["evaluation.device=auto"]
        local_gpu = load_config(CONFIG, gpu + ["evaluation.backend=local"])
        ray_gpu = load_config(CONFIG, gpu + ["evaluation.backend=ray", "evaluation.num_actors=4",
                                             "evaluation.gpus_per_actor=0.25", "evaluation.cpus_per_actor=1"])
        variants["local (cuda)"] = lambda: local_round(local_gpu, data, threads)
        variants["ray, 4 actors x 0.25 GPU"] = lambda: ray_round(ray_gpu, data)
    print(f"ray_scaling: {machine()}; K={k}, LeNet-300-100, Fashion-MNIST n_train={data.n_train}, "
          f"burst {local_cfg.search.burst_epochs} epoch, {repeats} round(s){' (quick)' if args.quick else ''}")
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            runs[name].append(variants[name]())
            print(f"  round {r + 1} {name}: {runs[name][-1]['generation']:.2f} s", flush=True)
    med = {name: {key: statistics.median(x[key] for x in rs) for key in rs[0] if key != "winner"}
           for name, rs in runs.items()}
    print(table(["backend", "generation s", "fixed cost s", "total s"],
                [[n, m["generation"], m["fixed"], m["generation"] + m["fixed"]] for n, m in med.items()]))
    seq_name, vec_name = f"ray, {args.actors} actors x 1 CPU", f"ray, {args.actors} vectorized actors x 1 CPU"
    for ray_name in (n for n in names if n.startswith("ray")):
        r = med[ray_name]
        for local_name in (n for n in names if n.startswith("local") and ("cuda" in n) == ("GPU" in ray_name)):
            loc = med[local_name]["generation"]
            print(f"ratio {local_name} / {ray_name}: {loc / r['generation']:.2f}x for the generation, "
                  f"{loc / (r['generation'] + r['fixed']):.2f}x with Ray's fixed cost")
        print(f"fixed cost of {ray_name}: {r['fixed']:.1f} s = ray.init {r['init']:.1f} s + actor start "
              f"{r['actors']:.1f} s + shutdown {r['shutdown']:.1f} s (paid once per search)")
    if vec_name in med:
        print(f"ratio ray sequential actors / ray vectorized actors: "
              f"{med[seq_name]['generation'] / med[vec_name]['generation']:.2f}x for the generation")
    winners = {name: sorted({x["winner"][:8] for x in rs}) for name, rs in runs.items()}
    # Local and sequential actors do the same float arithmetic: their winners must agree. Batched
    # (vectorized) float32 arithmetic differs in the last bits, which may flip a close ranking or a weight at DG's threshold.
    exact = {n: ws for n, ws in winners.items() if "vectorized" not in n}
    same = len({w for ws in exact.values() for w in ws}) == 1
    print(f"same winners: {'yes' if same else 'no: ' + ', '.join(f'{n} {ws}' for n, ws in exact.items())}")
    batched = {w for n, ws in winners.items() if "vectorized" in n for w in ws}
    print(f"vectorized winners {'equal' if batched <= set(next(iter(exact.values()))) else 'differ: ' + str(sorted(batched))}"
          " (float32 batched arithmetic; equal in float64, see tests/test_ray.py)")


if __name__ == "__main__":
    main()

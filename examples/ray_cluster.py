"""The combined search on Ray from Python: on this machine, or on a cluster you started.

    python examples/ray_cluster.py                  # Ray starts here (one actor per CPU), then stops
    python examples/ray_cluster.py auto             # join the cluster this machine is part of
    python examples/ray_cluster.py HEAD_IP:6379     # join a cluster by address

A cluster, two machines (token authentication on; copy ~/.ray/auth_token to every machine):
    head$    RAY_AUTH_MODE=token ray start --head --port=6379
    worker$  RAY_AUTH_MODE=token ray start --address=HEAD_IP:6379
    head$    RAY_AUTH_MODE=token python examples/ray_cluster.py auto

configs/ray_cluster.yaml is the full-size search (Fashion-MNIST, K=32); this example shrinks it to
scikit-learn's digits so it finishes in about a minute on a laptop. See docs/distributed.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

import ray

import evo_pai

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ray_cluster.yaml"
SMALL = ["data.name=digits", "data.root=null", "model.params={hidden: [100, 50]}", "search.population=8",
         "search.generations=3", "search.burst_epochs=3", "final.epochs=20", "evaluation.address=null"]


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else None
    out = sys.argv[2] if len(sys.argv) > 2 else None
    # Connecting here (instead of evaluation.address) shows the other way in: an evaluator that finds
    # Ray already initialised reuses the connection and leaves it open for the caller.
    ray.init(address=address, include_dashboard=False if address is None else None)
    try:
        print(f"Ray cluster: {ray.cluster_resources().get('CPU', 0):g} CPUs, "
              f"{ray.cluster_resources().get('GPU', 0):g} GPUs, {len(ray.nodes())} node(s)")
        summary = evo_pai.run(CONFIG, out=out, overrides=SMALL)
    finally:
        ray.shutdown()
    print(f"{summary['device']}: test accuracy {summary['test_accuracy']:.4f} at sparsity {summary['sparsity']:.3f}; "
          f"{summary['search_model_epochs']:g} model-epochs of search in {summary['search_seconds']:.1f} s")
    if out:
        print(f"run folder: {out} (resume an interrupted run with `evo-pai resume {out}`)")


if __name__ == "__main__":
    main()

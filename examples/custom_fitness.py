"""A custom fitness function, registered by decorator and used by name.

Run it:      python examples/custom_fitness.py
Or in YAML:  plugins: [custom_fitness]   (with examples/ on PYTHONPATH)
             search: {fitness: kept_gradient_share}
"""
from __future__ import annotations

import sys

from evo_pai.plugin import register_fitness


@register_fitness("kept_gradient_share", "share of the total accumulated |grad| that flows through kept weights")
def kept_gradient_share(result, mask, power: float = 1.0) -> float:
    """`result` is a BurstResult (traits: weight, rel_change, grad_accum); `mask` is its MaskSet."""
    kept = sum(float(result.traits["grad_accum"][k][m].sum()) for k, m in mask.items())
    total = sum(float(g.sum()) for g in result.traits["grad_accum"].values())
    return (kept / total) ** power if total > 0 else 0.0


if __name__ == "__main__":
    import evo_pai

    summary = evo_pai.run(
        {
            "seed": 0,
            "data": {"name": "digits"},
            "search": {"method": "kstarts", "sparsity": 0.9, "population": 4, "burst_epochs": 3,
                       "fitness": "kept_gradient_share", "fitness_params": {"power": 2.0}},
            "final": {"epochs": 15},
        },
        out=sys.argv[1] if len(sys.argv) > 1 else None,
    )
    fits = [c["fitness"] for c in summary["candidates"]]
    print(f"candidate fitness: {[round(f, 4) for f in fits]}")
    print(f"winner #{summary['winner_index']}: test accuracy {summary['test_accuracy']:.4f} at sparsity {summary['sparsity']:.3f}")

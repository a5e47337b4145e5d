"""A custom sparsity-advancing mutation, registered by decorator and used by name in the combined search.

Run it:      python examples/custom_mutation.py
Or in YAML:  plugins: [custom_mutation]   (with examples/ on PYTHONPATH)
             search: {mutation: gradient_prune}
"""
from __future__ import annotations

import sys

from evo_pai.plugin import keep_counts, prune_to, register_mutation


@register_mutation("gradient_prune", "prune the kept weights with the least accumulated |grad| on the schedule")
def gradient_prune(ind, step, generator, scope: str = "layer"):
    """Return a MaskSet at the step's sparsity (exactly the target when `step.final`)."""
    sparsity = step.target if step.final else step.sparsity
    return prune_to(ind.mask, ind.traits["grad_accum"], keep_counts(ind.mask, sparsity, step, scope), step)


if __name__ == "__main__":
    import evo_pai

    summary = evo_pai.run(
        {
            "seed": 0,
            "data": {"name": "digits"},
            "search": {"method": "combined", "sparsity": 0.9, "population": 4, "generations": 3,
                       "burst_epochs": 3, "initial_sparsity": 0.5, "mutation": "gradient_prune",
                       "mutation_params": {"scope": "global"}},
            "final": {"epochs": 15},
        },
        out=sys.argv[1] if len(sys.argv) > 1 else None,
    )
    print(f"combined search with gradient_prune: test accuracy {summary['test_accuracy']:.4f}"
          f" at sparsity {summary['sparsity']:.3f}")

"""The framework's check of every mutation's result against the step it was asked for.

A mutation (built-in or a user's) gets an individual and a `PruneStep`; what it returns must be a
mask over the same layers with the same shapes, that never regrows past its parent's kept count,
never prunes past the search's target, and lands on the target when `step.final` is set — within the
exact count rules of `PruneStep` (per-layer budget or global total, at least `min_keep` per layer,
and the output layer's `min_output_fan_in` repair). A mutation that breaks this would otherwise give
a run whose sparsity silently differs from its target; here it is a one-line error naming it.
"""
from __future__ import annotations

from typing import Mapping

from evo_pai.core.budgets import layer_counts, total_keep
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.masks import MaskSet
from evo_pai.operators.variation import PruneStep


def exact_keeps(shapes: Mapping[str, tuple], sparsity: float, step: PruneStep) -> list[int]:
    """The kept totals the count rules give at `sparsity`: the global total and the per-layer budget's sum."""
    out = [total_keep(shapes, sparsity)]
    per_layer = layer_counts(shapes, sparsity, step.budget, step.min_keep)
    if per_layer is not None:
        out.append(sum(per_layer.values()))
    return out


def slack(shapes: Mapping[str, tuple], output_layer: str | None, step: PruneStep) -> int:
    """Weights the rules may add on top of a count: min_keep per layer, the output fan-in repair."""
    rows = shapes[output_layer][0] if output_layer in shapes and step.min_output_fan_in > 0 else 0
    return len(shapes) * step.min_keep + rows * step.min_output_fan_in


def check_mutation(name: str, parent: MaskSet, child: object, step: PruneStep) -> MaskSet:
    """`child` if it is what `step` asked for; otherwise an EvoPaiError naming mutation `name`."""
    where = f"mutation '{name}'"
    if not isinstance(child, MaskSet):
        raise EvoPaiError(f"{where} returned {type(child).__name__}, not a MaskSet; a mutation returns "
                          "MaskSet(masks, parent.output_layer)")
    shapes = parent.shapes()
    if set(child) != set(shapes):
        missing, extra = sorted(set(shapes) - set(child)), sorted(set(child) - set(shapes))
        raise EvoPaiError(f"{where} returned a mask over other layers (missing {missing or 'none'}, unknown "
                          f"{extra or 'none'}); keep exactly the parent's layers")
    for k, m in child.items():  # (MaskSet holds bool tensors whatever it was given)
        if tuple(m.shape) != tuple(shapes[k]):
            raise EvoPaiError(f"{where} returned layer '{k}' with shape {tuple(m.shape)}; the parent's is {tuple(shapes[k])}")
    kept, had = sum(child.counts().values()), sum(parent.counts().values())
    size = sum(child.sizes().values())
    extra = slack(shapes, parent.output_layer, step)
    target = exact_keeps(shapes, step.target, step)
    lo = min(target) - extra
    hi = max(target) + extra if step.final else had + extra
    if lo <= kept <= hi:
        return child
    asked = (f"exactly the target {step.target:.4g}" if step.final
             else f"between the parent's {1 - had / size:.4g} and the target {step.target:.4g} (step {step.sparsity:.4g})")
    raise EvoPaiError(f"{where} returned a mask at sparsity {1 - kept / size:.4g} ({kept:,} of {size:,} weights kept) "
                      f"but the step asked for {asked}, i.e. {lo:,}..{hi:,} kept; fix the operator "
                      "(see the mutation contract in docs/extending.md)")

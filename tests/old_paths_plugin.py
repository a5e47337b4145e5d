"""A plugin module as a user wrote it from docs/extending.md before 0.2 (issue 26): a dataset, a mutation and
a fitness, imported from paths that have moved since. tests/test_old_paths.py runs a short search with it.
The counters say the components were really used. Do not update the imports: they are the point."""
import numpy as np
import torch

from evo_pai import register_dataset, register_fitness, register_mutation
from evo_pai.data import DataSplits, split_validation, standardize
from evo_pai.operators import keep_counts, prune_to

CALLS = {"dataset": 0, "mutation": 0, "fitness": 0}


@register_dataset("old_digits", "sklearn digits as 64-vectors, written against the pre-0.2 import paths")
def old_digits(cfg):
    from sklearn.datasets import load_digits

    CALLS["dataset"] += 1
    bunch = load_digits()
    x, y = torch.from_numpy(bunch.data.astype(np.float32)), torch.from_numpy(bunch.target.astype(np.int64))
    test_x, test_y, x, y = x[:360], y[:360], x[360:], y[360:]
    tr_x, tr_y, va_x, va_y = split_validation(x, y, cfg.val_fraction, cfg.split_seed)
    tr_x, va_x, test_x = standardize(tr_x.clone(), va_x.clone(), test_x.clone())
    return DataSplits(name="old_digits", num_classes=10, input_shape=(64,), train_x=tr_x, train_y=tr_y,
                      val_x=va_x, val_y=va_y, test_x=test_x, test_y=test_y)


@register_mutation("old_gradient_prune")
def old_gradient_prune(ind, step, generator, scope: str = "layer"):
    CALLS["mutation"] += 1
    sparsity = step.target if step.final else step.sparsity
    return prune_to(ind.mask, ind.traits["grad_accum"], keep_counts(ind.mask, sparsity, step, scope), step)


@register_fitness("old_val_accuracy")
def old_val_accuracy(result, mask) -> float:
    CALLS["fitness"] += 1
    return float(result.metrics["val_accuracy"])

"""evo_pai.plugin: the one import surface for writing your own components (docs/extending.md).

    from evo_pai.plugin import register_mutation, keep_counts, prune_to

Everything a fitness, mutation, crossover, selection, pruner, unit criterion, model, dataset, backend or
search method needs is importable from here, and stays importable from here: a name is only removed
after a minor version in which importing it warns (CHANGELOG.md). The modules these names live in
(`evo_pai.operators.variation`, `evo_pai.data.datasets`, ...) are the implementation and may move.
The package's version is `evo_pai.__version__`; `evo-pai list --plugin MOD` prints it with the plugin.

Each public name and its contract (`CONTRACTS`, listed below; docs/extending.md has the detail):
"""
from __future__ import annotations

from evo_pai.core.config import Config, DataConfig
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.core.moved import EvoPaiDeprecationWarning
from evo_pai.core.registry import (
    Method,
    register_backend,
    register_crossover,
    register_dataset,
    register_fitness,
    register_method,
    register_model,
    register_mutation,
    register_pruner,
    register_selection,
    register_unit_criterion,
    register_channel_criterion,
)
from evo_pai.data.datasets import DataSplits, assemble_streamed, split_validation, standardize
from evo_pai.models.units import Link, unit_columns, unit_rows
from evo_pai.training.burst import BurstResult
from evo_pai.training.tasks import BurstTask, Evaluator
from evo_pai.operators.pruners import ScoreContext
from evo_pai.operators.variation import PruneStep, grow_to, keep_counts, prune_to
from evo_pai.search.experiment import Experiment, SearchOutcome
from evo_pai.search.kstarts import kstarts_population
from evo_pai.search.oneshot import one_shot
from evo_pai.evaluation.base import WorkerContext

# One line per public name: what it is and what evo-pai expects of you (or promises you). A name added
# to the surface (e.g. a new registry's decorator) gets its import above and a line here, and
# docs/extending.md names it; tests/test_plugin_surface.py fails until all three are there.
CONTRACTS: dict[str, str] = {
    "EvoPaiError": "raise it with one line naming the config field or path and the fix; evo-pai prints that line, no traceback",
    "EvoPaiDeprecationWarning": "what an old import path (or a name leaving this surface) warns with, naming the import to use; a DeprecationWarning, shown by default",
    # decorators: @register_x(name, description=None) registers fn under name and returns fn unchanged;
    # the description (else fn's first docstring line) is what `evo-pai list` shows
    "register_fitness": "@register_fitness(name) on fn(result: BurstResult, mask: MaskSet, **search.fitness_params) -> float; higher is better, non-finite = worst",
    "register_mutation": "@register_mutation(name) on fn(ind: Individual, step: PruneStep, generator, **search.mutation_params) -> a new MaskSet within the step (checked on every call)",
    "register_crossover": "@register_crossover(name) on fn(a: Individual, b: Individual, generator) -> (Individual, Individual) whose traits match their masks",
    "register_selection": "@register_selection(name) on fn(population, k, **params) -> k Individuals (DEAP's tools.sel* fit)",
    "register_pruner": "@register_pruner(name) on fn(ctx: ScoreContext, mask: MaskSet, **search.params) -> {weight name: score tensor}, higher = keep; leave ctx.model's weights as found",
    "register_unit_criterion": "@register_unit_criterion(name) on fn(ind: Individual, link: Link, generator) -> tensor of link.units scores, higher = keep",
    "register_channel_criterion": "@register_channel_criterion(name) on fn(group: ChannelGroup, state: dict name -> tensor, traits: dict | None, generator) -> one score per channel of the group, higher = keep (masks.granularity: channel)",
    "register_model": "@register_model(name) on fn(input_shape: tuple, num_classes: int, **model.params) -> nn.Module, random only from torch's global RNG",
    "register_dataset": "@register_dataset(name) on fn(cfg: DataConfig) -> DataSplits (tensors, or streamed through assemble_streamed)",
    "register_backend": "@register_backend(name) on an Evaluator subclass: __init__(cfg, data=None), _run(tasks, progress) -> BurstResults in task order",
    "register_method": "@register_method(name, description, plan=, params=, reads=, preflight=, members=, evolutionary=, sparse=) on fn(exp: Experiment) -> SearchOutcome; the keywords are Method's fields",
    "Method": "what a registered method declares (the keywords of register_method); evo-pai reads it, you rarely build one",
    # what the components receive and return
    "MaskSet": "layer name -> bool tensor of the weight's shape (True = kept); build one only with from_scores / prune / grow or the helpers below, never edit one in place",
    "Individual": "a candidate: .mask (MaskSet), .traits[name][layer] (tensors of the burst), .metrics, .fitness (DEAP); read it, do not modify it",
    "BurstResult": "one burst's outcome: .metrics (train_loss, val_loss, val_accuracy, finite), .traits (weight, rel_change, grad_accum), .init_scale",
    "PruneStep": "where a mutation must take the mask: .sparsity (this step), .target (never exceed), .final (land exactly on target), .budget, .min_output_fan_in, .allow_empty_layers",
    "keep_counts": "keep_counts(mask, sparsity, step, scope) -> kept count per layer ('layer') or in total ('global', or a global budget)",
    "prune_to": "prune_to(mask, scores, keep, step) -> a new MaskSet keeping the best-scored kept weights, output fan-in repaired, never regrowing",
    "grow_to": "grow_to(mask, scores, keep, step) -> a new MaskSet adding the best-scored pruned weights up to keep",
    "Link": "the hidden units between two layers: .producer / .consumer weight names, .units, .group (columns per unit)",
    "unit_rows": "unit_rows(w) -> the (out, in*kh*kw) view of a weight-shaped tensor: row u is unit u's incoming weights",
    "unit_columns": "unit_columns(w, link) -> the (out, units, columns per unit) view of the consumer's tensor: the weights reading each unit",
    "ScoreContext": "what a pruner may read: .model (at θ0), .names (prunable weights), .x / .y (a scoring batch), .generator, .params()",
    "DataConfig": "the config's data section a dataset loader receives: .root, .params, .val_fraction, .split_seed, ...",
    "DataSplits": "a dataset: name, num_classes, input_shape and either train_x/train_y/val_x/val_y/test_x/test_y tensors or train_set/val_set/test_set",
    "split_validation": "split_validation(x, y, fraction, seed) -> (train_x, train_y, val_x, val_y), the built-ins' deterministic split",
    "standardize": "standardize(train_x, *others) -> the tensors, standardized in place with the training split's statistics",
    "assemble_streamed": "assemble_streamed(name, cfg, train, test, num_classes, input_shape, standardize=True) -> DataSplits streamed from map-style Datasets",
    "Config": "the whole validated, frozen config (what a method's plan and preflight receive; exp.cfg)",
    "Experiment": "what a method receives: .cfg, random_mask, dense_mask, evaluate(population), run_task, mutate, prune_step, log_generation",
    "SearchOutcome": "what a method returns: the mask to train (SearchOutcome(mask)), optionally where final training starts, .extra facts, .members",
    "one_shot": "one_shot(exp, pruner_name) -> SearchOutcome: θ0 scored by the registered pruner (search.params: examples, budget, its keywords), the best weights kept",
    "kstarts_population": "kstarts_population(exp, sparsity) -> search.population random Individuals at sparsity, each from its own derived seed",
    "Evaluator": "base class of a backend: evaluate(tasks) (cache, counters) around your _run(tasks, progress)",
    "WorkerContext": "the reference trainer every backend must agree with: WorkerContext(cfg, device).run(task) -> BurstResult",
    "BurstTask": "one training run a backend executes: .mask, .epochs, .seed, start state, .keep_state, .test, ...",
}

__all__ = list(CONTRACTS)
__doc__ = (__doc__ or "") + "\n".join(f"\n{name}\n    {text}" for name, text in CONTRACTS.items())

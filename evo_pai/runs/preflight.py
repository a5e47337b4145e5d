"""Everything that can refuse a run, checked before its folder exists (and before any training).

Names of components, parameters the chosen functions do not take, the model's and the population's
memory (estimated on torch's `meta` device, so nothing is allocated), the backend's own checks
(device present, actors that fit, a batchable model and a chunk that fits), the data, the optional
loggers. A refused run leaves nothing behind; a study runs the same checks for every cell.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import psutil
import torch

from evo_pai.core.config import Config
from evo_pai.data.augment import check as check_augment
from evo_pai.data.checks import check_data
from evo_pai.data.datasets import DataSplits, check_workers, load_data
from evo_pai.core.errors import EvoPaiError, brief
from evo_pai.operators.fitness import check_inputs as check_fitness_inputs, check_params as check_fitness_params
from evo_pai.models.networks import build_model, masked_names
from evo_pai.models.user_model import is_user_name, not_rebuildable
from evo_pai.core.patterns import parse_pattern
from evo_pai.core.registry import BACKEND, CROSSOVER, DATASET, FITNESS, METHOD, MODEL, MUTATION, SELECTION, Method
from evo_pai.search.experiment import check_mutation_params, mutation_params
from evo_pai.training.batched import bytes_per_model
from evo_pai.training.tasks import dtype_of, initial_model
from evo_pai.runs.components import load_components

_GB = 2**30
_LIVE_RESULTS = 64  # the evaluator's LRU cache of burst results (training/tasks.py), traits included


def check_names(cfg: Config) -> None:
    """Refuse unknown component names before any work starts (the search fields only where the method reads them)."""
    s = cfg.search
    if s.method not in METHOD:
        _unknown(METHOD, "search.method", s.method)
    reads = METHOD.get(s.method).reads
    named = [
        ("search.fitness", FITNESS, "search.fitness", s.fitness), ("search.mutation", MUTATION, "search.mutation", s.mutation),
        ("search.crossover", CROSSOVER, "search.crossover", s.crossover),
        ("search.selection", SELECTION, "search.selection", s.selection),
        ("search.explore", MUTATION, "search.explore_mutation", s.explore_mutation),
        (None, DATASET, "data.name", cfg.data.name), (None, MODEL, "model.name", cfg.model.name),
        (None, BACKEND, "evaluation.backend", cfg.evaluation.backend),
    ]
    for section, reg, key, value in named:
        if (section is None or section in reads) and value and value not in reg:
            _unknown(reg, key, value)


def _unknown(reg, key: str, value: str) -> None:
    if is_user_name(value) and reg in (MODEL, DATASET):  # a run of evo_pai.search(), resumed without its inputs
        raise not_rebuildable(value, "resume it from Python: call evo_pai.search() with the same model, data and "
                                     "settings and out=<this run folder>") if reg is MODEL else EvoPaiError(
            f"data.name: '{value}' was data handed to evo_pai.search(); resume the run from Python: call "
            "evo_pai.search() with the same model, data and settings and out=<this run folder>")
    raise EvoPaiError(f"{key}: unknown {reg.kind} '{value}'; choose one of {', '.join(reg.names())} (see `evo-pai list`)")


def check_params(cfg: Config) -> None:
    """Parameters the named functions do not take; `search.params` keys the method does not read; its own checks."""
    s = cfg.search
    method = METHOD.get(s.method)
    if "search.fitness" in method.reads:
        check_fitness_params(s.fitness, s.fitness_params)
    if "search.mutation" in method.reads:
        check_mutation_params(s.mutation, mutation_params(cfg, s.mutation), "search.mutation_params")
    if s.explore_mutation and "search.explore" in method.reads:
        check_mutation_params(s.explore_mutation, s.explore_params, "search.explore_params")
    method.check_params(s.method, s.params)
    check_fitness_needs(cfg)
    if method.preflight is not None:
        method.preflight(cfg)  # e.g. nsga2: objectives, density grid, mutation names
    if cfg.final.members != "all" and not method.members:
        raise EvoPaiError(f"final.members: only a method with several answers (nsga2) picks members; "
                          f"'{s.method}' has one winner — remove final.members")
    pattern = parse_pattern(cfg.masks.pattern)
    # a method with several members checks its own densities in its preflight
    if pattern and method.sparse and not method.members and 1.0 - s.sparsity > pattern[0] / pattern[1] + 1e-9:
        raise EvoPaiError(f"search.sparsity: masks.pattern {cfg.masks.pattern} keeps at most {pattern[0]} of every "
                          f"{pattern[1]} weights; use a sparsity >= {1 - pattern[0] / pattern[1]:g}")


def check_fitness_needs(cfg: Config, model: torch.nn.Module | None = None) -> None:
    """The fitness the method reads (search.fitness, or nsga2's first objective) gets what it reads from the
    bursts: adaptive BN on and a model with BatchNorm statistics (with `model`), a burst for trait fitnesses."""
    s, reads = cfg.search, METHOD.get(cfg.search.method).reads
    epochs = s.burst_epochs if "search.burst_epochs" in reads else 1.0
    used = [("search.fitness", s.fitness)] if "search.fitness" in reads else []
    if "search.nsga2" in reads:
        used.append(("search.nsga2.objectives", s.nsga2.objectives[0]))
    for key, name in used:
        check_fitness_inputs(name, key, s.adaptive_bn_batches, epochs, model, cfg.model.name)


def extra_epochs(cfg: Config) -> float:
    """search.params.extra_epochs: equal-epoch controls train the final mask this much longer (any method)."""
    return Method.extra_epochs(cfg.search.params)


def check_loggers(cfg: Config) -> None:
    if cfg.logging.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise EvoPaiError("logging.tensorboard: needs the tensorboard package; pip install 'evo-pai[tensorboard]' "
                              "(or set logging.tensorboard: false)") from None


def check_config(cfg: Config) -> None:
    """The checks that need no data: for a run, and for every cell of a study before it starts."""
    load_components(cfg.plugins)
    check_names(cfg)
    check_params(cfg)
    check_loggers(cfg)


# -- memory, estimated before anything is allocated ------------------------------------------
@dataclass(frozen=True)
class ModelSize:
    params: int  # parameters and buffers
    prunable: dict[str, tuple]  # layer -> shape
    train_bytes: int  # one model in training: weights, θ0, gradients, optimizer state, traits, activations
    element: int  # bytes per value


def meta_model(cfg: Config, data: DataSplits) -> torch.nn.Module | None:
    """The model built on the `meta` device: shapes without memory. None if it cannot be built there."""
    try:
        with torch.device("meta"):
            return build_model(cfg.model, data.input_shape, data.num_classes).to(dtype_of(cfg))
    except EvoPaiError:
        raise
    except Exception:  # e.g. a plugin model that reads values while it builds: checked for real later
        return None


def model_size(cfg: Config, data: DataSplits) -> ModelSize | None:
    model = meta_model(cfg, data)
    if model is None:
        return None
    m = cfg.masks
    shapes = dict(model.named_parameters())
    prunable = {k: tuple(shapes[k].shape) for k in masked_names(model, m)}
    element = torch.empty((), dtype=dtype_of(cfg)).element_size()
    params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    try:
        train = bytes_per_model(model, data.input_shape, cfg.train, list(prunable)) + 2 * params * element
    except Exception:  # a forward that meta tensors cannot run: weights and their states only
        train = 8 * params * element
    return ModelSize(params, prunable, train, element)


def available_ram() -> int:
    return int(psutil.virtual_memory().available)


def _gb(n: float) -> str:
    return f"{n / _GB:,.1f} GB" if n < 1e6 * _GB else f"{n / _GB:.3g} GB"


def check_memory(cfg: Config, size: ModelSize, ram: int | None = None) -> None:
    """Refuse a model or a population that cannot fit: a line with the field and the fix, not an hour of swap."""
    ram = available_ram() if ram is None else ram
    s, ev = cfg.search, cfg.evaluation
    where_training = "a Ray actor" if ev.backend == "ray" else "this process"
    driver_model = 2 * size.params * size.element if ev.backend == "ray" else size.train_bytes
    if driver_model > ram:
        raise EvoPaiError(
            f"model.params: model '{cfg.model.name}' with {cfg.model.params or 'its defaults'} has {size.params:,} "
            f"parameters ({_gb(size.params * size.element)} as {cfg.train.dtype}); training it in {where_training} "
            f"needs about {_gb(driver_model)} but {_gb(ram)} of RAM is available; choose smaller model.params")
    weights = sum(int(torch.Size(shape).numel()) for shape in size.prunable.values())
    per_individual = weights * (1 + 3 * 4)  # a bool mask and three float32 traits per prunable weight
    live = 2 * s.population + min(_LIVE_RESULTS, s.population * s.generations)  # parents, children, cache
    need = driver_model + live * per_individual
    if need > ram:
        fit = max(1, (int((ram - driver_model) / per_individual) - _LIVE_RESULTS) // 2)
        raise EvoPaiError(
            f"search.population: {s.population:,} individuals keep a mask and traits of {weights:,} weights each: "
            f"about {_gb(need)}, but {_gb(ram)} of RAM is available; lower search.population (about {fit:,} fit)")


def check_model(cfg: Config, data: DataSplits) -> torch.nn.Module:
    """Estimate first (meta device), then build θ0 for real: the backends' checks need a real model."""
    size = model_size(cfg, data)
    if size is not None:
        check_memory(cfg, size)
    try:
        return initial_model(cfg, data)
    except EvoPaiError:
        raise
    except Exception as exc:  # a model function that fails on these options
        raise EvoPaiError(f"model.params: model '{cfg.model.name}' cannot be built with {cfg.model.params or 'its defaults'} "
                          f"({brief(exc)})") from exc


def check_backend(cfg: Config, data: DataSplits, model: torch.nn.Module) -> None:
    """The backend's own `preflight(cfg, data, model)`: devices, actors, batchable models, memory plans."""
    hook = getattr(BACKEND.get(cfg.evaluation.backend), "preflight", None)
    if hook is None:
        return
    takes = len(inspect.signature(hook).parameters)
    hook(cfg, data, model) if takes >= 3 else hook(cfg)  # a plugin backend's hook may take the config only


def preflight(cfg: Config) -> DataSplits:
    """Everything that can reject the input, done before a run folder exists; returns the loaded data."""
    check_config(cfg)
    data = load_data(cfg.data)
    if not is_user_name(cfg.data.name):  # evo_pai.search()'s data was checked as it was read (data/user_data.py)
        check_data(cfg.data.name, data, cfg.data.workers)  # non-finite inputs, labels, empty splits: once
    check_augment(cfg.data.augment, data.input_shape, cfg.data.name)  # crop / flip need images
    check_workers(cfg.data, data)
    model = check_model(cfg, data)
    check_channels(cfg, data, model)
    check_fitness_needs(cfg, model)
    check_backend(cfg, data, model)
    return data


def check_abn_dropout(cfg: Config, data: DataSplits, model: torch.nn.Module) -> None:
    """Adaptive BN recalibrates with dropout off; the stacked / vmapped forwards cannot run BatchNorm in
    training mode with dropout off yet, so a dropout model is refused there rather than measured wrongly."""
    ev = cfg.evaluation
    stacked = ev.backend == "vectorized" or (ev.backend == "ray" and ev.actor_trainer != "sequential")
    if cfg.search.adaptive_bn_batches and stacked:
        from evo_pai.training.draws import uses_draws

        if uses_draws(model, data.input_shape):
            raise EvoPaiError("search.adaptive_bn_batches: the vectorized trainer cannot yet recalibrate BatchNorm "
                              "with dropout off in a model that uses dropout; use evaluation.backend: local (or ray "
                              "with evaluation.actor_trainer: sequential), or search.fitness: val_accuracy with "
                              "search.adaptive_bn_batches: 0")


def check_channels(cfg: Config, data: DataSplits, model: torch.nn.Module) -> None:
    """masks.granularity: channel — the model's channel groups proven and the operators structure-aware."""
    from evo_pai.models.prunable import output_layer_name
    from evo_pai.search.channel_mode import preflight as channel_preflight

    names = masked_names(model, cfg.masks)
    out = output_layer_name(model)
    channel_preflight(cfg, model, data.input_shape, names, out if out in names else None)


def expected_shapes(cfg: Config, data: DataSplits) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(prunable layer -> shape, state_dict entry -> shape) of the config's model: what a checkpoint must hold."""
    model = meta_model(cfg, data) or initial_model(cfg, data)
    m = cfg.masks
    params = dict(model.named_parameters())
    prunable = {k: tuple(params[k].shape) for k in masked_names(model, m)}
    return prunable, {k: tuple(v.shape) for k, v in model.state_dict().items()}

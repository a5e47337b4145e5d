"""Checkpoints of a running search, so `evo-pai resume RUN_DIR` continues after a killed driver.

One safetensors file in the run folder: tensors (masks, traits, RNG states, tensor-valued search
state) plus a JSON header kept in the safetensors metadata (generation, fitnesses, logbook, Python
and numpy RNG state, evaluator counters and cache keys). It is written to a temp file and renamed,
so a crash while writing leaves the previous checkpoint; it is read with safetensors only (no
pickle), and anything unexpected in it is a one-line EvoPaiError.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evo_pai.core.config import Config, to_dict
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.individual import Individual
from evo_pai.core.masks import MaskSet
from evo_pai.core.tensor_files import read_tagged
from evo_pai.training.carry import Carry
from evo_pai.runs.folder import write_atomic

FORMAT = "evo_pai.checkpoint/1"
FILENAME = "checkpoint.safetensors"
FIX = "delete it to restart the search from generation 0, or start a new run with `evo-pai run`"


def search_hash(cfg: Config) -> str:
    """Hash of everything that decides the results; `evaluation` (where it runs) and `logging` may change."""
    raw = {k: v for k, v in to_dict(cfg).items() if k not in ("evaluation", "logging")}
    return hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest()


# -- search state <-> (JSON header, tensors) ----------------------------------------------
def _tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()  # own storage: safetensors refuses shared memory


def encode(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    """JSON description of `value`; its tensors go into `tensors` under `prefix`."""
    if isinstance(value, MaskSet):
        for j, (k, m) in enumerate(value.items()):
            tensors[f"{prefix}/{j}"] = _tensor(m.to(torch.uint8))
        return {"type": "mask", "layers": list(value), "output_layer": value.output_layer,
                "pattern": list(value.pattern) if value.pattern else None}
    if isinstance(value, Individual):
        return {
            "type": "individual",
            "mask": encode(value.mask, f"{prefix}/mask", tensors),
            "fitness": list(value.fitness.values) if value.fitness.valid else None,
            "objectives": value.objectives,
            "traits": encode(value.traits, f"{prefix}/traits", tensors) if value.traits else None,
            "metrics": value.metrics,
            "origin": value.origin,
            "carry": encode(value.carry, f"{prefix}/carry", tensors) if value.carry is not None else None,
            "hparams": value.hparams,  # floats: JSON keeps them exactly (repr round-trips)
        }
    if isinstance(value, Carry):  # an inheriting search's trained weights and optimizer state
        return {"type": "carry", "weights": encode(value.weights, f"{prefix}/weights", tensors),
                "opt_state": encode(value.opt_state, f"{prefix}/opt", tensors), "steps": value.steps}
    if isinstance(value, torch.Tensor):
        tensors[prefix] = _tensor(value)
        return {"type": "tensor"}
    if isinstance(value, (list, tuple)):
        return {"type": "list", "items": [encode(v, f"{prefix}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"type": "dict", "keys": [str(k) for k in value],
                "items": [encode(v, f"{prefix}/{i}", tensors) for i, v in enumerate(value.values())]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"type": "value", "value": value}
    raise EvoPaiError(f"checkpoint: cannot store a {type(value).__name__} in the search state "
                      "(use masks, individuals, tensors, lists, dicts, numbers or strings)")


def decode(desc: dict, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    kind = desc["type"]
    if kind == "mask":
        return MaskSet({k: tensors[f"{prefix}/{j}"].bool() for j, k in enumerate(desc["layers"])}, desc["output_layer"],
                       desc.get("pattern"))
    if kind == "individual":
        traits = decode(desc["traits"], f"{prefix}/traits", tensors) if desc["traits"] else None
        ind = Individual(decode(desc["mask"], f"{prefix}/mask", tensors), traits, int(desc.get("objectives", 1)))
        if desc["fitness"] is not None:
            ind.fitness.values = tuple(desc["fitness"])
        ind.metrics, ind.origin = dict(desc["metrics"]), desc["origin"]
        if desc.get("carry") is not None:
            ind.carry = decode(desc["carry"], f"{prefix}/carry", tensors)
        if desc.get("hparams") is not None:
            ind.hparams = {str(k): float(v) for k, v in desc["hparams"].items()}
        return ind
    if kind == "carry":
        return Carry(decode(desc["weights"], f"{prefix}/weights", tensors),
                     decode(desc["opt_state"], f"{prefix}/opt", tensors), int(desc["steps"]))
    if kind == "tensor":
        return tensors[prefix]
    if kind == "list":
        return [decode(d, f"{prefix}/{i}", tensors) for i, d in enumerate(desc["items"])]
    if kind == "dict":
        return {k: decode(d, f"{prefix}/{i}", tensors) for i, (k, d) in enumerate(zip(desc["keys"], desc["items"]))}
    if kind == "value":
        return desc["value"]
    raise KeyError(f"unknown entry type {kind!r}")


# -- random number generators ---------------------------------------------------------------
def capture_rng(generator: torch.Generator, tensors: dict[str, torch.Tensor]) -> dict:
    """Python (DEAP draws from it), numpy, torch (CPU and CUDA) and the search's own generator."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/torch"] = _tensor(torch.get_rng_state())
    tensors["rng/generator"] = _tensor(generator.get_state())
    tensors["rng/numpy"] = torch.from_numpy(keys.astype(np.int64))
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for i, s in enumerate(cuda):
        tensors[f"rng/cuda/{i}"] = _tensor(s)
    return {"python": [version, list(internal), gauss], "numpy": [name, int(pos), int(has_gauss), float(cached)],
            "cuda": len(cuda)}


def restore_rng(meta: dict, tensors: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng/torch"])
    generator.set_state(tensors["rng/generator"])
    if meta["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == meta["cuda"]:
        torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(meta["cuda"])])


def check_rng(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Apply the saved states to throwaway generators: a bad state fails here, not mid-resume."""
    version, internal, gauss = meta["python"]
    random.Random().setstate((version, tuple(internal), gauss))
    np.random.RandomState().set_state((meta["numpy"][0], tensors["rng/numpy"].numpy().astype(np.uint32), *meta["numpy"][1:]))
    torch.Generator().set_state(tensors["rng/torch"])
    torch.Generator().set_state(tensors["rng/generator"])
    for i in range(int(meta["cuda"])):
        tensors[f"rng/cuda/{i}"]  # noqa: B018 - every referenced tensor must be present


# -- the file -------------------------------------------------------------------------------
def save_checkpoint(path: Path, cfg: Config, state: dict, exp, records: list[dict], elapsed: float) -> None:
    """Write the search state after a completed generation (temp file + rename)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    header = {
        "search_hash": search_hash(cfg),
        "state": encode(state, "state", tensors),
        "rng": capture_rng(exp.generator, tensors),
        "evaluator": exp.evaluator.cache_state(),
        "fitness_failures": exp.fitness_failures,
        "records": records,
        "elapsed": elapsed,
        "written": time.time(),
    }
    # Python's json writes inf/nan as Infinity/NaN and reads them back: fitness can be -inf.
    write_atomic(path, save(tensors, metadata={"format": FORMAT, "header": json.dumps(header)}))


@dataclass
class Checkpoint:
    path: Path
    state: dict  # the search's own state: population, generation, ...
    records: list[dict]  # log.jsonl records written before the checkpoint
    header: dict
    tensors: dict[str, torch.Tensor]

    @property
    def generation(self) -> int | None:
        return self.state.get("generation")

    @property
    def tasks_done(self) -> int:
        ev = self.header["evaluator"]
        return int(ev["tasks_run"]) + int(ev["cache_hits"])

    def restore(self, exp) -> None:
        """Put an Experiment where the interrupted one was when this checkpoint was written."""
        exp.evaluator.restore_cache_state(self.header["evaluator"])
        exp.fitness_failures = list(self.header["fitness_failures"])
        exp.started = time.perf_counter() - float(self.header["elapsed"])
        restore_rng(self.header["rng"], self.tensors, exp.generator)
        exp.resume_state = self.state


def check_shapes(value: Any, prunable: dict[str, tuple], state: dict[str, tuple], where: str = "state") -> None:
    """Every mask and trait over the model's prunable layers, every weight dict over its state_dict,
    with the model's shapes: a checkpoint from another model fails here, before the run folder changes."""
    def fail(what: str, got: object, want: object) -> None:
        raise EvoPaiError(f"{where}: {what} is {got} but the run's model has {want}; {FIX}")

    if isinstance(value, MaskSet):
        if set(value) != set(prunable):
            fail("a mask's layers", sorted(value), sorted(prunable))
        for k, m in value.items():
            if tuple(m.shape) != prunable[k]:
                fail(f"mask layer '{k}'", tuple(m.shape), prunable[k])
    elif isinstance(value, Individual):
        check_shapes(value.mask, prunable, state, where)
        for trait, layers in (value.traits or {}).items():
            for k, t in layers.items():
                if k not in prunable or tuple(t.shape) != prunable[k]:
                    fail(f"trait '{trait}' of layer '{k}'", tuple(t.shape), prunable.get(k, "no such layer"))
    elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()) \
            and set(value) <= set(state):
        for k, t in value.items():
            if tuple(t.shape) != state[k]:
                fail(f"weight '{k}'", tuple(t.shape), state[k])
    elif isinstance(value, dict):
        for v in value.values():
            check_shapes(v, prunable, state, where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_shapes(v, prunable, state, where)


def load_checkpoint(path: Path, cfg: Config, shapes: tuple[dict, dict] | None = None) -> Checkpoint:
    """Read and check a checkpoint completely before anything in the run folder changes.

    `shapes`: (prunable layer -> shape, state_dict entry -> shape) of the config's model
    (runs/preflight.py: expected_shapes); every tensor of the search state is checked against them.
    """
    fix = FIX
    try:
        meta, tensors = read_tagged(path, FORMAT, f"checkpoint '{path}' is not an evo-pai checkpoint (no {FORMAT} header); {fix}")
        header = json.loads(meta["header"])
        if header["search_hash"] != search_hash(cfg):
            raise EvoPaiError(f"checkpoint '{path}' was written for a different config than the run folder's "
                              f"config.yaml (was it edited?); restore config.yaml or {fix}")
        state = decode(header["state"], "state", tensors)
        if shapes is not None:
            check_shapes(state, *shapes, where=f"checkpoint '{path}'")
        check_rng(header["rng"], tensors)
        records = list(header["records"])
        ev = header["evaluator"]
        [tuple(k) for k in ev["keys"]], float(ev["epochs_spent"]), int(ev["tasks_run"]), int(ev["cache_hits"])
        list(header["fitness_failures"]), float(header["elapsed"])  # every field resume reads, read once here
    except EvoPaiError:
        raise
    except Exception as exc:  # truncated file, bad JSON, missing tensors, wrong types
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise EvoPaiError(f"checkpoint '{path}' is corrupt or unreadable ({detail}); {fix}") from None
    return Checkpoint(path, state, records, header, tensors)

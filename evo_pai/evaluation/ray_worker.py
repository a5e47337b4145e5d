"""What runs inside a Ray actor: `BurstWorker` (wrapped with `ray.remote` at run time), and the
helpers that keep tensors crossing the process boundary on CPU.

An actor given a GPU sees only that GPU: Ray sets CUDA_VISIBLE_DEVICES per actor, so its device is
`cuda:0` whatever the GPU's index on the node (several actors on fractions of one GPU all see it as
cuda:0). Results leave the actor on CPU: a CUDA tensor pickled to a CPU-only driver cannot be loaded.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import sysconfig

import torch

from evo_pai.core.config import Config, build_config
from evo_pai.data.datasets import DataSplits, load_data
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import ALL, DATASET, MODEL, import_plugins
from evo_pai.data.user_data import PREFIX
from evo_pai.training.burst import BurstResult
from evo_pai.training.vmapped import make_forward
from evo_pai.training.tasks import BurstTask
from evo_pai.evaluation.base import WorkerContext
from evo_pai.evaluation.payload import on_cpu  # noqa: F401  (start weights and optimizer state: CPU before they cross)
from evo_pai.evaluation.vectorized import BatchedTrainer


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, EvoPaiError) else f"{type(exc).__name__}: {exc}"


class BurstWorker:
    """The body of one Ray actor. Plain class: wrapped with `ray.remote` at run time."""

    def __init__(self, cfg_raw: dict, threads: int, device: str, trainer: str = "sequential", gpus: float = 0.0,
                 shipped: dict | None = None):
        torch.set_num_threads(threads)  # Ray sets OMP threads to 1 in workers; use the CPUs we reserved
        self.device, self.trainer, self.gpus, self.error, self.context = device, trainer, gpus, None, None
        try:
            self.cfg = build_config(cfg_raw)
            for (kind, name), obj in (shipped or {}).items():  # a model / data handed to evo_pai.search()
                ALL[kind].register(name)(obj)
            import_plugins(self.cfg.plugins)
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise EvoPaiError(f"evaluation.gpus_per_actor: Ray gave this actor GPU(s) {_gpu_ids()} but torch on "
                                  f"this node cannot use CUDA (torch {torch.__version__}); install a CUDA build of "
                                  "torch there or use evaluation.device=cpu")
            self.data = load_data(self.cfg.data)  # from this node's files, never shipped per task
        except Exception as exc:  # reported by ready(): one line on the driver, not a dead actor
            self.error = _describe(exc)

    def ready(self, theta0_ref: list) -> tuple[int, str | None, list, str, str]:
        """Build model and θ0 now, so start-up cost is not counted as the first task's time.
        Returns (pid, error or None, the GPU ids Ray assigned to this actor, its node id, the node's IP)."""
        import ray

        if self.error is None:
            try:
                self._build(theta0_ref)
            except Exception as exc:
                self.error = _describe(exc)
        return os.getpid(), self.error, _gpu_ids(), ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def pid(self) -> int:
        return os.getpid()

    def _build(self, theta0_ref: list) -> None:
        if self.context is None:  # θ0 from the object store (wrapped in a list: Ray passes the reference)
            import ray

            # a fraction of a GPU plans its batched chunks with that fraction of the free memory
            share = self.gpus if 0 < self.gpus < 1 else 1.0
            self.context = WorkerContext(self.cfg, self.device, self.data, theta0=ray.get(theta0_ref[0]),
                                         memory_share=share)
            self.data = None  # the context holds its own copy on the device
            # planned here, so a share too large for this node's memory is refused by ready()
            self.batched = BatchedTrainer(self.context) if self.trainer == "vectorized" else None

    def run(self, tasks: list[BurstTask], theta0_ref: list, payload_refs: list | None = None) -> list[BurstResult]:
        """One unit of work: this actor's share of a population, trained together or one by one.

        `payload_refs[i]` (object-store references, or None) holds task i's start weights and
        optimizer state, which the driver put once rather than pickling them into every call."""
        if self.error:  # a restarted actor whose set-up failed on this node
            raise EvoPaiError(f"a Ray actor could not build the data and model: {self.error}")
        self._build(theta0_ref)  # after a restart Ray re-runs __init__ only
        if payload_refs and any(r is not None for r in payload_refs):
            import ray

            tasks = [t if r is None else dataclasses.replace(t, **dict(zip(("start", "opt_state"), ray.get(r))))
                     for t, r in zip(tasks, payload_refs)]
        results = self.batched.run(tasks) if self.batched is not None else [self.context.run(t) for t in tasks]
        return [result_on_cpu(r) for r in results]


def shipped_components(cfg: Config) -> dict:
    """The model and data of a run of evo_pai.search(): registered in this process only, so sent to every
    actor through the object store (Ray's cloudpickle). A class or function from a module an actor may
    not import (a script, a test file, a notebook) goes by value; what cannot be pickled is one line."""
    import ray.cloudpickle as cloudpickle

    shipped = {(reg.kind, name): reg.get(name) for reg, name in ((MODEL, cfg.model.name), (DATASET, cfg.data.name))
               if name.startswith(PREFIX)}
    for obj in shipped.values():
        source = getattr(obj, "source", None)
        module = sys.modules.get(getattr(source, "__module__", None) or type(source).__module__)
        if module is not None and module.__name__ != "__main__" and not _installed(module):
            cloudpickle.register_pickle_by_value(module)
    try:
        cloudpickle.dumps(shipped)
    except Exception as exc:
        raise EvoPaiError(f"model: the module handed to evo_pai.search() cannot be pickled for Ray actors "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:150]}); pass a zero-argument function "
                          "that builds it instead, e.g. search(lambda: MyNet(), ...)") from None
    return shipped


def _installed(module) -> bool:
    """A module every node imports by name: evo-pai's own, the standard library, installed packages."""
    path = getattr(module, "__file__", None)
    roots = {sysconfig.get_path(k) for k in ("purelib", "platlib", "stdlib")}
    return path is None or module.__name__.split(".")[0] in ("evo_pai", "torch") or any(
        root and os.path.abspath(path).startswith(os.path.abspath(root)) for root in roots)


def _gpu_ids() -> list:
    try:
        import ray

        return list(ray.get_gpu_ids())
    except Exception:  # not inside a Ray worker (tests call BurstWorker directly)
        return []


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t if t.device.type == "cpu" else t.to("cpu")


def result_on_cpu(res: BurstResult) -> BurstResult:
    """The trainers already hand back CPU tensors; this makes it a guarantee at the process boundary."""
    opt = res.opt_state or {}
    tensors = ([t for layer in res.traits.values() for t in layer.values()] + list((res.state or {}).values())
               + [t for entries in opt.values() for t in entries.values()])
    if all(t.device.type == "cpu" for t in tensors):
        return res
    return dataclasses.replace(
        res, traits={name: {k: _cpu(v) for k, v in layer.items()} for name, layer in res.traits.items()},
        state={k: _cpu(v) for k, v in res.state.items()} if res.state is not None else None,
        opt_state={n: {k: _cpu(v) for k, v in e.items()} for n, e in opt.items()} if res.opt_state is not None else None)


def failed_result(task: BurstTask, cause: str) -> BurstResult:
    """Worst fitness (finite=0) with the cause; zero traits so variation operators still work."""
    zeros = {k: torch.zeros(m.shape) for k, m in task.mask.items()}
    return BurstResult(
        metrics={"finite": 0.0, "error": cause},
        traits={"weight": zeros, "rel_change": dict(zeros), "grad_accum": dict(zeros)},
    )


def actor_trainer(cfg: Config, model: torch.nn.Module, data: DataSplits) -> str:
    """evaluation.actor_trainer resolved: 'auto' is vectorized when the model can be batched."""
    choice = cfg.evaluation.actor_trainer
    if choice == "sequential":
        return choice
    try:
        make_forward(model, cfg.model.name, data.input_shape, cfg.train.batch_size)
    except EvoPaiError:
        if choice == "vectorized":
            raise
        return "sequential"  # what torch.func.vmap cannot batch either: trained one by one, as locally
    return "vectorized"

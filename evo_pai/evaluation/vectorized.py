"""The population trained together on one device: stacked weights, one batched step for all.

`BatchedTrainer` is the whole backend on one worker; a Ray actor with
evaluation.actor_trainer=vectorized uses it for its share of a population. Memory is planned before
any training: a chunk that does not fit the budget is refused up front, not out of memory midway.
"""
from __future__ import annotations


import psutil
import torch

from evo_pai.training.batched import bytes_per_model, train_batched
from evo_pai.core.config import Config
from evo_pai.data.datasets import DataSplits
from evo_pai.core.errors import EvoPaiError
from evo_pai.models.networks import masked_names
from evo_pai.core.registry import register_backend
from evo_pai.training.compiled import CompiledForward, compiled_update, update_eager
from evo_pai.training.precision import numerics
from evo_pai.training.vmapped import VmapForward, make_forward
from evo_pai.training.burst import BurstResult, burst_steps
from evo_pai.training.optim import adam_step
from evo_pai.training.tasks import BurstTask, Progress
from evo_pai.evaluation.base import WorkerContext, resolve_device
from evo_pai.evaluation.local import LocalEvaluator

_GB = 2**30
_CPU_SHARE = 0.5  # default budget on CPU: half of MemAvailable (the rest is the OS's and the data's)
_GPU_SHARE = 0.8  # default budget on a GPU: most of its free memory


def gpu_budget(free: int, share: float = 1.0) -> tuple[int, str]:
    """Budget on a GPU with `free` bytes free, of which this worker may use `share` (Ray actors with a
    fraction of a GPU each plan with their fraction: four actors x 0.25 GPU must not each take 80 %)."""
    where = f"{_GPU_SHARE:.0%} of free GPU memory" + (f" x this worker's share {share:g}" if share < 1 else "")
    return int(free * _GPU_SHARE * min(1.0, share)), where


def memory_budget(cfg: Config, device: torch.device, share: float = 1.0) -> tuple[int, str]:
    """(bytes, where the number comes from) that a batched chunk may use."""
    if cfg.evaluation.max_memory_gb is not None:
        return int(cfg.evaluation.max_memory_gb * _GB), "evaluation.max_memory_gb"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)  # what the device has free now, other processes included
        return gpu_budget(free, share)
    return int(psutil.virtual_memory().available * _CPU_SHARE), f"{_CPU_SHARE:.0%} of available RAM"


def plan_chunk(per_model: int, budget: int, source: str, chunk_size: int | None, model: str) -> int:
    """Models per batched pass: `chunk_size` if it fits, else the most that fit. Raises if none fit."""
    fit = budget // per_model
    if fit < 1:
        raise EvoPaiError(
            f"evaluation.max_memory_gb: one '{model}' model needs about {per_model / _GB:.2f} GB in a batched "
            f"burst but the budget ({source}) is {budget / _GB:.2f} GB; raise evaluation.max_memory_gb or lower "
            f"train.batch_size"
        )
    if chunk_size is None:
        return fit
    if chunk_size > fit:
        raise EvoPaiError(
            f"evaluation.chunk_size: {chunk_size} '{model}' models need about {chunk_size * per_model / _GB:.2f} GB "
            f"but the budget ({source}) is {budget / _GB:.2f} GB; set evaluation.chunk_size to at most {fit} or "
            f"raise evaluation.max_memory_gb"
        )
    return chunk_size


def _compilable(forward, model: str) -> None:
    if isinstance(forward, VmapForward):
        raise EvoPaiError(f"evaluation.compile: model '{model}' is batched by torch.func.vmap ({forward.hand_why} "
                          "for the hand-batched path), which is not compiled; set evaluation.compile false")


class BatchedTrainer:
    """Checks the model and plans chunks once per worker; then trains task lists chunk by chunk."""

    def __init__(self, context: WorkerContext):
        cfg = context.cfg
        self.context = context
        self.forward = make_forward(context.model, cfg.model.name, context.data.input_shape, cfg.train.batch_size)
        self.update = update_eager
        if cfg.evaluation.compile:
            _compilable(self.forward, cfg.model.name)
            self.forward, self.update = CompiledForward(self.forward), compiled_update()
        masked = masked_names(context.model, cfg.masks)
        self.bytes_per_model = bytes_per_model(context.model, context.data.input_shape, cfg.train, masked)
        budget, source = memory_budget(cfg, context.device, context.memory_share)
        self.chunk = plan_chunk(self.bytes_per_model, budget, source, cfg.evaluation.chunk_size, cfg.model.name)

    def run(self, tasks: list[BurstTask], progress: Progress | None = None, on_epoch=None) -> list[BurstResult]:
        ctx, hp = self.context, self.context.cfg.train
        # Models trained together take the same number of steps from the same optimizer step count
        # (Adam's bias correction) and the same schedule position (one learning rate per step).
        groups: dict[tuple, list[int]] = {}
        results: list[BurstResult | None] = [None] * len(tasks)
        for i, t in enumerate(tasks):
            if t.dynamic is not None:  # a mask that changes while training: one model at a time (train_masked)
                results[i] = ctx.run(t, on_epoch)
                if progress:
                    progress(1)
                continue
            key = (burst_steps(t.epochs, ctx.data.n_train, hp.batch_size), tuple(t.mask), t.offset, t.horizon,
                   t.opt_state is not None, adam_step(t.opt_state))
            groups.setdefault(key, []).append(i)
        with numerics(hp.precision):
            for members in groups.values():
                for lo in range(0, len(members), self.chunk):
                    chunk = [tasks[i] for i in members[lo : lo + self.chunk]]
                    starts = [ctx.theta0 if t.start is None else t.start for t in chunk]
                    out = train_batched(
                        ctx.model, self.forward, starts, ctx.theta0, [t.mask for t in chunk], ctx.data, hp,
                        chunk[0].epochs, [t.seed for t in chunk], [t.keep_state for t in chunk],
                        [t.test for t in chunk], update=self.update,
                        opt_states=[t.opt_state for t in chunk], offset=chunk[0].offset, horizon=chunk[0].horizon,
                        on_epoch=on_epoch, data_cfg=ctx.cfg.data,
                        lr_scales=[t.lr_scale for t in chunk], weight_decays=[t.weight_decay for t in chunk],
                        abn_batches=ctx.cfg.search.adaptive_bn_batches,
                    )
                    for i, res in zip(members[lo : lo + self.chunk], out):
                        results[i] = res
                    if progress:
                        progress(len(chunk))
        return results  # type: ignore[return-value]


@register_backend("vectorized", "one device, the population trained together (stacked weights, one batched step)")
class VectorizedEvaluator(LocalEvaluator):
    """The local backend's process and device, with the population trained in batched chunks."""

    def __init__(self, cfg: Config, data: DataSplits | None = None):
        super().__init__(cfg, data)
        self.trainer = BatchedTrainer(self.context)  # refuses unsupported models and oversized chunks now

    @staticmethod
    def preflight(cfg: Config, data: DataSplits | None = None, model: torch.nn.Module | None = None) -> None:
        """Before the run folder exists: the device, a model the stacked trainer can batch, a chunk that fits."""
        device = resolve_device(cfg.evaluation.device)
        if data is None or model is None:
            return
        forward = make_forward(model, cfg.model.name, data.input_shape, cfg.train.batch_size)
        if cfg.evaluation.compile:
            _compilable(forward, cfg.model.name)
        per_model = bytes_per_model(model, data.input_shape, cfg.train, masked_names(model, cfg.masks))
        budget, source = memory_budget(cfg, device)
        plan_chunk(per_model, budget, source, cfg.evaluation.chunk_size, cfg.model.name)

    def _run(self, tasks: list[BurstTask], progress: Progress | None) -> list[BurstResult]:
        return self.trainer.run(tasks, progress, self.epoch_callback)

"""Where tasks run: the per-worker context, device resolution, and the backend factory.

The `Evaluator` interface and `BurstTask` live in `evo_pai.training.tasks` (search code needs them
without knowing devices); this package is the only place that knows devices, processes and Ray.
"""
from __future__ import annotations

import torch

from evo_pai.core.config import Config
from evo_pai.data.datasets import DataSplits, load_data
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import BACKEND
from evo_pai.training.burst import BurstResult, train_masked
from evo_pai.training.optim import task_recipe
from evo_pai.training.precision import numerics
from evo_pai.training.tasks import BurstTask, Evaluator, Progress, dtype_of, initial_model

__all__ = ["BurstTask", "Evaluator", "Progress", "WorkerContext", "dtype_of", "initial_model", "make_evaluator",
           "resolve_device"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EvoPaiError(f"evaluation.device: '{name}' asked for but CUDA is not available; use cpu or auto")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise EvoPaiError(f"evaluation.device: '{name}' asked for but this machine has {torch.cuda.device_count()} "
                          f"GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1}); use one of them or auto")
    return device


class WorkerContext:
    """What a worker builds once per search: data and model on its device, and θ0."""

    def __init__(self, cfg: Config, device: str | torch.device = "cpu", data: DataSplits | None = None,
                 theta0: dict[str, torch.Tensor] | None = None, memory_share: float = 1.0):
        self.cfg = cfg
        self.device = torch.device(device)
        self.memory_share = memory_share  # of the device's free memory (a Ray actor on a fraction of a GPU)
        data = data if data is not None else load_data(cfg.data)
        self.data = data.to(self.device, dtype_of(cfg))
        self.model = initial_model(cfg, data).to(self.device)
        if theta0 is not None:  # θ0 sent by the driver (Ray object store): the same tensors on every node
            self.model.load_state_dict(theta0)
        self.theta0 = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def run(self, task: BurstTask, on_epoch=None) -> BurstResult:
        start = self.theta0 if task.start is None else {k: v.to(self.device) for k, v in task.start.items()}
        with numerics(self.cfg.train.precision):
            return train_masked(
                self.model, start, self.theta0, task.mask, self.data,
                task_recipe(self.cfg.train, task.lr_scale, task.weight_decay),
                task.epochs, task.seed, keep_state=task.keep_state, test=task.test,
                opt_state=task.opt_state, offset=task.offset, horizon=task.horizon, dynamic=task.dynamic,
                on_epoch=on_epoch, data_cfg=self.cfg.data, abn_batches=self.cfg.search.adaptive_bn_batches,
            )


def make_evaluator(cfg: Config, data: DataSplits | None = None) -> Evaluator:
    return BACKEND.get(cfg.evaluation.backend)(cfg, data)

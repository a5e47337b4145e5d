"""Sequential evaluation in this process, on cpu, cuda, cuda:N or auto."""
from __future__ import annotations

from evo_pai.core.config import Config
from evo_pai.data.datasets import DataSplits
from evo_pai.core.registry import register_backend
from evo_pai.training.burst import BurstResult
from evo_pai.training.tasks import BurstTask, Evaluator, Progress
from evo_pai.evaluation.base import WorkerContext, resolve_device


@register_backend("local", "one process, one device, one individual after another")
class LocalEvaluator(Evaluator):
    def __init__(self, cfg: Config, data: DataSplits | None = None):
        super().__init__(cfg)
        self.context = WorkerContext(cfg, resolve_device(cfg.evaluation.device), data)
        self.device_name = str(self.context.device)

    @staticmethod
    def preflight(cfg: Config, data: DataSplits | None = None, model=None) -> None:
        """Before the run folder exists: is the device there?"""
        resolve_device(cfg.evaluation.device)

    def _run(self, tasks: list[BurstTask], progress: Progress | None) -> list[BurstResult]:
        out = []
        for t in tasks:
            out.append(self.context.run(t, self.epoch_callback))
            if progress:
                progress(1)
        return out

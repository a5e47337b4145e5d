"""Sequential evaluation in this process, on cpu, cuda, cuda:N or auto."""
from __future__ import annotations

from ..config import Config
from ..data import DataSplits
from ..registry import register_backend
from ..training.burst import BurstResult
from ..training.tasks import BurstTask, Evaluator, Progress
from .base import WorkerContext, resolve_device


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
            out.append(self.context.run(t))
            if progress:
                progress(1)
        return out

"""Evaluators: the only code that knows about devices, processes and Ray."""
from evo_pai.training.tasks import BurstTask, Evaluator
from evo_pai.evaluation.base import WorkerContext, make_evaluator, resolve_device

__all__ = ["BurstTask", "Evaluator", "WorkerContext", "make_evaluator", "resolve_device"]

"""Evaluators: the only code that knows about devices, processes and Ray."""
from ..training.tasks import BurstTask, Evaluator
from .base import WorkerContext, make_evaluator, resolve_device

__all__ = ["BurstTask", "Evaluator", "WorkerContext", "make_evaluator", "resolve_device"]

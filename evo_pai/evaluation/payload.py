"""Start weights and optimizer states on their way to a worker: on CPU, apart from the task.

A Ray driver puts each payload into the object store once and sends the bare task with a
reference (children of one parent share a payload; a resubmitted share reuses it).
"""
from __future__ import annotations

import dataclasses

from evo_pai.training.tasks import BurstTask


def on_cpu(task: BurstTask) -> BurstTask:
    """CUDA tensors never cross to an actor: a start state from a GPU driver is moved first."""
    start = None if task.start is None else {k: v.to("cpu") for k, v in task.start.items()}
    opt = None if task.opt_state is None else {n: {k: v.to("cpu") for k, v in e.items()} for n, e in task.opt_state.items()}
    return dataclasses.replace(task, start=start, opt_state=opt)


def split_payload(task: BurstTask) -> tuple[BurstTask, tuple | None]:
    """(the task without its tensors, (start, opt_state) on CPU or None when it starts from θ0)."""
    if task.start is None and task.opt_state is None:
        return task, None
    t = on_cpu(task)
    return dataclasses.replace(t, start=None, opt_state=None), (t.start, t.opt_state)

"""Test plugin: the `synthetic` dataset, but loading it inside a Ray actor takes SLOW_START_SECONDS.

tests/test_ray.py uses it to hold actors in their start-up (BurstWorker.__init__ loads the data) long
enough to kill a node while they start. The driver loads it at once."""
from __future__ import annotations

import os
import time

from evo_pai import register_dataset
from evo_pai.data.datasets import load_synthetic

SLOW_START_SECONDS = float(os.environ.get("SLOW_START_SECONDS", "8"))


@register_dataset("slow_start_synthetic", "synthetic data that takes SLOW_START_SECONDS to load inside a Ray actor")
def slow_start_synthetic(cfg):
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        time.sleep(SLOW_START_SECONDS)
    return load_synthetic(cfg.model_copy(update={"name": "synthetic"}))

"""Where the generation log goes besides log.jsonl: experiment trackers, switched on in `logging:`.

A logger is a class built with the run folder, called with every generation record (the dict that
log.jsonl gets), and closed at the end. Adding one (Weights & Biases, MLflow, ...) is a field in
`LoggingConfig` (config.py), a class here and an entry in `LOGGERS`; preflight refuses a missing
package before the run starts (runs/preflight.py: check_loggers).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from evo_pai.core.config import Config


class TensorBoardLogger:
    """Scalars under <run>/tensorboard, one step per generation: `tensorboard --logdir runs/`."""

    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def __call__(self, record: dict) -> None:
        step = int(record.get("generation", 0))
        for key, value in record.items():
            if key != "generation" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(f"search/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


LOGGERS: dict[str, Callable[[Path], object]] = {"tensorboard": TensorBoardLogger}


@contextmanager
def open_loggers(cfg: Config, out: Path | None) -> Iterator[list[Callable[[dict], None]]]:
    """The loggers `cfg.logging` switches on (none without a run folder), closed however the run ends."""
    sinks = [make(out) for name, make in LOGGERS.items() if out is not None and getattr(cfg.logging, name)]
    try:
        yield sinks
    finally:
        for sink in sinks:
            sink.close()

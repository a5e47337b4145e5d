"""Loader workers that stay: a run with `data.workers: 2` starts its two worker processes once and they read
every pass of every burst and generation (counted by the processes that read items), on the local and the
vectorized backend, with the batches of the in-process reader; they stop when the run's data is gone."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import psutil
import pytest
import torch
from torch.utils.data import Dataset

from conftest import tiny_raw
from evo_pai.core.config import DataConfig, build_config
from evo_pai.core.registry import DATASET, register_dataset
from evo_pai.data import loaders
from evo_pai.data.batches import TrainBatches, eval_batches
from evo_pai.data.datasets import assemble_streamed, load_data
from evo_pai.runs.runner import run_experiment

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


class PidItems(Dataset):
    """`n` uint8 (1, 8, 8) images; every read appends the reading process's id to the file `log`."""

    def __init__(self, n: int, log: Path, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=gen)
        self.y = torch.randint(0, 4, (n,), generator=gen)
        self.log = str(log)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return self.x[i], int(self.y[i])


if "test_pid_items" not in DATASET:
    @register_dataset("test_pid_items", "items that log the process reading them (tests)")
    def _pid_items(cfg: DataConfig):
        log = Path(cfg.root) / "reads.txt"
        return assemble_streamed("test_pid_items", cfg, PidItems(120, log, 0), PidItems(40, log, 1), 4, (1, 8, 8))


def readers(root: Path) -> set[int]:
    return {int(p) for p in (root / "reads.txt").read_text().split()}


@pytest.mark.parametrize("backend", ["local", "vectorized"])
def test_workers_start_once_per_run(tmp_path, backend):
    """A search of 3 generations x 3 bursts and the final training (each a training pass and one or two
    evaluation passes): every item is read by one of the same two worker processes."""
    raw = tiny_raw(population=3, generations=3)
    raw["data"] = {"name": "test_pid_items", "root": str(tmp_path), "workers": 2}
    raw["evaluation"] = {"device": "cpu", "backend": backend}
    (tmp_path / "run").mkdir()
    summary = run_experiment(build_config(raw), tmp_path / "run")
    assert summary["search_model_epochs"] == 9 and summary["final_epochs"] == 2
    workers = readers(tmp_path) - {os.getpid()}  # this process reads only the statistics' sample
    assert len(workers) == 2, f"{len(workers)} worker processes read items"
    gc.collect()  # the run's data is gone: so are its workers
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers)


def test_persistent_workers_read_what_the_process_itself_reads(tmp_path):
    """Bursts of different seeds, offsets and lengths through one loader: the batches (order, examples) and
    the evaluation chunks of the in-process reader, pass after pass, from the same two processes."""
    data = load_data(DataConfig(name="test_pid_items", root=str(tmp_path), workers=2))
    for seeds, steps, offset in (([5, 6], 7, 3), ([1], 4, 0), ([9, 2, 4], 5, 11)):
        inproc = list(TrainBatches(data, 16, seeds, steps, offset, CPU, torch.float64, workers=0))
        kept = list(TrainBatches(data, 16, seeds, steps, offset, CPU, torch.float64, workers=2))
        assert len(kept) == steps and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                          for a, b in zip(inproc, kept))
        for split in ("val", "test"):
            a, b = list(eval_batches(data, split, 7, CPU, torch.float64)), list(eval_batches(data, split, 7, CPU, torch.float64, 2))
            assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert len(readers(tmp_path) - {os.getpid()}) == 2
    loaders.close_all()

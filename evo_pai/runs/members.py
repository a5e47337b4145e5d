"""Several answers from one search (nsga2's front): pick members, train them, write the front files.

Run folder: `members/NN.safetensors` (every front member's mask), `members/NN.model.safetensors`
(the weights of each trained member), `front.csv` (one row per non-dominated member) and
`front.png` (runs/front_plot.py). The top-level `mask.safetensors` / `model.safetensors` are the
headline member's: the trained member nearest `search.sparsity`.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..individual import Individual, derive_seed
from ..search.experiment import Experiment, SearchOutcome
from ..training.burst import BurstResult
from ..training.tasks import BurstTask
from .folder import write_atomic

MEMBERS_DIR = "members"


def pick_members(front: list[Individual], members: str | list[float]) -> list[int]:
    """Indices (into `front`, sorted by sparsity) of the members to train: all, or the nearest to each sparsity."""
    if members == "all":
        return list(range(len(front)))
    picks = {min(range(len(front)), key=lambda i: (abs(front[i].mask.sparsity() - s), i)) for s in members}
    return sorted(picks)


def member_task(exp: Experiment, ind: Individual, extra: float = 0.0) -> BurstTask:
    """The same final training as a single-objective run's winner (same seed and recipe)."""
    cfg = exp.cfg
    if cfg.final.init == "continue":  # replay the member's burst (same seed) and keep going
        epochs = cfg.search.burst_epochs + cfg.final.epochs + extra
        return BurstTask(ind.mask, epochs, exp.task_seed(ind), keep_state=True, test=True)
    return BurstTask(ind.mask, cfg.final.epochs + extra, derive_seed(cfg.seed, "final"),
                     keep_state=True, test=True)


def train_members(exp: Experiment, outcome: SearchOutcome, extra: float = 0.0, progress=None) -> dict[int, BurstResult]:
    """Train the picked members (one evaluator call: a parallel backend trains them together)."""
    picks = pick_members(outcome.members, exp.cfg.final.members)
    results = exp.evaluator.evaluate([member_task(exp, outcome.members[i], extra) for i in picks], progress)
    return dict(zip(picks, results))


def headline(outcome: SearchOutcome, trained: dict[int, BurstResult], target: float) -> int:
    return min(trained, key=lambda i: (abs(outcome.members[i].mask.sparsity() - target), i))


def mask_file(i: int) -> str:
    return f"{MEMBERS_DIR}/{i:02d}.safetensors"


def model_file(i: int) -> str:
    return f"{MEMBERS_DIR}/{i:02d}.model.safetensors"


def member_rows(outcome: SearchOutcome, trained: dict[int, BurstResult], costs: list[str]) -> list[dict]:
    rows = []
    for i, ind in enumerate(outcome.members):
        res = trained.get(i)
        row = {
            "member": i,
            "sparsity": ind.mask.sparsity(),
            "kept_weights": sum(ind.mask.counts().values()),
            "flops": ind.metrics.get("flops"),
            "val_accuracy": ind.metrics.get("val_accuracy"),  # after the search's burst
            **{c: ind.metrics.get(c) for c in costs if c not in ("kept_weights", "flops")},
            "mask": mask_file(i),
            "trained": res is not None,
            "test_accuracy": res.metrics.get("test_accuracy") if res else None,
            "final_val_accuracy": res.metrics.get("val_accuracy") if res else None,
            "model": model_file(i) if res is not None and res.state is not None else None,
        }
        rows.append(row)
    return rows


def write_members(out: Path, outcome: SearchOutcome, trained: dict[int, BurstResult], rows: list[dict]) -> None:
    from safetensors.torch import save_file

    (out / MEMBERS_DIR).mkdir(exist_ok=True)
    for i, ind in enumerate(outcome.members):
        ind.mask.save(out / mask_file(i))
        res = trained.get(i)
        if res is not None and res.state is not None:
            save_file({k: v.contiguous() for k, v in res.state.items()}, str(out / model_file(i)))
    fields = [k for k in rows[0] if k not in ("trained", "model")] if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "front.csv", buf.getvalue().encode())

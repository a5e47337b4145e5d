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

from evo_pai.core.individual import Individual, derive_seed
from evo_pai.search.experiment import Experiment, SearchOutcome, level
from evo_pai.training.burst import BurstResult
from evo_pai.training.tasks import BurstTask
from evo_pai.runs.folder import write_atomic

MEMBERS_DIR = "members"


def pick_members(front: list[Individual], members: str | list[float]) -> list[int]:
    """Indices (into `front`, sorted by sparsity) of the members to train: all, or the nearest to each sparsity."""
    if members == "all":
        return list(range(len(front)))
    picks = {min(range(len(front)), key=lambda i: (abs(level(front[i]) - s), i)) for s in members}
    return sorted(picks)


def member_task(exp: Experiment, ind: Individual, extra: float = 0.0, start=None) -> BurstTask:
    """The same final training as a single-objective run's winner (same seed and recipe)."""
    cfg = exp.cfg
    seed = derive_seed(cfg.seed, "final")
    if start is None:
        return BurstTask(ind.mask, cfg.final.epochs + extra, seed, keep_state=True, test=True)
    weights, opt = start
    return BurstTask(ind.mask, cfg.final.epochs + extra, seed, start=weights, keep_state=True, test=True,
                     opt_state=opt if cfg.search.optimizer_state == "keep" else None)


def train_members(exp: Experiment, outcome: SearchOutcome, extra: float = 0.0,
                  progress=None) -> tuple[dict[int, BurstResult], float]:
    """Train the picked members (one evaluator call: a parallel backend trains them together).

    final.init: continue starts each from its trained state (its carry, else its burst re-run, counted
    as training) like a single winner; returns (results by member index, epochs spent re-running)."""
    picks = pick_members(outcome.members, exp.cfg.final.members)
    starts: dict[int, tuple | None] = {i: None for i in picks}
    replayed = 0.0
    if exp.cfg.final.init == "continue":
        members = [outcome.members[i] for i in picks]
        redo = [i for i, m in zip(picks, members) if m.carry is None]
        tasks = [BurstTask(outcome.members[i].mask, exp.cfg.search.burst_epochs, exp.task_seed(outcome.members[i]),
                           keep_state=True) for i in redo]
        for i, res in zip(redo, exp.evaluator.evaluate(tasks) if tasks else []):
            starts[i], replayed = (res.state, res.opt_state), replayed + res.epochs
        for i, m in zip(picks, members):
            if m.carry is not None:
                starts[i] = (m.carry.weights, m.carry.opt_state)
    results = exp.evaluator.evaluate([member_task(exp, outcome.members[i], extra, starts[i]) for i in picks], progress)
    return dict(zip(picks, results)), replayed


def headline(outcome: SearchOutcome, trained: dict[int, BurstResult], target: float) -> int:
    return min(trained, key=lambda i: (abs(level(outcome.members[i]) - target), i))


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
            "sparsity": level(ind),  # fraction of MACs removed with masks.granularity: channel
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

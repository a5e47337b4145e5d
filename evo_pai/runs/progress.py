"""What a run tells the user while it works: the search's tasks and generations, then the final epochs.

The runner speaks to a `RunProgress`; `make_progress` picks how it is shown: rich bars on a terminal
(the bar's text carries the generation, best fitness and sparsity), one plain line per generation
and per final-training epoch when stderr is a file or a pipe (CI logs, `2> log`), nothing with --quiet.
"""
from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    """Silent: the base for the displays below, and what a run without a display uses."""

    def phase(self, label: str, total: int | None, generations: int | None = None) -> None:
        """A new stage: `total` units of work (None: unknown), over `generations` generations."""

    def advance(self, n: int = 1) -> None:
        """`n` more units of the current stage are done."""

    def generation(self, record: dict) -> None:
        """A generation (or pruning step) was logged: its log.jsonl record."""

    def epoch(self, done: int, total: int) -> None:
        """The final training finished epoch `done` of `total`."""

    def __enter__(self) -> "RunProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def describe(record: dict, generations: int | None, short: bool = False) -> str:
    """'gen 3/5 · best 0.8312 · sparsity 76.0 %' from a log record (the pruned-to sparsity if there is one)."""
    g = int(record.get("generation", 0)) + 1
    parts = [f"gen {g}/{generations}" if generations else f"gen {g}"]
    best = record.get("best_fitness")
    parts.append(f"best {best:.4g}" if isinstance(best, (int, float)) else "best n/a")
    sparsity = record.get("pruned_to", record.get("sparsity"))
    if isinstance(sparsity, (int, float)):
        parts.append(f"sparsity {100 * sparsity:.1f} %")
    acc = record.get("best_val_accuracy")
    if isinstance(acc, (int, float)) and not short:
        parts.append(f"val acc {100 * acc:.1f} %")
    return " · ".join(parts)


class RichProgress(RunProgress):
    """Bars on a terminal; the search bar's label shows the latest generation."""

    def __init__(self, console: Console):
        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=console, transient=False)
        self._task = None
        self._label = ""
        self._generations: int | None = None

    def __enter__(self) -> "RichProgress":
        self._bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bars.__exit__(*exc)

    def phase(self, label: str, total: int | None, generations: int | None = None) -> None:
        self._label, self._generations = label, generations
        self._task = self._bars.add_task(escape(label), total=total or None)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bars.advance(self._task, n)

    def generation(self, record: dict) -> None:
        if self._task is not None:
            self._bars.update(self._task, description=escape(f"{self._label} · {describe(record, self._generations, short=True)}"))

    def epoch(self, done: int, total: int) -> None:
        if self._task is not None:
            self._bars.update(self._task, completed=done, total=total,
                              description=escape(f"{self._label} · epoch {done}/{total}"))


class LineProgress(RunProgress):
    """One plain line per generation and per final-training epoch (stderr is not a terminal)."""

    def __init__(self, console: Console):
        self._console = console
        self._label = ""
        self._generations: int | None = None
        self._t0 = time.perf_counter()

    def _say(self, text: str) -> None:
        self._console.print(f"{text} ({time.perf_counter() - self._t0:.1f} s)", markup=False, highlight=False,
                            soft_wrap=True)

    def phase(self, label: str, total: int | None, generations: int | None = None) -> None:
        self._label, self._generations = label, generations

    def generation(self, record: dict) -> None:
        self._say(f"{self._label}: {describe(record, self._generations)}")

    def epoch(self, done: int, total: int) -> None:
        self._say(f"{self._label}: epoch {done}/{total}")


def make_progress(console: Console, quiet: bool = False) -> RunProgress:
    if quiet:
        return RunProgress()
    return RichProgress(console) if console.is_terminal else LineProgress(console)

"""The `evo-pai` command line. Bad input: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import load_config
from .errors import EvoPaiError
from .registry import ALL
from .runs.components import load_components
from .runs.progress import make_progress

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evolutionary pruning at initialization: K-starts, dissipating gradients, their combination.")
out_console = Console()
err_console = Console(stderr=True)


def print_summary(summary: dict, out: Path | None) -> None:
    from .runs.report import summary_rows

    table = Table(title="evo-pai run", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in summary_rows(summary):
        table.add_row(name, value)
    out_console.print(table)
    if out:  # outside the table, never wrapped or cut: the whole path can be copied
        out_console.print(f"run folder: {out.resolve()}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/quickstart.yaml"),
    set_: List[str] = typer.Option([], "--set", help="override a key: --set search.sparsity=0.95 (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: runs/<method>-<data>-...-<hash>)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="allow writing into a non-empty --out folder"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress (default: bars on a terminal, else a line per "
                                                      "generation and final epoch)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: auto, by the model's "
                                          "work per step and the free CPUs; = --set train.threads=N)"),
) -> None:
    """Run a search and train its winner; writes a run folder."""
    from .runs.runner import preflight, run_experiment
    from .runs.folder import default_run_dir, prepare_run_dir

    cfg = load_config(config, [*set_, *thread_override(threads)])
    load_components(cfg.plugins)  # unknown plugin modules fail before any folder is made
    _check_names(cfg)
    run_dir = out if out else default_run_dir(cfg)
    prepare_run_dir(run_dir, overwrite, create=False)  # refuse a taken folder before loading data
    data = preflight(cfg)
    prepare_run_dir(run_dir, overwrite)
    with make_progress(err_console, quiet) as progress:
        summary = run_experiment(cfg, run_dir, progress, data)
    print_summary(summary, run_dir)


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="a run folder written by `evo-pai run` (holds config.yaml)"),
    set_: List[str] = typer.Option([], "--set", help="change where it runs: --set evaluation.address=HOST:PORT "
                                                     "(only evaluation.* keys; repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress (default: bars on a terminal, else a line per "
                                                      "generation and final epoch)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: auto, by the model's "
                                          "work per step and the free CPUs; = --set train.threads=N)"),
) -> None:
    """Continue an interrupted run from its last checkpoint; ends as the uninterrupted run would."""
    from .runs.checkpoint import FILENAME, load_checkpoint
    from .runs.runner import preflight, run_experiment

    if not (run_dir / "config.yaml").is_file():
        raise EvoPaiError(f"{run_dir}: not a run folder (no config.yaml); pass a folder written by `evo-pai run`")
    if (run_dir / "summary.json").exists():
        raise EvoPaiError(f"{run_dir}: this run already finished (summary.json exists); nothing to resume")
    for text in set_:
        if not text.startswith("evaluation."):
            raise EvoPaiError(f"--set {text}: a resumed run keeps its config; only evaluation.* (where it runs) may change")
    cfg = load_config(run_dir / "config.yaml", [*set_, *thread_override(threads)])
    load_components(cfg.plugins)
    _check_names(cfg)
    path = run_dir / FILENAME
    checkpoint = load_checkpoint(path, cfg) if path.exists() else None  # checked before anything is written
    data = preflight(cfg)
    gen = checkpoint.generation if checkpoint else None
    where = f"after generation {gen}" if gen is not None else "the start (no checkpoint was written yet)"
    err_console.print(f"resuming {run_dir} from {where}", markup=False, highlight=False)
    with make_progress(err_console, quiet) as progress:
        summary = run_experiment(cfg, run_dir, progress, data, resume=checkpoint)
    print_summary(summary, run_dir)


def thread_override(threads: int | None) -> list[str]:
    """--threads N is train.threads=N: how fast a run goes, so a resumed run may change it too."""
    return [] if threads is None else [f"train.threads={threads}"]


def _check_names(cfg) -> None:
    """Refuse unknown component names before any work starts."""
    from .registry import BACKEND, CROSSOVER, DATASET, FITNESS, METHOD, MODEL, MUTATION, SELECTION

    s = cfg.search
    for reg, key, value in [
        (METHOD, "search.method", s.method), (FITNESS, "search.fitness", s.fitness),
        (MUTATION, "search.mutation", s.mutation), (CROSSOVER, "search.crossover", s.crossover),
        (SELECTION, "search.selection", s.selection), (DATASET, "data.name", cfg.data.name),
        (MODEL, "model.name", cfg.model.name), (BACKEND, "evaluation.backend", cfg.evaluation.backend),
    ]:
        if value not in reg:
            raise EvoPaiError(f"{key}: unknown {reg.kind} '{value}'; choose one of {', '.join(reg.names())} (see `evo-pai list`)")


@app.command("list")
def list_components(
    plugin: List[str] = typer.Option([], "--plugin", help="also import this plugin module (repeatable)"),
) -> None:
    """Print every registered component by kind, with a one-line description."""
    load_components(plugin)
    for kind, reg in ALL.items():
        table = Table(title=kind, show_header=False, title_justify="left", box=None, padding=(0, 2))
        for entry in reg:
            table.add_row(entry.name, entry.description)
        out_console.print(table)
        out_console.print()


@app.command()
def study(
    config: Path = typer.Argument(..., help="study YAML, e.g. configs/study_fmnist.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", help="study folder (default: studies/<name>); rerun to resume"),
    jobs: Optional[int] = typer.Option(None, "--jobs", min=1, help="cells run in parallel (default: the study's jobs)"),
) -> None:
    """Run a grid of methods x sparsities x seeds (resumable), then write the report."""
    from .study.grid import load_study
    from .study.runner import run_study

    spec = load_study(config)
    root = out if out else Path("studies") / spec.name
    counts = run_study(spec, root, jobs, say=lambda line: err_console.print(line, markup=False, highlight=False))
    out_console.print(f"{counts['cells']} cells ({counts['ran']} run now, {counts['errors']} failed); "
                      f"report: {root / 'report.md'}")


@app.command()
def report(study_dir: Path = typer.Argument(..., help="a folder written by `evo-pai study`")) -> None:
    """Regenerate a study's tables and plots from its results.csv."""
    from .study.report import write_report

    out_console.print(f"report: {write_report(study_dir)}")


def main() -> None:
    try:
        app(standalone_mode=False)
    except EvoPaiError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            err_console.print(f"error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()

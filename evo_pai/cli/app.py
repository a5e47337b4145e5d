"""The `evo-pai` command line: parse, hand over, print. Errors become one line in cli_errors.py."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from evo_pai.cli.one_line import resumable, run_app
from evo_pai.core.config import load_config
from evo_pai.core.errors import EvoPaiError
from evo_pai.core.registry import ALL, Method
from evo_pai.runs.components import load_components
from evo_pai.runs.progress import make_progress

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evolutionary pruning at initialization: K-starts, dissipating gradients, their combination.")
out_console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from evo_pai import __version__  # the code that runs (an editable install's metadata may be older)

        print(f"evo-pai {__version__}")
        raise typer.Exit()


def plugin_versions(plugins: List[str]) -> list[str]:
    """What `list --plugin` prints first: the evo-pai a plugin runs against, and where each plugin came from."""
    import sys
    from importlib.metadata import entry_points

    from evo_pai import __version__
    from evo_pai.core.registry import PLUGIN_GROUP

    lines = [f"evo-pai {__version__} (plugins import from evo_pai.plugin; CHANGELOG.md says what changed)"]
    lines += [f"plugin {m}: {getattr(sys.modules.get(m), '__file__', None) or m}" for m in plugins]
    lines += [f"plugin {ep.value}: entry point '{ep.name}' of {ep.dist.name if ep.dist else '?'}"
              for ep in entry_points(group=PLUGIN_GROUP)]
    return lines


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                        help="print the version and exit")) -> None:
    """Evolutionary pruning at initialization: K-starts, dissipating gradients, their combination."""


def resume_hint(run_dir: Path) -> str | None:
    """How to continue an interrupted run: only once its folder holds a config and no summary."""
    if (run_dir / "config.yaml").is_file() and not (run_dir / "summary.json").exists():
        return f"evo-pai resume {run_dir}"
    return None


def thread_override(threads: int | None) -> list[str]:
    """--threads N is train.threads=N: how fast a run goes, so a resumed run may change it too."""
    return [] if threads is None else [f"train.threads={threads}"]


def print_summary(summary: dict, out: Path | None) -> None:
    from evo_pai.runs.plots import summary_rows

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
    from evo_pai.runs.api import run_in_folder
    from evo_pai.runs.folder import default_run_dir
    from evo_pai.runs.preflight import check_config

    cfg = load_config(config, [*set_, *thread_override(threads)])
    check_config(cfg)  # names, parameters, loggers: before the default folder name is chosen
    run_dir = out if out else default_run_dir(cfg)
    with resumable(lambda: resume_hint(run_dir)), make_progress(err_console, quiet) as progress:
        summary = run_in_folder(cfg, run_dir, overwrite, progress)
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
    from evo_pai.runs.checkpoint import FILENAME, load_checkpoint
    from evo_pai.runs.lock import FolderLock
    from evo_pai.runs.preflight import check_config, expected_shapes, preflight
    from evo_pai.runs.runner import run_experiment

    if not (run_dir / "config.yaml").is_file():
        raise EvoPaiError(f"{run_dir}: not a run folder (no config.yaml); pass a folder written by `evo-pai run`")
    if (run_dir / "summary.json").exists():
        raise EvoPaiError(f"{run_dir}: this run already finished (summary.json exists); nothing to resume")
    for text in set_:
        if not text.startswith("evaluation."):
            raise EvoPaiError(f"--set {text}: a resumed run keeps its config; only evaluation.* (where it runs) may change")
    with FolderLock(run_dir):  # before reading: a live run must not change the checkpoint under us
        cfg = load_config(run_dir / "config.yaml", [*set_, *thread_override(threads)])
        check_config(cfg)
        data = preflight(cfg)
        path = run_dir / FILENAME
        # Read and checked against the model's shapes before anything in the folder is written.
        checkpoint = load_checkpoint(path, cfg, expected_shapes(cfg, data)) if path.exists() else None
        gen = checkpoint.generation if checkpoint else None
        where = f"after generation {gen}" if gen is not None else "the start (no checkpoint was written yet)"
        err_console.print(f"resuming {run_dir} from {where}", markup=False, highlight=False)
        with resumable(lambda: resume_hint(run_dir)):
            with make_progress(err_console, quiet) as progress:
                summary = run_experiment(cfg, run_dir, progress, data, resume=checkpoint)
    print_summary(summary, run_dir)


LOADERS = {"compact": "evo_pai.load_compact", "csr": "evo_pai.load_csr", "torch-prune": "evo_pai.load_torch_prune",
           "npz": "numpy.load", "semi-structured": "evo_pai.load_semi_structured", "pruned": "evo_pai.load_pruned"}


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a run folder written by `evo-pai run`"),
    fmt: str = typer.Option("compact", "--format", help="compact | csr | torch-prune | npz | semi-structured | pruned"),
    member: Optional[int] = typer.Option(None, "--member", help="nsga2: the front member (front.csv's `member`)"),
    out: Optional[Path] = typer.Option(None, "--out", help="file to write (default: RUN_DIR/export/FORMAT...)"),
) -> None:
    """Turn a run's mask into a deployable network: smaller (compact), sparse (csr), or torch/numpy files."""
    from evo_pai.runs.export import export as write_export

    info = write_export(run_dir, fmt, member, out)
    out_console.print(f"wrote {info['path']} ({info['format']}, {info['source']}, sparsity {100 * info['sparsity']:.2f} %)",
                      markup=False, highlight=False, soft_wrap=True)
    if "widths" in info:
        out_console.print(f"units per layer after compaction: {info['widths']}", markup=False, highlight=False, soft_wrap=True)
    if "group_widths" in info:
        out_console.print(f"channels per group after pruning: {info['group_widths']} of {info['full_widths']}; "
                          f"{100 * info['macs_kept']:.1f} % of the MACs, {info['params']} of {info['dense_params']} parameters",
                          markup=False, highlight=False, soft_wrap=True)
    if "converted" in info:
        out_console.print(f"2:4 semi-structured layers: {', '.join(info['converted']) or 'none (shapes refused)'}", markup=False, soft_wrap=True)
    if "max_abs_diff" in info:
        out_console.print(f"outputs vs the masked network (64 random inputs): max |diff| = {info['max_abs_diff']:.3g}",
                          markup=False, highlight=False, soft_wrap=True)
    out_console.print(f"load it with {LOADERS[info['format']]}(\"{info['path']}\")", markup=False, highlight=False, soft_wrap=True)


def declared(obj) -> str:
    """What a method declares it reads (docs/extending.md); other components: nothing."""
    if not isinstance(obj, Method):
        return ""
    params = obj.accepted_params()
    keys = "any key" if params is None else ", ".join(sorted(params))
    return f"\n  reads: {', '.join(obj.reads) or 'no search field'}; search.params: {keys}"


@app.command("list")
def list_components(
    plugin: List[str] = typer.Option([], "--plugin", help="also import this plugin module (repeatable)"),
) -> None:
    """Print every registered component by kind, with a one-line description."""
    load_components(plugin)
    for line in plugin_versions(plugin):  # the version plugins run against, and where each came from
        out_console.print(line, markup=False, highlight=False, soft_wrap=True)
    out_console.print()
    for kind, reg in ALL.items():
        table = Table(title=kind, show_header=False, title_justify="left", box=None, padding=(0, 2))
        for entry in reg:
            table.add_row(entry.name, entry.description + declared(entry.obj))
        out_console.print(table)
        out_console.print()


@app.command("list-layers")
def list_layers(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/cifar10_resnet20.yaml"),
    set_: List[str] = typer.Option([], "--set", help="override a key: --set masks.exclude='[conv1.weight]' (repeatable)"),
) -> None:
    """Print every parameter of the config's model: prunable or not, and why (masks.include / exclude)."""
    from evo_pai.models.prunable import roles_brief
    from evo_pai.runs.layer_list import parameter_rows

    rows = parameter_rows(load_config(config, list(set_)))
    cells = [("parameter", "shape", "prunable", "why")] + [
        (r["name"], "x".join(map(str, r["shape"])) or "scalar", "yes" if r["prunable"] else "no", r["why"]) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    for c in cells:  # plain aligned lines, never wrapped: greppable, whatever the terminal's width
        print("  ".join(x.ljust(w) for x, w in zip(c[:3], widths)) + "  " + c[3])
    out_console.print(roles_brief(rows), markup=False, highlight=False, soft_wrap=True)


@app.command("list-groups")
def list_groups(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/structured_resnet20.yaml"),
    set_: List[str] = typer.Option([], "--set", help="override a key: --set model.params.width=8 (repeatable)"),
) -> None:
    """Print the model's channel groups (structured search): layers, channels, share of MACs, what is never pruned."""
    from evo_pai.runs.group_list import format_rows, group_rows

    rows, never = group_rows(load_config(config, list(set_)))
    for line in format_rows(rows, never):
        print(line)


@app.command()
def study(
    config: Path = typer.Argument(..., help="study YAML, e.g. configs/study_fmnist.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", help="study folder (default: studies/<name>); rerun to resume"),
    jobs: Optional[int] = typer.Option(None, "--jobs", min=1, help="cells run in parallel (default: the study's jobs)"),
    rows: Optional[list[str]] = typer.Option(None, "--rows", help="run only rows whose label matches this glob "
                                             "(repeatable), e.g. 'lenet5_*'; a later run without it adds the rest"),
    sparsities: Optional[list[float]] = typer.Option(None, "--sparsity", help="run only this sparsity (repeatable)"),
) -> None:
    """Run a grid of methods x sparsities x seeds (resumable), then write the report."""
    from evo_pai.study.grid import load_study, study_slice
    from evo_pai.study.grid_runner import run_study

    spec = load_study(config)
    select = study_slice(spec, rows, sparsities)
    root = out if out else Path("studies") / spec.name
    with resumable(lambda: f"evo-pai study {config} --out {root}" if root.exists() else None):
        counts = run_study(spec, root, jobs, say=lambda line: err_console.print(line, markup=False, highlight=False,
                                                                        soft_wrap=True), select=select)
    out_console.print(f"{counts['cells']} cells ({counts['ran']} run now, {counts['errors']} failed); "
                      f"report: {root / 'report.md'}")


@app.command()
def report(
    study_dir: Path = typer.Argument(..., help="a folder written by `evo-pai study`"),
    study_file: Optional[Path] = typer.Option(None, "--study", help="the study YAML whose compare: and targets: to use "
                                              "(default: the study.yaml `evo-pai study` kept in the folder)"),
) -> None:
    """Regenerate a study's tables and plots from its results.csv."""
    from evo_pai.study.grid import load_study
    from evo_pai.study.tables import write_report

    out_console.print(f"report: {write_report(study_dir, load_study(study_file) if study_file else None)}")


@app.command()
def init(
    folder: Path = typer.Argument(Path("configs"), help="where to write the example configs"),
) -> None:
    """Write the shipped example configs (quickstart, Fashion-MNIST, studies) into FOLDER to edit."""
    import shutil

    from evo_pai.core.config import shipped_configs

    sources = sorted(shipped_configs().glob("*.yaml"))
    if not sources:
        raise EvoPaiError(f"no shipped configs found under {shipped_configs()}; reinstall evo-pai")
    folder.mkdir(parents=True, exist_ok=True)
    written = [p.name for p in sources if not (folder / p.name).exists()]
    for name in written:
        shutil.copyfile(shipped_configs() / name, folder / name)
    kept = len(sources) - len(written)
    out_console.print(f"wrote {len(written)} configs to {folder}" + (f" (kept {kept} that exist)" if kept else "")
                      + f"; try: evo-pai run {folder / 'quickstart.yaml'}", markup=False, highlight=False)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()

"""Issue 26, part 4: a plugin package declaring `[project.entry-points."evo_pai.plugins"]`, pip-installed
(into a throwaway venv that sees this environment's packages), is found by name with no `plugins:`."""
from __future__ import annotations

import json
import site
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from conftest import tiny_raw

PYPROJECT = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "evo-pai-ep-demo"
version = "1.0.0"

[project.entry-points."evo_pai.plugins"]
ep_demo = "ep_demo_plugin"
"""

PLUGIN = '''"""An installed plugin: a model and a fitness, registered when evo-pai loads its entry points."""
from torch import nn

from evo_pai.plugin import register_fitness, register_model


@register_model("ep_demo_mlp", "an entry-point plugin's MLP")
def ep_demo_mlp(input_shape, num_classes, hidden: int = 16):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


@register_fitness("ep_demo_loss", "an entry-point plugin's fitness: minus the validation loss")
def ep_demo_loss(result, mask) -> float:
    return -float(result.metrics["val_loss"])
'''


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
    return r


@pytest.fixture
def venv_with_plugin(tmp_path) -> Path:
    """A venv whose site-packages adds this environment's (torch, evo-pai), with the plugin pip-installed."""
    package = tmp_path / "ep_demo"
    package.mkdir()
    (package / "pyproject.toml").write_text(PYPROJECT)
    (package / "ep_demo_plugin.py").write_text(PLUGIN)
    _run(sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (purelib / "outer_env.pth").write_text("".join(f"import site; site.addsitedir({d!r})\n"
                                                   for d in site.getsitepackages()))
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", package)
    assert (purelib / "ep_demo_plugin.py").is_file()  # installed there, a copy: not on this test's path
    return python


@pytest.mark.slow
def test_an_installed_entry_point_plugin_is_found_by_name_without_plugins(venv_with_plugin, tmp_path):
    assert "ep_demo" not in {ep.name for ep in entry_points(group="evo_pai.plugins")}  # not in this environment
    listed = _run(venv_with_plugin, "-m", "evo_pai", "list").stdout
    assert "ep_demo_mlp" in listed and "ep_demo_loss" in listed
    assert "plugin ep_demo_plugin: entry point 'ep_demo' of evo" in listed  # and says where it came from
    raw = tiny_raw("kstarts", population=2, fitness="ep_demo_loss")
    raw["model"] = {"name": "ep_demo_mlp", "params": {"hidden": 8}}
    raw["final"] = {"epochs": 1}
    assert "plugins" not in raw
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    _run(venv_with_plugin, "-m", "evo_pai", "run", tmp_path / "c.yaml", "--out", tmp_path / "run", "--quiet")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["model"]["name"] == "ep_demo_mlp" and config["search"]["fitness"] == "ep_demo_loss"
    assert all(c["fitness"] < 0 for c in summary["candidates"])  # minus a loss: the plugin's fitness ran

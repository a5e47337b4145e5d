"""What an installed evo-pai ships and how it installs: configs in the wheel and found by bare name,
`evo-pai init`, an install that survives a locked dpkg, and the TensorBoard logger hook."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, cli_inproc, tiny_raw
from evo_pai.core.config import load_config, resolve_config, shipped_configs

CONFIG_NAMES = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


def test_the_wheel_ships_every_config_and_the_license(tmp_path):
    """Built from the repository as pip builds it (an isolated build with pyproject's setuptools floor)."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "project.license" not in r.stderr  # the SPDX string: no deprecation warning
    wheel = next(tmp_path.glob("evo_pai-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.split("/")[-1] for n in names if n.startswith("evo_pai/configs/")) == CONFIG_NAMES
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_a_bare_name_finds_a_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here, as after `pip install evo-pai`
    assert resolve_config("quickstart") == shipped_configs() / "quickstart.yaml"
    assert resolve_config("study_smoke.yaml") == shipped_configs() / "study_smoke.yaml"
    assert load_config("quickstart").search.method == "combined"
    (tmp_path / "quickstart").mkdir()  # a path that exists is always taken as given
    assert resolve_config("quickstart") == Path("quickstart")
    from evo_pai.core.errors import EvoPaiError

    with pytest.raises(EvoPaiError, match="or a shipped config by name: .*quickstart"):
        load_config("no_such_config")


def test_init_writes_the_examples_and_keeps_edited_ones(tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "quickstart.yaml").write_text("seed: 5\n")
    code, out, _ = cli_inproc(capsys, "init", str(target))
    assert code == 0 and f"wrote {len(CONFIG_NAMES) - 1} configs" in out and "kept 1" in out
    assert sorted(p.name for p in target.glob("*.yaml")) == CONFIG_NAMES
    assert (target / "quickstart.yaml").read_text() == "seed: 5\n"
    assert (target / "kstarts_fmnist.yaml").read_text() == (ROOT / "configs/kstarts_fmnist.yaml").read_text()


def test_install_continues_when_dpkg_is_locked(tmp_path):
    """The Fashion-MNIST step with an apt-get that reports a held dpkg lock: a warning, exit 0."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text("#!/bin/sh\necho 'E: Could not get lock /var/lib/dpkg/lock-frontend' >&2\nexit 100\n")
    (fake / "apt-get").chmod(0o755)
    (fake / "id").write_text("#!/bin/sh\necho 0\n")  # as root, which is when the script calls apt
    (fake / "id").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FMNIST_DIR": str(tmp_path / "absent")}
    r = subprocess.run(["bash", str(ROOT / "scripts/install_fmnist.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "warning: apt-get could not install dataset-fashion-mnist" in r.stderr


def test_install_script_installs_the_package_and_survives_a_locked_dpkg(tmp_path):
    """scripts/install.sh itself, run in a copy of the scripts with a python whose venv records what it is
    asked to install (no network) and the dpkg-locked apt-get above: it installs the package with its test
    extra, reaches the Fashion-MNIST step, and exits 0 despite the lock."""
    repo, fake = tmp_path / "repo", tmp_path / "bin"
    shutil.copytree(ROOT / "scripts", repo / "scripts")
    fake.mkdir()
    calls = tmp_path / "calls.txt"
    venv_python = f"#!/bin/sh\necho \"$*\" >> {calls}\nexit 0\n"
    (fake / "python3").write_text(  # `python3 -m venv .venv` makes a .venv whose python only records its calls
        "#!/bin/sh\n[ \"$1 $2\" = '-m venv' ] || exit 1\nmkdir -p \"$3/bin\"\n"
        f"cat > \"$3/bin/python\" <<'EOF'\n{venv_python}EOF\nchmod +x \"$3/bin/python\"\n")
    (fake / "apt-get").write_text("#!/bin/sh\necho 'E: Could not get lock /var/lib/dpkg/lock-frontend' >&2\nexit 100\n")
    (fake / "id").write_text("#!/bin/sh\necho 0\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": str(fake / "python3"),
           "FMNIST_DIR": str(tmp_path / "absent")}
    r = subprocess.run(["bash", str(repo / "scripts/install.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (repo / ".venv/bin/python").is_file()
    assert "-m pip install -q -e .[test]" in calls.read_text().splitlines()
    assert "warning: apt-get could not install dataset-fashion-mnist" in r.stderr


def test_tensorboard_logger_writes_the_generation_log(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'evo-pai[tensorboard]' (part of the test extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from evo_pai import run

    raw = tiny_raw("combined")
    raw["logging"] = {"tensorboard": True}
    summary = run(raw, out=tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    best = acc.Scalars("search/best_fitness")
    assert [e.step for e in best] == list(range(summary["generations_logged"]))
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [round(e.value, 4) for e in best] == [round(r["best_fitness"], 4) for r in records]
    assert {"search/sparsity", "search/model_epochs"} <= set(acc.Tags()["scalars"])

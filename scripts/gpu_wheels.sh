#!/usr/bin/env bash
# Wheels for the GPU device machine: Python 3.12 with torch, numpy, scikit-learn, PyYAML, typer, rich,
# matplotlib and safetensors already installed, and no network. This downloads what evo-pai needs
# beyond those into .whl/ (git-ignored) for `run`'s carry; docs/gpu.md has the command that installs
# them there. Ray's wheel (79 MB) is slimmed to what evo-pai imports: the Java jars and the RLlib,
# Data, Train, Tune, Serve and LLM libraries and the dashboard's web client go, so that .whl/ and the
# working tree together stay under the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  deap==1.4.4 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
  rpds-py==2026.9.1 ray==2.60.0
"$PY" - <<'PY'
import pathlib, zipfile

DROP = ("ray/jars/", "ray/rllib/", "ray/data/", "ray/train/", "ray/tune/", "ray/serve/", "ray/llm/",
        "ray/dashboard/client/")
src = next(pathlib.Path(".whl").glob("ray-*.whl"))
tmp = src.with_suffix(".slim")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.startswith(DROP):
            continue
        data = zin.read(item)
        if item.filename.endswith(".dist-info/RECORD"):  # keep RECORD true to the files shipped
            data = b"".join(l for l in data.splitlines(keepends=True) if not l.decode().startswith(DROP))
        zout.writestr(item, data)
tmp.replace(src)
PY
du -sh .whl

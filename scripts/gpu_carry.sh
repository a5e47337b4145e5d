#!/usr/bin/env bash
# What the GPU device machine needs and lacks (docs/gpu.md), for the device tool's `carry`:
#   .whl/                    wheels: that machine has Python 3.12 with torch, numpy, scikit-learn, PyYAML,
#                            typer, rich, matplotlib and safetensors, and no network. Ray's wheel (79 MB)
#                            is slimmed to what evo-pai imports (no Java jars, RLlib, Data, Train, Tune,
#                            Serve, LLM, dashboard web client).
#   .gpu_data/fashion-mnist/ the first FMNIST_TRAIN (default 30000) of Fashion-MNIST's 60,000 training
#                            images and all 10,000 test images, as IDX files (SUBSET.txt says so).
# Both are git-ignored; with the working tree they stay under the tool's 64 MiB (about 61 MB).
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
FMNIST_TRAIN=${FMNIST_TRAIN:-30000} "$PY" - <<'PY'
import gzip, os, pathlib, struct

src = pathlib.Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
if not src.is_dir():
    raise SystemExit(f"{src} not found: apt-get install dataset-fashion-mnist (or skip .gpu_data: digits is used)")
dst = pathlib.Path(".gpu_data/fashion-mnist")
dst.mkdir(parents=True, exist_ok=True)
n_train = int(os.environ["FMNIST_TRAIN"])
for base, keep in [("train-images-idx3-ubyte", n_train), ("train-labels-idx1-ubyte", n_train),
                   ("t10k-images-idx3-ubyte", None), ("t10k-labels-idx1-ubyte", None)]:
    raw = gzip.open(src / f"{base}.gz").read()
    ndim = raw[3]
    dims = list(struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim]))
    keep = dims[0] if keep is None else min(keep, dims[0])
    per_item = 1
    for d in dims[1:]:
        per_item *= d
    body = raw[4 + 4 * ndim : 4 + 4 * ndim + keep * per_item]
    with gzip.open(dst / f"{base}.gz", "wb", compresslevel=9) as f:
        f.write(raw[:4] + struct.pack(f">{ndim}I", keep, *dims[1:]) + body)
(dst / "SUBSET.txt").write_text(f"first {n_train} of 60000 training images, all 10000 test images\n")
PY
du -sh .whl .gpu_data

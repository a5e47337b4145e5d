#!/usr/bin/env bash
# Install evo-pai into ./.venv. Idempotent; safe to rerun.
# GPU users: create .venv and install the torch build for your CUDA first; this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # Pinned CPU build: an unpinned torch pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[test]"
# Fashion-MNIST (optional: the digits quick start needs no Debian package); never fails the install.
bash scripts/install_fmnist.sh

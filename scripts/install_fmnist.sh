#!/usr/bin/env bash
# Fashion-MNIST from Debian (dataset-fashion-mnist) when run as root with apt; digits ships with
# scikit-learn, so nothing here may stop an install: a held dpkg lock, no network or a failing apt
# only print a warning. FMNIST_DIR: where the files are looked for (the package's own folder).
set -uo pipefail
FMNIST_DIR=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
warn() { echo "warning: $*; the digits quick start works without it" >&2; }
[ -d "$FMNIST_DIR" ] && exit 0
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
  warn "Fashion-MNIST not installed (needs root and apt-get: apt-get install dataset-fashion-mnist)"
  exit 0
fi
# -o DPkg::Lock::Timeout: wait a little for another apt, then give up instead of aborting the install.
if ! apt-get -o DPkg::Lock::Timeout=30 update -qq \
   || ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=30 install -y -qq dataset-fashion-mnist >/dev/null; then
  warn "apt-get could not install dataset-fashion-mnist (dpkg locked by another process, or apt failed); rerun it later"
fi
exit 0

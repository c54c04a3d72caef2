#!/usr/bin/env bash
# Installs what building and testing flashattn needs (Debian packages + pinned PyPI packages).
# Idempotent: skips what is already there. Run as root (or with sudo available).
set -euo pipefail
APT_PKGS="cmake ninja-build g++ pkg-config libgtest-dev libgmock-dev libbenchmark-dev libhwy-dev python3-pip"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check -r "$(dirname "$0")/../python/requirements-dev.txt"

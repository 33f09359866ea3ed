#!/usr/bin/env bash
# Create .venv with napari-unet and what it needs; idempotent.
# Usage: bash scripts/setup.sh [--viewer]   (--viewer also installs Xvfb + Mesa for viewer tests)
set -euo pipefail
cd "$(dirname "$0")/.."

want_viewer=0
[ "${1:-}" = "--viewer" ] && want_viewer=1

if [ "$want_viewer" = 1 ] && ! command -v xvfb-run >/dev/null 2>&1; then
  echo "[setup] installing Xvfb and Mesa (Debian packages) for viewer tests"
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 \
    libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.napari-unet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing packages into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # The CPU build of torch that lies on this machine's disk; elsewhere pip picks the platform's build.
  .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch
  .venv/bin/python -m pip install -q -e ".[testing,cluster,export]"
  touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/napari-unet --version 2>/dev/null || echo 'napari-unet installed')"

#!/usr/bin/env bash
# Set everything up (venv, package, Xvfb + Mesa), lint, and run the whole test suite under a
# virtual screen (Qt 6).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --viewer
echo "[test] ruff check + format check"
.venv/bin/ruff check src tests benchmarks docs scripts
.venv/bin/ruff format --check src tests benchmarks docs scripts
export QT_API=pyqt6 NAPARI_UNET_DATA="${NAPARI_UNET_DATA:-$(cd .. && pwd)/shared/data}"
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

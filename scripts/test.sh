#!/usr/bin/env bash
# Set everything up (venv, package, Xvfb + Mesa) and run the whole test suite under a virtual screen.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --viewer
export QT_API=pyqt5 NAPARI_UNET_DATA="${NAPARI_UNET_DATA:-$(cd .. && pwd)/shared/data}"
exec xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

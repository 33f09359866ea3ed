#!/usr/bin/env bash
# Set everything up (venv + package) and run the demo on built-in synthetic data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/napari-unet demo --out demo-out "$@"

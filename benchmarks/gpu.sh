#!/usr/bin/env bash
# One prepared GPU check (issue: accuracy on a GPU), to run on a lent H100/H200 within ~10 min:
# paper-network inference speed (bf16), training tiles/s, and one PhC-U373 run of the paper
# network with the product's defaults and at most 5 min of training. Results land in
# benchmarks/results/ (JSON) and on stdout; nothing here has run on a GPU yet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
timeout 180 "$PY" benchmarks/predict_speed.py --quick --device cuda
timeout 120 "$PY" benchmarks/train_speed.py --quick --device cuda
timeout 420 "$PY" benchmarks/accuracy.py --sets phc --phc-shots 3 --no-partial-rows \
  --preset paper --minutes 5 --device cuda --no-doc

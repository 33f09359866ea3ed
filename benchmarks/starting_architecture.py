"""Which architecture a starting model can have: the time and file size of candidate networks.

#23 lets the starting model be larger than the small preset "if fine-tuning from it still fits
10 CPU minutes and the file stays <= 20 MB". Fine-tuning a new model runs the product's default
steps (:data:`napari_unet.defaults.DEFAULT_STEPS`), so this script measures, for variations of
the small preset's width (base channels) and depth (poolings):

* seconds per whole optimiser step of :class:`napari_unet.training.trainer.Trainer` with the
  product's defaults (batch 4 of augmented tiles at the default tile for the network), after 3
  warm-up steps, mean of ``--steps`` steps; the candidates are timed one after the other on
  synthetic planes (``make_cell_stack``);
* the minutes of a default fine-tuning run at that pace, and whether they fit 10 minutes;
* parameters and the model file's size (float32 weights).

    .venv/bin/python benchmarks/starting_architecture.py          # writes the JSON below

Run it on an otherwise idle machine: times under load are not comparable. The accuracy of a
larger start is measured by ``benchmarks/instances.py --targets paper+depth4`` (an
architecture variant; its leave-one-set-out starting models are made on demand).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import torch
from _machine import cpu_name, write_json

from napari_unet.annotation.schema import training_planes
from napari_unet.defaults import DEFAULT_STEPS
from napari_unet.model import PRESETS, UNet
from napari_unet.sample_data import make_cell_stack
from napari_unet.training.trainer import TrainConfig, Trainer

OUT = Path(__file__).resolve().parent / "results" / "starting_architecture.json"
#: (width, depth) candidates; (16, 3) is the small preset.
CANDIDATES = ((16, 3), (24, 3), (32, 3), (16, 4), (24, 4), (32, 4))
BUDGET_MIN = 10.0


def measure(width: int, depth: int, planes, steps: int) -> dict:
    """Seconds per optimiser step and size of one candidate."""
    config = PRESETS["small"].with_(width=width, depth=depth, in_channels=1, num_classes=2)
    torch.manual_seed(0)
    model = UNet(config)
    parameters = sum(p.numel() for p in model.parameters())
    trainer = Trainer(
        model, planes, TrainConfig(steps=10**6, val_every=0, checkpoint_every=0, seed=0)
    )
    events = trainer.run()
    for _ in range(3):
        next(events)
    start = time.perf_counter()
    for _ in range(steps):
        next(events)
    per_step = (time.perf_counter() - start) / steps
    events.close()
    minutes = per_step * DEFAULT_STEPS / 60
    return {
        "width": width, "depth": depth, "tile": trainer.tile, "parameters": parameters,
        "file_mb": round(parameters * 4 / 1e6, 1), "s_per_step": round(per_step, 3),
        "default_run_min": round(minutes, 1), "fits": minutes <= BUDGET_MIN,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per candidate")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    image, truth = make_cell_stack(4, seed=0)
    planes, _ = training_planes(image, truth)
    rows = []
    for width, depth in CANDIDATES:
        rows.append(measure(width, depth, planes, args.steps))
        print(rows[-1], flush=True)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "command": "python " + " ".join(["benchmarks/starting_architecture.py", *sys.argv[1:]]),
        "default_steps": DEFAULT_STEPS, "rows": rows,
    }  # fmt: skip
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

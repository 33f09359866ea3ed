"""Which architecture a starting model can have: the time and file size of candidate networks.

#23 lets the starting model be larger than the small preset "if fine-tuning from it still fits
10 CPU minutes and the file stays <= 20 MB". Fine-tuning a new model runs the product's default
steps (:data:`napari_unet.defaults.DEFAULT_STEPS`), so this script measures, for variations of
the small preset's width (base channels) and depth (poolings):

* seconds per whole optimiser step of :class:`napari_unet.training.trainer.Trainer` with the
  product's defaults (batch 4 of augmented tiles at the default tile for the network), after 3
  warm-up steps: ``--rounds`` interleaved rounds of ``--steps`` steps of every candidate (the
  order rotating; the best round kept, as ``train_speed.py``, whose ``Contender`` drives them)
  on synthetic planes (``make_cell_stack``);
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
from pathlib import Path

import torch
from _machine import cpu_name, write_json
from train_speed import Contender

from napari_unet.annotation.schema import training_planes
from napari_unet.defaults import DEFAULT_STEPS
from napari_unet.model import PRESETS
from napari_unet.sample_data import make_cell_stack

OUT = Path(__file__).resolve().parent / "results" / "starting_architecture.json"
#: (width, depth) candidates; (16, 3) is the small preset.
CANDIDATES = ((16, 3), (24, 3), (32, 3), (16, 4), (24, 4), (32, 4))
BUDGET_MIN = 10.0


def candidate(width: int, depth: int, planes) -> Contender:
    """A trainer of one candidate with the product's defaults (batch 4, the default tile)."""
    config = PRESETS["small"].with_(width=width, depth=depth, in_channels=1, num_classes=2)
    return Contender(f"w{width} d{depth}", config, None, 4, planes, torch.device("cpu"))


def row(contender: Contender, width: int, depth: int, per_step: float) -> dict:
    """Size of one candidate and the minutes of a default run at its best pace."""
    parameters = sum(p.numel() for p in contender.trainer.model.parameters())
    minutes = per_step * DEFAULT_STEPS / 60
    return {
        "width": width, "depth": depth, "tile": contender.tile, "parameters": parameters,
        "file_mb": round(parameters * 4 / 1e6, 1), "s_per_step": round(per_step, 3),
        "default_run_min": round(minutes, 1), "fits": minutes <= BUDGET_MIN,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per candidate and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best kept)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    image, truth = make_cell_stack(4, seed=0)
    planes, _ = training_planes(image, truth)
    cpu = torch.device("cpu")
    contenders = [candidate(width, depth, planes) for width, depth in CANDIDATES]
    for contender in contenders:  # warm-up
        contender.steps(3, cpu)
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(args.rounds):  # interleaved, the order rotating every round
        for contender in contenders[r:] + contenders[:r]:
            times[contender.name].append(contender.steps(args.steps, cpu) / args.steps)
    rows = []
    for contender, (width, depth) in zip(contenders, CANDIDATES, strict=True):
        contender.close()
        rows.append(row(contender, width, depth, min(times[contender.name])))
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

"""Training speed: optimiser steps of :class:`napari_unet.training.trainer.Trainer`, augmentation,
weight maps.

    python benchmarks/train_speed.py            # best of 3 interleaved rounds (CPU), 5 (GPU)
    python benchmarks/train_speed.py --quick    # 1 round, fewer steps, paper net 1 step

Measured on this device (``resolve_device("auto")``), every contender interleaved with the others
(one round = a few steps of each, the order rotating every round; best round kept):

* training tiles/s of the paper's network at 572 x 572 with batch 1 (the paper's setting) and of
  ``PRESETS["small"]`` at its default tile (output >= 96 px) with batch 1, 2, 4 and 8: whole
  optimiser steps (tile sampling, augmentation, forward, weighted loss, backward, Adam), after
  warm-up steps; synthetic data from ``make_cell_stack`` + ``training_planes``;
* augmentation throughput: ``augment_batch`` (elastic + rotation + flips + gray values, the
  paper's defaults) in tiles/s for 572 x 572 and 188 x 188 tiles;
* weight maps: ``weight_map`` on a 512 x 512 plane with 150 touching instances (the size of a
  training plane), plus the 2048 x 2048 numbers from benchmarks/results/weightmap_speed.json.

Prints a table (ratios first) and writes benchmarks/results/train_speed.json
(train_speed_quick.json with --quick, or the --out path).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_name, write_json

from napari_unet.annotation.schema import training_planes
from napari_unet.annotation.weightmap import WeightMapConfig, weight_map
from napari_unet.devices import resolve_device
from napari_unet.model import PRESETS, UNet, UNetConfig, border
from napari_unet.sample_data import CellSampleConfig, make_cell_stack
from napari_unet.training.augment import AugmentConfig, augment_batch
from napari_unet.training.trainer import TrainConfig, Trainer, default_tile

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine_info(device: torch.device) -> dict:
    cpu = cpu_name()
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Contender:
    """A Trainer whose ``run()`` generator is advanced a few steps at a time."""

    def __init__(
        self, name: str, preset: str | UNetConfig, tile: int | None, batch: int, planes, device
    ) -> None:
        torch.manual_seed(0)
        model = UNet(PRESETS[preset] if isinstance(preset, str) else preset)
        config = TrainConfig(
            steps=10**6,
            batch_size=batch,
            tile=tile,
            val_every=0,
            checkpoint_every=0,
            device=str(device),
            seed=0,
        )
        self.name, self.batch = name, batch
        self.trainer = Trainer(model, planes, config)
        self.tile = self.trainer.tile
        self.events = self.trainer.run()

    def steps(self, n: int, device) -> float:
        """Run ``n`` optimiser steps; returns seconds."""
        sync(device)
        start = time.perf_counter()
        for _ in range(n):
            event = next(self.events)
            assert event.kind == "step", event.kind
        sync(device)
        return time.perf_counter() - start

    def close(self) -> None:
        self.events.close()


def time_augment(tile: int, batch: int, iters: int, device, generator) -> float:
    """Seconds for ``iters`` calls of augment_batch on ``batch`` tiles of ``tile`` x ``tile``."""
    image = torch.rand(batch, 1, tile, tile, device=device)
    target = (torch.rand(batch, tile, tile, device=device) > 0.5).long()
    weight = torch.rand(batch, tile, tile, device=device)
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        augment_batch(image, target, weight, AugmentConfig(), generator)
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer steps")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (CPU 3, GPU 5; quick 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    repeats = args.repeats or (1 if args.quick else (5 if gpu else 3))
    out_path = args.out or RESULTS / (
        "train_speed_quick.json" if args.quick else "train_speed.json"
    )
    print(
        f"device {device}, best of {repeats} interleaved round(s), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )

    images, instances = make_cell_stack(4, CellSampleConfig(shape=(384, 384), n_cells=54), seed=0)
    planes, _ = training_planes(images, instances)

    # (name, preset, tile, batch, steps per round): the paper net takes ~10-30 s a step on a CPU
    paper_steps = 10 if gpu else (1 if args.quick else 2)
    small_steps = 20 if gpu else (2 if args.quick else 4)
    specs = [("paper 572 b1", "paper", 572, 1, paper_steps)]
    for b in (1, 2, 4, 8):
        specs.append(
            (
                f"small b{b}",
                "small",
                None,
                b,
                max(1, small_steps * 2 // b) if not gpu else small_steps,
            )
        )
    contenders = [Contender(n, p, t, b, planes, device) for n, p, t, b, _ in specs]
    per_round = {c.name: s for c, (*_, s) in zip(contenders, specs, strict=False)}
    print("warm-up ...", flush=True)
    for c in contenders:
        c.steps(1 if not gpu else 3, device)

    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    gen = torch.Generator().manual_seed(0)
    aug_specs = [(572, 4, 2 if args.quick else 4), (188, 16, 2 if args.quick else 4)]
    if gpu:
        aug_specs = [(572, 16, 20), (188, 64, 20)]
    for tile, batch, _ in aug_specs:  # warm-up
        time_augment(tile, batch, 1, device, gen)
    aug_times: dict[str, list[float]] = {f"augment {t}": [] for t, _, _ in aug_specs}
    for r in range(repeats):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for c in order:
            n = per_round[c.name]
            times[c.name].append(c.steps(n, device) / (n * c.batch))  # seconds per tile
            print(
                f"  round {r + 1}: {c.name:<14} {n} step(s) "
                f"{times[c.name][-1] * n * c.batch:7.2f} s",
                flush=True,
            )
        for tile, batch, iters in aug_specs:
            aug_times[f"augment {tile}"].append(
                time_augment(tile, batch, iters, device, gen) / (iters * batch)
            )
    for c in contenders:
        c.close()

    # weight map on a training-sized plane (the 2048 x 2048 benchmark is weightmap_speed.py)
    sys.path.insert(0, str(HERE))
    from weightmap_speed import make_instances

    labels = make_instances(512, 150)
    wm_times = []
    for _ in range(1 if args.quick else 3):
        start = time.perf_counter()
        weight_map(labels, WeightMapConfig())
        wm_times.append(time.perf_counter() - start)
    wm_file = RESULTS / "weightmap_speed.json"
    wm_2048 = json.loads(wm_file.read_text()) if wm_file.exists() else None

    rows = {}
    for c in contenders:
        best = min(times[c.name])
        out = c.tile - 2 * border(c.trainer.model.config)
        rows[c.name] = {
            "tile": c.tile,
            "batch": c.batch,
            "tiles_per_s": 1 / best,
            "mpix_per_s_input": c.tile**2 / best / 1e6,
            "mpix_per_s_output": out**2 / best / 1e6,
            "s_per_tile_all": times[c.name],
            "steps_per_round": per_round[c.name],
        }
    for (tile, batch, iters), (name, ts) in zip(aug_specs, aug_times.items(), strict=False):
        rows[name] = {
            "tile": tile,
            "batch": batch,
            "tiles_per_s": 1 / min(ts),
            "mpix_per_s_input": tile**2 / min(ts) / 1e6,
            "mpix_per_s_output": None,
            "s_per_tile_all": ts,
            "calls_per_round": iters,
        }
    small_names = [f"small b{b}" for b in (1, 2, 4, 8)]
    best_small = max(small_names, key=lambda n: rows[n]["tiles_per_s"])
    small_aug = f"augment {aug_specs[1][0]}"
    ratios = {
        f"{best_small} vs small b1, tiles/s": rows[best_small]["tiles_per_s"]
        / rows["small b1"]["tiles_per_s"],
        f"{best_small} vs paper 572 b1, trained (output) MPix/s": rows[best_small][
            "mpix_per_s_output"
        ]
        / rows["paper 572 b1"]["mpix_per_s_output"],
        "augmentation share of a paper 572 b1 step": rows["paper 572 b1"]["tiles_per_s"]
        / rows["augment 572"]["tiles_per_s"],
        f"augmentation share of a {best_small} step (188 px tiles)": rows[best_small]["tiles_per_s"]
        / rows[small_aug]["tiles_per_s"],
    }
    print()
    for key, value in ratios.items():
        print(f"{key}: " + (f"{100 * value:.1f} %" if "share" in key else f"{value:.2f}x"))
    print(
        f"{'contender':<16} {'tile':>5} {'batch':>5} {'tiles/s':>9} "
        f"{'MPix/s in':>9} {'MPix/s out':>10}"
    )
    for name, row in rows.items():
        out_rate = f"{row['mpix_per_s_output']:.3f}" if row["mpix_per_s_output"] else "-"
        print(
            f"{name:<16} {row['tile']:>5} {row['batch']:>5} {row['tiles_per_s']:>9.3f} "
            f"{row['mpix_per_s_input']:>9.3f} {out_rate:>10}"
        )
    print(
        f"weight map 512 x 512, 150 instances: {min(wm_times) * 1e3:.0f} ms "
        f"(best of {len(wm_times)})"
    )
    if wm_2048:
        print(
            f"weight map 2048 x 2048, {wm_2048['n_instances']} instances (weightmap_speed.json, "
            f"{wm_2048['date']}): {wm_2048['timings_s']['weight_map_best']:.2f} s vs reference "
            f"{wm_2048['timings_s']['weight_map_reference']:.1f} s ({wm_2048['ratio']:.0f}x)"
        )
    print(
        f"small preset default tile: {default_tile(UNet(PRESETS['small']))}; "
        f"best batch here: {best_small}"
    )

    result = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": str(device),
        "repeats": repeats,
        "ratios": ratios,
        "results": rows,
        "best_small_batch": rows[best_small]["batch"],
        "weight_map_512_150_s": {"best": min(wm_times), "all": wm_times},
        "weight_map_2048_from": str(wm_file.relative_to(HERE.parent)) if wm_2048 else None,
        "weight_map_2048": (
            {
                k: wm_2048[k]
                for k in (
                    "date",
                    "image_shape",
                    "n_instances",
                    "timings_s",
                    "ratio",
                    "max_abs_diff",
                )
            }
            if wm_2048
            else None
        ),
    }
    return write_json(out_path, result)


if __name__ == "__main__":
    main()

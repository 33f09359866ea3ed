"""Ablations behind the defaults: one training variant at a time, scored on the real sets.

Trains the small U-Net on 3 annotated planes of ISBI 2012 (slices 0-2) or PhC-U373 (3 frames of
sequence 01) with the library's pieces, changing one setting at a time from a JSON object, and
scores the held-out data (ISBI slices 20-29: adapted Rand and pixel error; PhC-U373 sequence 02:
SEG and objects per frame) for each seed threshold of the core splitting. This is how the
defaults in docs/benchmarks.md ("How the defaults were chosen") were measured; the product's own
numbers come from benchmarks/accuracy.py.

    python benchmarks/ablation.py phc '{"balance": true, "steps": 500}'
    python benchmarks/ablation.py isbi '{"steps": 1500, "lr": 0.003}'

Options: balance (class-balance weights w_c), bgs (background tile sampling), steps, batch,
tile, lr, depth, partial. Results are appended to benchmarks/results/ablation.jsonl.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_unet.annotation.schema import AnnotationConfig, training_planes
from napari_unet.annotation.weightmap import WeightMapConfig
from napari_unet.inference.postprocess import PostprocessConfig, instance_labels
from napari_unet.inference.predictor import PredictConfig, predict_plane
from napari_unet.metrics import (
    adapted_rand_error,
    instances_from_binary,
    pixel_error,
    seg_score_planes,
)
from napari_unet.model import PRESETS, UNet
from napari_unet.normalization import normalize_plane
from napari_unet.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "ablation.jsonl"
THRESHOLDS = (None, 0.9, 0.95, 0.98)


def _phc(seq: str):
    frames = sorted((DATA / "phc-u373" / f"{seq}_GT" / "SEG").glob("man_seg*.tif"))
    idx = [int(f.stem[7:]) for f in frames]
    images = [tifffile.imread(DATA / "phc-u373" / seq / f"t{i:03d}.tif") for i in idx]
    return np.stack(images), np.stack([tifffile.imread(f) for f in frames])


def main() -> int:
    dataset, opts = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    if not DATA.is_dir():
        print("shared data not found; nothing to do")
        return 0
    torch.manual_seed(0)
    weights = WeightMapConfig(class_balance=opts.get("balance", False))
    annotation = AnnotationConfig(weight_map=weights, partial=opts.get("partial", False))
    if dataset == "phc":
        images, gt = _phc("01")
        test_images, test_gt = _phc("02")
        pick = np.linspace(0, len(images) - 1, 3).round().astype(int)
        planes, k = training_planes(images[pick], gt[pick], annotation)
        min_size = 300
    else:
        volume = tifffile.imread(DATA / "isbi2012" / "train-volume.tif")
        labels = (tifffile.imread(DATA / "isbi2012" / "train-labels.tif") > 0).astype(np.uint8)
        planes, k = training_planes(volume[:3], labels[:3], annotation)
        test_images, test_labels = volume[20:30], labels[20:30]
        min_size = 0
    arch = PRESETS["small"].with_(num_classes=k, depth=opts.get("depth", 3))
    config = replace(
        TrainConfig(), steps=opts.get("steps", 500), batch_size=opts.get("batch", 4),
        tile=opts.get("tile"), lr=opts.get("lr"), background_sampling=opts.get("bgs", 0.1),
        val_every=0, checkpoint_every=0, device="cpu",
    )  # fmt: skip
    trainer = Trainer(UNet(arch), planes, config, annotation=annotation)
    start = time.perf_counter()
    for _ in trainer.run():
        pass
    seconds = time.perf_counter() - start
    model = trainer.model.eval()
    probs = [predict_plane(model, normalize_plane(p[None]), PredictConfig(device="cpu"))
             for p in test_images]  # fmt: skip
    row = {"set": dataset, **opts, "train_s": round(seconds, 1)}
    for threshold in THRESHOLDS:
        post = PostprocessConfig(seed_threshold=threshold, min_size=min_size,
                                 fill_holes=dataset == "phc")  # fmt: skip
        pred = [instance_labels((p[1] > 0.5).astype(np.uint8), post, probabilities=p)
                for p in probs]  # fmt: skip
        key = f"cores {threshold}" if threshold else "components"
        if dataset == "phc":
            row[key] = {"seg": round(seg_score_planes(np.stack(pred), test_gt), 4),
                        "objects": round(float(np.mean([p.max() for p in pred])), 1)}  # fmt: skip
        else:
            truth = [instances_from_binary(t) for t in test_labels]
            rand = np.mean([adapted_rand_error(p, t) for p, t in zip(pred, truth, strict=True)])
            row[key] = {"rand": round(float(rand), 4)}
    if dataset != "phc":
        row["pixel_error"] = pixel_error(np.stack([p[1] > 0.5 for p in probs]), test_labels > 0)
    print(json.dumps(row), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How the confident-core splitting behaves for a trained network: which threshold suits it.

Trains (or reuses) a model on ISBI 2012 slices with the product's defaults -- from scratch or
fine-tuned from the shipped starting model -- and, for the same probabilities, scores the
post-processing with each core threshold (and none) on the training slices (SEG of the annotated
objects, what a calibration on the user's annotations could see) and on the held-out slices
20-29 (adapted Rand error, SEG, objects per slice). It also scores a per-image threshold, the
q-quantile of the smoothed foreground probability over the predicted foreground (capped at the
default 0.98), and reports how confident the network is inside the reference cells.

This is the measurement behind "Starting model" in docs/benchmarks.md: the fine-tuned network is
less confident on new slices, so a fixed 0.98 cuts its cells apart; and a threshold chosen on
the training slices would have picked "no splitting" for the scratch model too, which costs it
on held-out slices (0.109 -> 0.533), so that calibration was not adopted.

    python benchmarks/core_splitting.py --start starting-model --slices 0
    python benchmarks/core_splitting.py --start scratch --slices 0,1,2

Models are kept in benchmarks/models/core-<start>-<slices>.safetensors (not committed); results
go to benchmarks/results/core_splitting-<start>-<slices>.json.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from napari_unet.annotation.derived import CORE_RATIO, JOIN_WIDE, postprocess_config
from napari_unet.inference.postprocess import instance_labels, semantic_labels
from napari_unet.inference.predictor import predict_plane
from napari_unet.io.modelfile import load_model
from napari_unet.metrics import adapted_rand_error, instances_from_binary, seg_score
from napari_unet.normalization import Normalization, normalize_plane
from napari_unet.training.recipe import TrainingRecipe, prepare_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (None, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
QUANTILES = (0.1, 0.2, 0.3, 0.4)
HELD_OUT = list(range(20, 30))


def _model(volume, labels, start: str, slices: list[int]) -> Path:
    name = f"core-{start}-{'-'.join(map(str, slices))}.safetensors"
    path = ROOT / "benchmarks" / "models" / name
    if not path.exists():
        recipe = TrainingRecipe(planes=tuple((z,) for z in slices), start=start)
        trainer = prepare_run(volume, labels, recipe)
        for _ in trainer.run():
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_model(path)
        print(f"trained {path.name}: {trainer.start_note}", flush=True)
    return path


def _labels(probs, base, threshold):
    """Fixed cores at ``threshold`` (the rule before relative cores); "relative" = the default
    rule, relative cores at ``CORE_RATIO`` capped at 0.98."""
    if isinstance(threshold, str) and threshold.startswith("relative"):
        wide = re.search(r"@([0-9.]+)", threshold)
        shallow = re.search(r"~([0-9.]+)", threshold)
        config = replace(base, method="relative-cores", core_ratio=CORE_RATIO, seed_threshold=0.98,
                         join_wide=float(wide[1]) if wide else (1e-9 if shallow else None),
                         join_shallow=float(shallow[1]) if shallow else None)  # fmt: skip
    else:
        config = replace(base, method="cores", seed_threshold=threshold)
    return instance_labels(semantic_labels(probs), config, probabilities=probs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", choices=["scratch", "starting-model"], default="scratch")
    parser.add_argument("--slices", default="0", help="training slices, e.g. 0,1,2")
    args = parser.parse_args()
    slices = [int(s) for s in args.slices.split(",")]
    data = ROOT.parent / "shared" / "data" / "isbi2012"
    if not data.is_dir():
        print(f"{data} not found: nothing to measure")
        return 0
    volume = tifffile.imread(data / "train-volume.tif")
    labels = (tifffile.imread(data / "train-labels.tif") > 0).astype(np.uint8)
    model, meta = load_model(_model(volume, labels, args.start, slices), device="cpu")
    norm = Normalization.from_dict(meta.normalization)
    probs = {
        z: predict_plane(model, normalize_plane(volume[z][None].astype(np.float32), norm))
        for z in slices + HELD_OUT
    }
    truth = {z: instances_from_binary(labels[z]) for z in probs}
    base = postprocess_config(meta.postprocess)
    rows = []

    def score(name, threshold_of):
        train = [seg_score(_labels(probs[z], base, threshold_of(z)), truth[z]) for z in slices]
        held = [_labels(probs[z], base, threshold_of(z)) for z in HELD_OUT]
        row = {
            "core threshold": name,
            "train SEG": float(np.mean(train)),
            "held-out rand": float(
                np.mean(
                    [adapted_rand_error(p, truth[z]) for p, z in zip(held, HELD_OUT, strict=True)]
                )
            ),
            "held-out SEG": float(
                np.mean([seg_score(p, truth[z]) for p, z in zip(held, HELD_OUT, strict=True)])
            ),
            "objects": float(np.mean([p.max() for p in held])),
            "reference objects": float(np.mean([truth[z].max() for z in HELD_OUT])),
        }
        rows.append(row)
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else str(v) for k, v in row.items()))

    score(f"relative cores at {CORE_RATIO}, no joining", lambda z: "relative")
    for m in (0.8, 1.0, 1.2):
        score(f"relative cores, wide contacts (>= {m}) joined", lambda z, m=m: f"relative@{m}")
    for d in (0.2, 0.3, 0.5):
        score(f"relative cores, shallow contacts (>= {d}) joined", lambda z, d=d: f"relative~{d}")
        score(f"relative cores, contacts wide (>= {JOIN_WIDE}) and shallow (>= {d}) joined",
              lambda z, d=d: f"relative@{JOIN_WIDE}~{d}")  # fmt: skip
    for t in THRESHOLDS:
        score("off" if t is None else str(t), lambda z, t=t: t)

    def smoothed(z):
        foreground = probs[z][list(base.foreground_classes)].sum(0)
        return ndimage.gaussian_filter(foreground, 1.0)

    for q in QUANTILES:
        score(
            f"per image, quantile {q}",
            lambda z, q=q: min(0.98, float(np.quantile(smoothed(z)[smoothed(z) > 0.5], q))),
        )
    confidence = {}
    for name, zs in (("training", slices), ("held-out", HELD_OUT)):
        inner = np.concatenate(
            [smoothed(z)[ndimage.binary_erosion(labels[z] > 0, iterations=2)] for z in zs]
        )
        confidence[name] = {str(t): float((inner > t).mean()) for t in (0.8, 0.9, 0.95, 0.98)}
        print(f"{name} slices: fraction of reference cell interiors above t:", confidence[name])
    out = ROOT / "benchmarks" / "results" / f"core_splitting-{args.start}-{args.slices}.json"
    write_json(out, {"start": args.start, "slices": slices, "rows": rows, "confidence": confidence})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

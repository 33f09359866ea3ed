"""Accuracy on the paper's real data, with few-shot curves.

ISBI 2012 EM: train on slices 0..n-1 (n from --isbi-shots, at most 20), evaluate slices 20-29:
pixel error and adapted Rand error (connected components of the cell regions, ISBI convention).
PhC-U373: train on n annotated frames of sequence 01, evaluate the CTC SEG score on all
annotated frames of sequence 02.

Writes benchmarks/results/accuracy.json, docs/images/accuracy-few-shot.png and the "Accuracy"
section of docs/benchmarks.md. Data is read from $NAPARI_UNET_DATA or ../shared/data; the
script exits cleanly when it is absent.

    python benchmarks/accuracy.py                      # CPU: small preset, default shots
    python benchmarks/accuracy.py --preset paper --steps 2000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_unet.annotations import AnnotationConfig, training_planes
from napari_unet.batch import SegmentConfig, segment_stack
from napari_unet.metrics import adapted_rand_error, instances_from_binary, pixel_error, seg_score_planes
from napari_unet.model import PRESETS, UNet
from napari_unet.predict import PredictConfig
from napari_unet.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "accuracy.json"
PLOT = ROOT / "docs" / "images" / "accuracy-few-shot.png"
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"
PAPER = {"isbi_rand": 0.0382, "isbi_pixel": 0.0611, "phc_seg": 0.9203}


def data_root() -> Path | None:
    for cand in (os.environ.get("NAPARI_UNET_DATA"), ROOT.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def train(image, labels, planes, args, mode="instances") -> tuple[Trainer, float]:
    annotation = AnnotationConfig(mode=mode)
    train_set, k = training_planes(image, labels, annotation, planes)
    model = UNet(PRESETS[args.preset].with_(num_classes=k))
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, device=args.device,
                         seed=args.seed, val_every=0, checkpoint_every=0)
    trainer = Trainer(model, train_set, config, annotation=annotation)
    start = time.perf_counter()
    for _ in trainer.run():
        pass
    return trainer, time.perf_counter() - start


def isbi(root: Path, args) -> list[dict]:
    volume = tifffile.imread(root / "isbi2012" / "train-volume.tif")
    labels = (tifffile.imread(root / "isbi2012" / "train-labels.tif") > 0).astype(np.uint8)
    held = list(range(20, 30))
    truth = np.stack([instances_from_binary(labels[z]) for z in held])
    rows = []
    for n in args.isbi_shots:
        trainer, seconds = train(volume, labels, [(z,) for z in range(n)], args)
        semantic = segment_stack(trainer.model, trainer.metadata(), volume[held],
                                 SegmentConfig(predict=PredictConfig(device=args.device), instances=False))
        pred = np.stack([instances_from_binary(s > 0) for s in semantic])
        row = {"set": "isbi2012", "shots": n, "steps": args.steps, "train_s": round(seconds, 1),
               "pixel_error": pixel_error(semantic > 0, labels[held] > 0),
               "rand_error": float(np.mean([adapted_rand_error(p, t) for p, t in zip(pred, truth)]))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def phc(root: Path, args) -> list[dict]:
    def load(seq: str):
        gt_dir = root / "phc-u373" / f"{seq}_GT" / "SEG"
        frames = sorted(gt_dir.glob("man_seg*.tif"))
        idx = [int(f.stem[7:]) for f in frames]
        images = np.stack([tifffile.imread(root / "phc-u373" / seq / f"t{i:03d}.tif") for i in idx])
        return images, np.stack([tifffile.imread(f) for f in frames])

    train_images, train_gt = load("01")
    test_images, test_gt = load("02")
    rows = []
    for n in args.phc_shots:
        pick = np.linspace(0, len(train_images) - 1, n).round().astype(int) if n < len(train_images) else np.arange(len(train_images))
        trainer, seconds = train(train_images[pick], train_gt[pick], None, args)
        pred = segment_stack(trainer.model, trainer.metadata(), test_images,
                             SegmentConfig(predict=PredictConfig(device=args.device)))
        row = {"set": "phc-u373", "shots": int(len(pick)), "steps": args.steps, "train_s": round(seconds, 1),
               "seg": seg_score_planes(pred, test_gt)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    isbi_rows = [r for r in rows if r["set"] == "isbi2012"]
    phc_rows = [r for r in rows if r["set"] == "phc-u373"]
    if isbi_rows:
        ax = axes[0]
        ax.plot([r["shots"] for r in isbi_rows], [r["rand_error"] for r in isbi_rows], "o-", label="adapted Rand error")
        ax.plot([r["shots"] for r in isbi_rows], [r["pixel_error"] for r in isbi_rows], "s-", label="pixel error")
        ax.axhline(PAPER["isbi_rand"], ls="--", c="C0", lw=0.8, label="paper Rand (test set)")
        ax.axhline(PAPER["isbi_pixel"], ls="--", c="C1", lw=0.8, label="paper pixel (test set)")
        ax.set(xlabel="annotated training slices", ylabel="error (lower is better)", title="ISBI 2012, slices 20-29")
        ax.legend(fontsize=7)
    if phc_rows:
        ax = axes[1]
        ax.plot([r["shots"] for r in phc_rows], [r["seg"] for r in phc_rows], "o-", c="C2", label="SEG (ours)")
        ax.axhline(PAPER["phc_seg"], ls="--", c="C2", lw=0.8, label="paper (test set)")
        ax.set(xlabel="annotated training frames (seq. 01)", ylabel="SEG (higher is better)", title="PhC-U373, sequence 02", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def write_doc(rows: list[dict], meta: dict) -> None:
    lines = [START, "", f"Measured {meta['date']} on {meta['machine']}, device {meta['device']}, preset "
             f"`{meta['preset']}`, {meta['steps']} steps per run, batch {meta['batch_size']}. Command: "
             f"`{meta['command']}`. Paper figures are on the official test sets; ours on held-out "
             "training data (the split differs).", ""]
    isbi_rows = [r for r in rows if r["set"] == "isbi2012"]
    if isbi_rows:
        lines += ["| ISBI 2012: training slices | adapted Rand error | pixel error | train time |",
                  "|---|---|---|---|"]
        lines += [f"| {r['shots']} | {r['rand_error']:.4f} | {r['pixel_error']:.4f} | {r['train_s']:.0f} s |" for r in isbi_rows]
        lines += [f"| paper (test set) | {PAPER['isbi_rand']} | {PAPER['isbi_pixel']} | ~10 h GPU |", ""]
    phc_rows = [r for r in rows if r["set"] == "phc-u373"]
    if phc_rows:
        lines += ["| PhC-U373: training frames (seq. 01) | SEG on seq. 02 | train time |", "|---|---|---|"]
        lines += [f"| {r['shots']} | {r['seg']:.4f} | {r['train_s']:.0f} s |" for r in phc_rows]
        lines += [f"| paper (test set) | {PAPER['phc_seg']} | |", ""]
    lines += ["![few-shot accuracy](images/accuracy-few-shot.png)", "", END]
    block = "\n".join(lines)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n## Accuracy\n\nfilled by benchmarks/accuracy.py\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    elif "filled by benchmarks/accuracy.py" in text:
        text = text.replace("filled by benchmarks/accuracy.py", block, 1)
    else:
        text += "\n## Accuracy\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="isbi,phc")
    parser.add_argument("--isbi-shots", default="1,3,20")
    parser.add_argument("--phc-shots", default="1,3,15")
    parser.add_argument("--preset", choices=["small", "paper"], default="small")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    args.isbi_shots = [int(s) for s in args.isbi_shots.split(",") if s]
    args.phc_shots = [int(s) for s in args.phc_shots.split(",") if s]
    root = data_root()
    if root is None:
        print("shared data not found (set NAPARI_UNET_DATA); nothing to do")
        return 0
    from napari_unet.devices import resolve_device

    device = resolve_device(args.device)
    args.device = str(device)
    rows: list[dict] = []
    if "isbi" in args.sets:
        rows += isbi(root, args)
    if "phc" in args.sets:
        rows += phc(root, args)
    meta = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores", "device": torch.cuda.get_device_name() if device.type == "cuda" else str(device),
            "preset": args.preset, "steps": args.steps, "batch_size": args.batch_size,
            "command": " ".join(["python benchmarks/accuracy.py", *sys.argv[1:]]), "torch": torch.__version__}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(rows)
    if not args.no_doc:
        write_doc(rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Instances on every shared set: the default (interiors) beside the paper's two classes.

Each run is what ``napari-unet train IMAGE LABELS --out M`` + ``predict --instances`` do: a
:class:`~napari_unet.training.recipe.TrainingRecipe` with the product's defaults (only the seed,
the instance representation and, for screening, ``--steps`` change), segmented with the
post-processing the model file records. No option depends on the set.

Sets and measures (splits from ../shared/data/README.md):

* ``isbi``: ISBI 2012 EM, train slices 0..n-1, score slices 20-29: adapted Rand error of the
  instances (lower is better) and the foreground pixel error.
* ``phc``: PhC-U373, n frames of sequence 01 (evenly spread), SEG on the 19 frames of 02.
* ``usiigaci``: Usiigaci phase contrast, images 01..n, SEG (and AP@0.5) on images 04-16.
* ``gowt1``: GOWT1 fluorescent nuclei, t01..n, AP@0.5 (and SEG) on the last 3.
* ``gbm40``: GBM40 H&E nuclei (RGB), images 01..n, AP@0.5 (and SEG) on 04-20.
* ``lucchi``: Lucchi EM mitochondria, slices 001..n, AP@0.5 (and SEG) on 004-020.

Rows accumulate in ``benchmarks/results/instances.json`` (a run that repeats a row's set,
planes, targets, seed and steps replaces it); ``--table`` rewrites the "Instances" section of
docs/benchmarks.md from them and ``--pictures`` draws one failure picture per set
(docs/images/instances-<set>.png: reference cyan, ours yellow, on the worst scored plane).

    python benchmarks/instances.py --sets all --targets interiors,paper --seeds 0 --steps 400
    python benchmarks/instances.py --sets phc,isbi --seeds 0,1,2           # defaults, 3 seeds
    python benchmarks/instances.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from datetime import date
from itertools import product
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_unet.annotation.schema import AnnotationConfig
from napari_unet.inference.batch import SegmentConfig, segment_stack
from napari_unet.inference.predictor import PredictConfig
from napari_unet.io.modelfile import load_model
from napari_unet.metrics import (
    adapted_rand_error,
    instances_from_binary,
    matching,
    pixel_error,
    seg_score_planes,
)
from napari_unet.training.recipe import TrainingRecipe, prepare_run
from napari_unet.training.starting_model import STARTING_ARCHITECTURE, STARTING_MODEL_VARIABLE
from napari_unet.training.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "instances.json"
PREDICTIONS = ROOT / "benchmarks" / "results" / "instances-predictions"  # not committed
IMAGES = ROOT / "docs" / "images"
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- instances:start -->", "<!-- instances:end -->"
STARTING_START, STARTING_END = "<!-- starting:start -->", "<!-- starting:end -->"
SETS = ("isbi", "phc", "usiigaci", "gowt1", "gbm40", "lucchi")
#: The sets a shipped starting model may be trained on (scripts/make_starting_model.py says why).
STARTING_SETS = ("isbi", "phc", "usiigaci", "gowt1")
MODELS = ROOT / "benchmarks" / "models"  # leave-one-set-out starting models (not committed)
SCRIPT = ROOT / "scripts" / "make_starting_model.py"
STARTS = ("scratch", "starting-model")
MEASURE = {"isbi": "rand_error", "phc": "seg", "usiigaci": "seg", "gowt1": "ap50",
           "gbm40": "ap50", "lucchi": "ap50"}  # fmt: skip


def data_root() -> Path | None:
    for cand in (os.environ.get("NAPARI_UNET_DATA"), ROOT.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def _folder(root: Path, name: str):
    images = sorted((root / name / "images").glob("*.tif"))
    image = np.stack([tifffile.imread(p) for p in images])
    labels = np.stack([tifffile.imread(root / name / "labels" / p.name) for p in images])
    return image, labels


def _phc(root: Path, seq: str):
    frames = sorted((root / "phc-u373" / f"{seq}_GT" / "SEG").glob("man_seg*.tif"))
    idx = [int(f.stem[7:]) for f in frames]
    images = np.stack([tifffile.imread(root / "phc-u373" / seq / f"t{i:03d}.tif") for i in idx])
    return images, np.stack([tifffile.imread(f) for f in frames]).astype(np.int32)


def load(root: Path, name: str, shots: int):
    """(train image, train labels, test image, test reference instances) of a set."""
    if name == "isbi":
        volume = tifffile.imread(root / "isbi2012" / "train-volume.tif")
        binary = (tifffile.imread(root / "isbi2012" / "train-labels.tif") > 0).astype(np.uint8)
        truth = np.stack([instances_from_binary(binary[z]) for z in range(20, 30)])
        return volume[:shots], binary[:shots], volume[20:30], truth
    if name == "phc":
        train_img, train_gt = _phc(root, "01")
        pick = np.linspace(0, len(train_img) - 1, shots).round().astype(int)
        test_img, test_gt = _phc(root, "02")
        return train_img[pick], train_gt[pick], test_img, test_gt
    folder = {"usiigaci": "usiigaci-phc", "gowt1": "gowt1-fluo", "gbm40": "gbm40-he",
              "lucchi": "lucchi-mito-em"}[name]  # fmt: skip
    image, labels = _folder(root, folder)
    return image[:shots], labels[:shots], image[3:], labels[3:].astype(np.int32)


def grey(images: np.ndarray) -> np.ndarray:
    """RGB planes (..., Y, X, 3) as their channel mean, the one-channel starting model's input;
    other planes as they are."""
    return images.astype(np.float32).mean(axis=-1) if images.ndim == 4 else images


def every_plane(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Every annotated plane of a set (training and scored ones), instances as labels; for the
    starting models (scripts/make_starting_model.py). PhC-U373's frames are partial annotations."""
    if name == "isbi":
        volume = tifffile.imread(root / "isbi2012" / "train-volume.tif")
        membranes = tifffile.imread(root / "isbi2012" / "train-labels.tif")
        return volume, np.stack([instances_from_binary(m > 0) for m in membranes])
    if name == "phc":
        (a, la), (b, lb) = _phc(root, "01"), _phc(root, "02")
        return np.concatenate([a, b]), np.concatenate([la, lb])
    train_img, train_lab, test_img, truth = load(root, name, 3)
    return np.concatenate([train_img, test_img]), np.concatenate([train_lab, truth])


def score(name: str, pred: np.ndarray, truth: np.ndarray) -> dict:
    per_plane = [matching(p, t, 0.5) for p, t in zip(pred, truth, strict=True)]
    tp, fp, fn = (sum(m[k] for m in per_plane) for k in ("tp", "fp", "fn"))
    out = {
        "ap50": tp / max(tp + fp + fn, 1),
        "seg": seg_score_planes(pred, truth),
        "objects": float(np.mean([len(np.unique(p)) - 1 for p in pred])),
        "ref_objects": float(np.mean([len(np.unique(t)) - 1 for t in truth])),
        "per_plane_ap50": [round(m["ap"], 4) for m in per_plane],
    }
    if name == "isbi":
        out["rand_error"] = float(
            np.mean([adapted_rand_error(p, t) for p, t in zip(pred, truth, strict=True)])
        )
        out["pixel_error"] = pixel_error(pred > 0, truth > 0)
    return out


def starting_file(name: str, architecture: dict | None = None) -> Path:
    """The starting model that never saw set ``name``: the shipped recipe without that set (the
    shipped recipe itself for sets it does not take), with ``architecture``'s changes to the
    small preset (``{"width": 16, "depth": 4}``); made by the script when missing."""
    left_out = ["--leave-out", name] if name in STARTING_SETS else []
    changes = architecture or {}
    suffix = "".join(f"-{key[0]}{value}" for key, value in sorted(changes.items()))
    stem = f"starting-{'without-' + name if left_out else 'shipped-sets'}{suffix}"
    path = MODELS / f"{stem}.safetensors"
    if not path.exists():
        print("making", path, file=sys.stderr, flush=True)
        options = [f"--{key}={value}" for key, value in sorted(changes.items())]
        command = [sys.executable, str(SCRIPT), "--out", str(path), *left_out, *options]
        subprocess.run(command, check=True)
    return path


def variants(targets: str) -> tuple[str, dict, dict]:
    """``paper+warmup0.1+width16`` -> the targets, TrainConfig changes and architecture
    changes (``width``, ``depth``: to the small preset, and to the starting model's)."""
    base, _, rest = targets.partition("+")
    training: dict = {}
    architecture: dict = {}
    for part in filter(None, rest.split("+")):  # ema0.99, warmup0.1, clip1, lr0.001, depth4
        knob = part.rstrip("0123456789.")
        value = float(part[len(knob) :])
        if knob in ("width", "depth"):
            architecture[knob] = int(value)
        else:
            training[knob] = value
    return base, training, architecture


def zero_shot(root: Path, name: str, targets: str, seed: int) -> dict:
    """The leave-that-set-out starting model with no fine-tuning, read by the rule it records."""
    _, _, test_img, truth = load(root, name, 1)
    test_img = grey(test_img)  # RGB: the starting model takes one channel
    _, _, architecture = variants(targets)
    model, metadata = load_model(starting_file(name, architecture), device="cpu")
    start = time.perf_counter()
    pred = np.asarray(segment_stack(model, metadata, test_img, SegmentConfig()))
    return {
        "set": name, "shots": 0, "targets": targets, "start": "starting-model", "seed": seed,
        "steps": 0, "train_s": 0.0, "predict_s": round(time.perf_counter() - start, 1),
        **score(name, pred, truth),
    }  # fmt: skip


def run(root: Path, name: str, shots: int, targets: str, seed: int, args) -> dict:
    if shots == 0:
        return zero_shot(root, name, targets, seed)
    train_img, train_lab, test_img, truth = load(root, name, shots)
    fine_tune = args.start == "starting-model"
    # variants of the training are written after the targets: "paper+ema0.99+clip1+depth4"
    base, changes, architecture = variants(targets)
    if fine_tune:  # the product's path, with another file (as a lab's own starting model)
        os.environ[STARTING_MODEL_VARIABLE] = str(starting_file(name, architecture))
    training = replace(TrainConfig(), seed=seed, device=args.device, **changes)
    if args.steps:
        training = replace(training, steps=args.steps)
    recipe = TrainingRecipe(
        annotation=AnnotationConfig(instance_targets=base), training=training,
        architecture=STARTING_ARCHITECTURE.with_(**architecture),
        start="starting-model" if fine_tune else "scratch",
    )  # fmt: skip
    trainer = prepare_run(train_img, train_lab, recipe)
    if fine_tune and trainer.parent_model is None:
        raise RuntimeError(f"{name}: not fine-tuned ({trainer.start_note})")
    start, cpu = time.perf_counter(), time.process_time()
    for _ in trainer.run():
        pass
    train_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    config = SegmentConfig(predict=PredictConfig(device=str(trainer.device)))
    probs: dict[tuple, np.ndarray] = {}
    start = time.perf_counter()
    pred = np.asarray(
        segment_stack(
            trainer.model, trainer.metadata(), test_img, config,
            on_plane=lambda index, p: probs.__setitem__(index, p.astype(np.float16)),
        )
    )  # fmt: skip
    predict_s = time.perf_counter() - start
    PREDICTIONS.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{shots}-{targets}{'-ft' if fine_tune else ''}-{seed}-{trainer.step}"
    np.save(PREDICTIONS / f"{stem}.npy", pred)
    # network outputs of the scored and of the annotated planes: post-processing is screened on
    # them without training again (benchmarks/instance_methods.py)
    seen: dict[tuple, np.ndarray] = {}
    segment_stack(
        trainer.model, trainer.metadata(), train_img, config,
        on_plane=lambda index, p: seen.__setitem__(index, p.astype(np.float16)),
    )  # fmt: skip
    np.savez_compressed(
        PREDICTIONS / f"{stem}-probs.npz",
        test=np.stack([probs[k] for k in sorted(probs)]),
        train=np.stack([seen[k] for k in sorted(seen)]),
        train_labels=np.asarray(train_lab),
        metadata=trainer.metadata().to_json(),
    )
    return {
        "set": name, "shots": shots, "targets": targets, "start": args.start, "seed": seed,
        "steps": trainer.step,
        "train_s": round(train_s, 1), "cpu_s": round(cpu_s, 1), "predict_s": round(predict_s, 1),
        "derived": trainer.derived, **score(name, pred, truth),
    }  # fmt: skip


def _key(row: dict) -> tuple:
    start = row.get("start", "scratch")
    return (row["set"], row["shots"], row["targets"], start, row["seed"], row["steps"])


def save(row: dict) -> None:
    rows = json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []
    rows = [r for r in rows if _key(r) != _key(row)] + [row]
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def _stats(values: list[float], lower_is_better: bool) -> str:
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.3f}"
    worst = max(values) if lower_is_better else min(values)
    return f"{mean:.3f} ± {np.std(values):.3f} (worst {worst:.3f})"


def table(rows: list[dict]) -> str:
    """The markdown of the "Instances" section's table, one line per set, planes and steps."""
    lines = [
        "| set | measure | planes | steps | interiors (3 classes) | paper (2 classes, the "
        "default, read as the product read it then) | seeds | objects / ref. (paper) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        if r.get("start", "scratch") != "scratch":
            continue
        groups.setdefault((r["set"], r["shots"], r["steps"]), {}).setdefault(
            r["targets"], []
        ).append(r)
    order = {name: i for i, name in enumerate(SETS)}
    for (name, shots, steps), by in sorted(
        groups.items(), key=lambda kv: (order[kv[0][0]],) + kv[0][1:]
    ):
        measure = MEASURE[name]
        low = measure == "rand_error"
        cells = []
        for targets in ("interiors", "paper"):
            got = by.get(targets, [])
            cells.append(_stats([r[measure] for r in got], low) if got else "–")
        seeds = sorted({r["seed"] for g in by.values() for r in g})
        mine = by.get("paper", [])
        objects = (
            f"{np.mean([r['objects'] for r in mine]):.0f} / {mine[0]['ref_objects']:.0f}"
            if mine
            else "–"
        )
        label = "adapted Rand (lower better)" if low else measure.replace("ap50", "AP@0.5").upper()
        label = label.replace("AP@0.5", "AP@0.5").replace("SEG", "SEG")
        lines.append(
            f"| {name} | {label} | {shots} | {steps} | {cells[0]} | {cells[1]} | "
            f"{', '.join(map(str, seeds))} | {objects} |"
        )
    return "\n".join(lines)


def starting_table(rows: list[dict], steps: int = 400, fine_tuned: str = "paper") -> str:
    """The markdown of the starting model's table: per set, the leave-that-set-out starting
    model with no fine-tuning, and from scratch against fine-tuned (the rows whose targets are
    ``fine_tuned``, e.g. ``paper+lr0.0003``) at 1 and 3 planes, after ``steps`` steps."""
    lines = [
        "| set | measure | no fine-tuning | 1 plane: scratch | 1 plane: fine-tuned | "
        "3 planes: scratch | 3 planes: fine-tuned |",
        "|---|---|---|---|---|---|---|",
    ]
    methods = ROOT / "benchmarks" / "results" / "instance_methods.json"
    rescored = {  # runs scored before the current default, read again with it from stored outputs
        (m["run"], m["set"]): m
        for m in (json.loads(methods.read_text()) if methods.exists() else [])
        if m["candidate"] == "default"
    }
    for name in SETS:
        measure = MEASURE[name]
        low = measure == "rand_error"
        cells = []
        for shots, start in ((0, "starting-model"), (1, "scratch"), (1, "starting-model"),
                             (3, "scratch"), (3, "starting-model")):  # fmt: skip
            targets = fine_tuned if start == "starting-model" and shots else "paper"
            got = [
                rescored.get((f"{name}-{shots}-paper-{r['seed']}-{r['steps']}", name), r)[measure]
                if start == "scratch" else r[measure]
                for r in rows
                if r["set"] == name and r["targets"] == targets and r["shots"] == shots
                and r.get("start", "scratch") == start and r["steps"] == (steps if shots else 0)
            ]  # fmt: skip
            cells.append(_stats(got, low) + f" [{len(got)}]" if got else "–")
        if any(c != "–" for c in cells[1:]) or (steps == 400 and cells[0] != "–"):
            label = "adapted Rand (lower better)" if low else measure.replace("ap50", "AP@0.5")
            lines.append(f"| {name} | {label.upper() if not low else label} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def _replace_block(text: str, start: str, end: str, block: str, heading: str) -> str:
    if start in text and end in text:
        return text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    return text + f"\n## {heading}\n\n" + block + "\n"


def write_doc(rows: list[dict]) -> None:
    meta = json.loads(RESULTS.read_text())["meta"]
    block = "\n".join([
        START, "",
        f"Written {date.today().isoformat()} from benchmarks/results/instances.json "
        f"({meta['machine']}, "
        f"CPU, torch {meta['torch']}); mean ± standard deviation over seeds (worst seed).",
        "", table(rows), "", END,
    ])  # fmt: skip
    starting = "\n".join([
        STARTING_START, "",
        f"Written {date.today().isoformat()} from benchmarks/results/instances.json "
        f"({meta['machine']}, CPU, torch {meta['torch']}): the default (two classes, relative "
        "cores, cut cells joined), 400 training steps; mean ± standard deviation over seeds "
        "(worst seed) [seeds]. The starting model of each row never saw that set "
        "(benchmarks/models/, `scripts/make_starting_model.py`). Fine-tuned: the default, "
        "Adam at 3e-3 as from scratch.",
        "", starting_table(rows), "",
        "Before: fine-tuned at the tenfold lower rate it had until 2026-12-07 (3e-4, rows "
        "`paper+lr0.0003`); scratch and no fine-tuning as above.",
        "", starting_table(rows, fine_tuned="paper+lr0.0003"), "",
        "The product's 2000 steps (what `train` does without options), where measured:",
        "", starting_table(rows, steps=2000), "", STARTING_END,
    ])  # fmt: skip
    text = _replace_block(DOC.read_text(), START, END, block, "Instances")
    text = _replace_block(text, STARTING_START, STARTING_END, starting, "Starting model, per set")
    DOC.write_text(text)


def pictures(root: Path, rows: list[dict]) -> None:
    """One failure picture per set: the worst scored plane of the default (paper) run of the
    most steps, lowest seed."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    for name in SETS:
        mine = [r for r in rows if r["set"] == name and r["targets"] == "paper"
                and r.get("start", "scratch") == "scratch" and r["shots"] > 0]  # fmt: skip
        if not mine:
            continue
        r = max(mine, key=lambda r: (r["steps"], -r["seed"]))
        path = PREDICTIONS / f"{name}-{r['shots']}-paper-{r['seed']}-{r['steps']}.npy"
        if not path.exists():
            continue
        pred = np.load(path)
        _, _, test_img, truth = load(root, name, r["shots"])
        per_plane = r.get("per_plane_ap50") or [0.0]
        k = int(np.argmin(per_plane))
        gray = test_img[k].astype(np.float32)
        if gray.ndim == 2:
            gray = np.repeat(gray[..., None], 3, axis=-1)
        lo, hi = np.percentile(gray, [1, 99.8])
        rgb = np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb[find_boundaries(truth[k], mode="inner")] = (0.0, 0.9, 1.0)
        rgb[find_boundaries(pred[k], mode="inner")] = (1.0, 0.85, 0.0)
        IMAGES.mkdir(parents=True, exist_ok=True)
        imsave(IMAGES / f"instances-{name}.png", (rgb * 255).astype(np.uint8), check_contrast=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="all", help="comma list of " + ", ".join(SETS))
    parser.add_argument(
        "--shots",
        default="3",
        help="annotated planes, a comma list (0: none, the starting model as it is; default 3)",
    )
    parser.add_argument(
        "--start",
        choices=STARTS,
        default="scratch",
        help="from random weights, or fine-tuned from a starting model that "
        "never saw the set (benchmarks/models/, made when missing)",
    )
    parser.add_argument("--targets", default="interiors,paper")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, help="screening: fewer steps than the default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--table", action="store_true", help="only rewrite the doc's table")
    parser.add_argument("--pictures", action="store_true", help="also draw failure pictures")
    args = parser.parse_args()
    root = data_root()
    if root is None:
        print("shared data not found (set NAPARI_UNET_DATA); nothing to measure", file=sys.stderr)
        return 0
    if not args.table:
        sets = SETS if args.sets == "all" else tuple(args.sets.split(","))
        shot_counts = [int(n) for n in args.shots.split(",")]
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in sets:
                for targets, shots in product(args.targets.split(","), shot_counts):
                    row = run(root, name, shots, targets, seed, args)
                    save(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "per_plane_ap50"}),
                          flush=True)  # fmt: skip
    rows = json.loads(RESULTS.read_text())["rows"]
    write_doc(rows)
    if args.pictures:
        pictures(root, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy with the product's defaults: what `napari-unet train` + `predict --instances` give.

Every shared set (the six of ../shared/data, 3 seeds, 0/1/3 planes, from scratch and from a
starting model that never saw the set) is measured by ``benchmarks/instances.py``; this script
keeps the first two sets and the demo's synthetic set at the product's full 2000 steps, with
learning curves and 15/20-plane rows.

Every run goes through :func:`napari_unet.training.recipe.prepare_run` with ``TrainingRecipe()``
defaults
(only the seed and, with ``--steps``/``--minutes``, the length change) and is segmented by
:func:`napari_unet.inference.batch.segment_stack` with ``SegmentConfig()``, i.e. the
post-processing the
model file recommends. No per-dataset option exists here.

* ISBI 2012 EM: train on slices 0..n-1, score slices 20-29: adapted Rand error of our instance
  labels (ISBI convention: predicted background pixels are singletons) and pixel error of the
  foreground.
* PhC-U373: train on n frames of sequence 01 (evenly spread), score the CTC SEG on all 19
  annotated frames of sequence 02, and objects per frame against reference objects per frame.
  Its reference frames are partially annotated; a second row per shot count trains with
  ``--partial`` (``AnnotationConfig(partial=True)``), which is how a user says so.
* synthetic (the demo's data): 2 annotated planes of ``make_cell_stack(8)``, SEG on the other 6.

Where a run starts (``--start``): ``scratch`` (random weights, as ``train --from-scratch``) or
``starting-model``: fine-tuned, as ``train`` does without options, but from a starting model
that has *not* seen the set scored -- ``benchmarks/models/starting-without-<set>.safetensors``,
made by ``scripts/make_starting_model.py --leave-out <set>`` (run here when missing). The
synthetic set uses the shipped starting model (its synthetic training data come from the same
generator, with other seeds and looks). ``both`` runs each.

Each run also records a learning curve: the model is scored at a quarter, half and
three-quarters of its run (snapshots of the same run, not shorter runs); ``--no-curves`` scores
only the final model. ``--results FILE`` and ``--threads N`` let two runs share a machine; join
their rows with ``--from-rows``.

Writes benchmarks/results/accuracy.json, docs/images/accuracy-curves.png,
docs/images/accuracy-failures.png and the "Accuracy" section of docs/benchmarks.md.

    python benchmarks/accuracy.py                       # CPU, defaults, all sets
    python benchmarks/accuracy.py --sets phc --phc-shots 3 --seeds 0,1
    python benchmarks/accuracy.py --sets isbi,phc --isbi-shots 1,3 --phc-shots 1,3 \
        --start both --no-partial-rows
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from importlib.resources import files
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_unet.annotation.schema import AnnotationConfig
from napari_unet.inference.batch import SegmentConfig, segment_stack
from napari_unet.inference.predictor import PredictConfig
from napari_unet.metrics import (
    adapted_rand_error,
    instances_from_binary,
    pixel_error,
    seg_score_planes,
)
from napari_unet.model import PRESETS
from napari_unet.sample_data import make_cell_stack
from napari_unet.training.recipe import TrainingRecipe, prepare_run
from napari_unet.training.starting_model import STARTING_MODEL_FILE, STARTING_MODEL_VARIABLE
from napari_unet.training.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "accuracy.json"
CURVES = ROOT / "docs" / "images" / "accuracy-curves.png"
FAILURES = ROOT / "docs" / "images" / "accuracy-failures.png"
DOC = ROOT / "docs" / "benchmarks.md"
SCRATCH = Path(tempfile.gettempdir()) / "napari-unet-accuracy"  # predictions for the pictures
MODELS = ROOT / "benchmarks" / "models"  # leave-one-set-out starting models (not committed)
START, END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"
REFERENCE = {  # paper (2015) and best published (Cell Tracking Challenge leaderboard)
    "isbi_rand": 0.0382, "isbi_pixel": 0.0611, "phc_seg_paper": 0.9203, "phc_seg_best": 0.931,
}  # fmt: skip


def data_root() -> Path | None:
    for cand in (os.environ.get("NAPARI_UNET_DATA"), ROOT.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


_ROWS_SO_FAR: list[dict] = []


def record(row: dict) -> dict:
    """Print a result row and keep every row so far on disk (a long run that is stopped early
    still leaves its finished rows in benchmarks/results/accuracy.partial.json)."""
    print(json.dumps(row), flush=True)
    _ROWS_SO_FAR.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".partial.json").write_text(json.dumps(_ROWS_SO_FAR, indent=1))
    return row


def starting_model_without(name: str) -> Path:
    """The starting model that never saw set ``name`` (made by the script when missing)."""
    path = MODELS / f"starting-without-{name}.safetensors"
    if not path.exists():
        script = ROOT / "scripts" / "make_starting_model.py"
        command = [sys.executable, str(script), "--leave-out", name, "--out", str(path)]
        print("making", path, file=sys.stderr, flush=True)
        subprocess.run(command, check=True)
    return path


def starts(args, name: str) -> list[tuple[str, Path | None]]:
    """(label, starting model file or None for scratch) of each start asked for, for a set."""
    out = []
    if args.start in ("scratch", "both"):
        out.append(("scratch", None))
    if args.start in ("starting-model", "both"):
        if name == "synthetic":
            shipped = Path(str(files("napari_unet") / "models" / STARTING_MODEL_FILE))
            out.append(("starting model (shipped)", shipped))
        else:
            out.append((f"starting model without {name}", starting_model_without(name)))
    return out


def train(image, labels, args, seed: int, planes=None, partial=False, init=None):
    """Train with the defaults; returns the trainer, seconds and snapshots for the curve.

    ``init``: the starting model file to fine-tune (None: from scratch), taken through the
    product's path as a lab's own starting model (``$NAPARI_UNET_STARTING_MODEL``), so that it
    is fine-tuned exactly as ``train`` does without options (rate included)."""
    training = replace(TrainConfig(), seed=seed, device=args.device)
    if init is not None:
        os.environ[STARTING_MODEL_VARIABLE] = str(init)
    if args.steps:
        training = replace(training, steps=args.steps)
    if args.minutes:
        training = replace(training, minutes=args.minutes)
    recipe = TrainingRecipe(
        annotation=AnnotationConfig(partial=partial), training=training,
        architecture=PRESETS[args.preset],
        planes=tuple(planes) if planes is not None else None,
        start="scratch" if init is None else "starting-model",
    )  # fmt: skip
    trainer = prepare_run(image, labels, recipe)
    if init is not None and trainer.parent_model is None:
        raise RuntimeError(f"not fine-tuned: {trainer.start_note}")
    marks = {int(training.steps * f) for f in (0.25, 0.5, 0.75)} if args.curves else set()
    snapshots = []
    start = time.perf_counter()
    for event in trainer.run():
        if event.kind == "step" and event.step in marks:
            state = copy.deepcopy(trainer.model.state_dict())
            snapshots.append((time.perf_counter() - start, state))
    return trainer, time.perf_counter() - start, snapshots


def _objects_per_plane(labels) -> float:
    """Mean number of objects per plane (ids are unique over a stack, so count, not max)."""
    return float(np.mean([len(np.unique(plane)) - int((plane == 0).any()) for plane in labels]))


def _segment(trainer, images, instances=True):
    config = SegmentConfig(predict=PredictConfig(device=str(trainer.device)), instances=instances)
    return segment_stack(trainer.model, trainer.metadata(), images, config)


def _curve(trainer, snapshots, seconds, score):
    """(minutes, score) at each snapshot and at the end; restores the final weights.

    No snapshots (``--no-curves``): no curve, and no second scoring of the final model."""
    if not snapshots:
        return []
    final = copy.deepcopy(trainer.model.state_dict())
    points = []
    for t, state in snapshots:
        trainer.model.load_state_dict(state)
        points.append((round(t / 60, 2), score()))
    trainer.model.load_state_dict(final)
    points.append((round(seconds / 60, 2), score()))
    return points


def isbi(root: Path, args, seed: int) -> list[dict]:
    volume = tifffile.imread(root / "isbi2012" / "train-volume.tif")
    labels = (tifffile.imread(root / "isbi2012" / "train-labels.tif") > 0).astype(np.uint8)
    held = list(range(20, 30))
    truth = [instances_from_binary(labels[z]) for z in held]

    def scores(trainer):
        pred = _segment(trainer, volume[held])
        rand = float(np.mean([adapted_rand_error(p, t) for p, t in zip(pred, truth, strict=True)]))
        return {"rand_error": rand, "pixel_error": pixel_error(pred > 0, labels[held] > 0)}, pred

    rows = []
    for n, (start, init) in [(n, s) for n in args.isbi_shots for s in starts(args, "isbi")]:
        trainer, seconds, snaps = train(
            volume, labels, args, seed, planes=[(z,) for z in range(n)], init=init
        )
        result, pred = scores(trainer)
        curve = _curve(trainer, snaps, seconds, lambda t=trainer: scores(t)[0]["rand_error"])
        row = {"set": "isbi2012", "shots": n, "seed": seed, "start": start, "steps": trainer.step,
               "train_s": round(seconds, 1), **result, "curve": curve,
               "objects": _objects_per_plane(pred),
               "ref_objects": float(np.mean([t.max() for t in truth]))}  # fmt: skip
        rows.append(record(row))
        if n == 3 and seed == args.seeds[0] and start == "scratch":
            SCRATCH.mkdir(parents=True, exist_ok=True)
            np.save(SCRATCH / "isbi3-pred.npy", pred[:1])
    return rows


def _phc_load(root: Path, seq: str):
    gt_dir = root / "phc-u373" / f"{seq}_GT" / "SEG"
    frames = sorted(gt_dir.glob("man_seg*.tif"))
    idx = [int(f.stem[7:]) for f in frames]
    images = np.stack([tifffile.imread(root / "phc-u373" / seq / f"t{i:03d}.tif") for i in idx])
    return images, np.stack([tifffile.imread(f) for f in frames])


def phc(root: Path, args, seed: int) -> list[dict]:
    train_images, train_gt = _phc_load(root, "01")
    test_images, test_gt = _phc_load(root, "02")
    ref_objects = float(np.mean([len(np.unique(g)) - 1 for g in test_gt]))
    rows = []
    for n in args.phc_shots:
        count = len(train_images)
        pick = np.linspace(0, count - 1, n).round().astype(int) if n < count else np.arange(count)
        partial_rows = args.partial_rows and n in args.partial_shots
        runs = [(p, s) for p in ((False, True) if partial_rows else (False,))
                for s in starts(args, "phc")]  # fmt: skip
        for partial, (start, init) in runs:
            trainer, seconds, snaps = train(train_images[pick], train_gt[pick], args, seed,
                                            partial=partial, init=init)  # fmt: skip
            pred = _segment(trainer, test_images)
            curve = _curve(
                trainer,
                snaps,
                seconds,
                lambda t=trainer: seg_score_planes(_segment(t, test_images), test_gt),
            )
            row = {"set": "phc-u373", "shots": int(len(pick)), "partial": partial, "seed": seed,
                   "start": start,
                   "steps": trainer.step, "train_s": round(seconds, 1),
                   "seg": seg_score_planes(pred, test_gt), "curve": curve,
                   "objects": _objects_per_plane(pred),
                   "ref_objects": ref_objects}  # fmt: skip
            rows.append(record(row))
            if n == 3 and not partial and seed == args.seeds[0] and start == "scratch":
                SCRATCH.mkdir(parents=True, exist_ok=True)
                np.save(SCRATCH / "phc3-pred.npy", pred)
    return rows


def synthetic(args, seed: int) -> list[dict]:
    image, truth = make_cell_stack(8, seed=0)
    labels = np.zeros_like(truth)
    train_planes = (0, 4)
    for z in train_planes:
        labels[z] = truth[z]
    held = [z for z in range(8) if z not in train_planes]
    rows = []
    for start, init in starts(args, "synthetic"):
        trainer, seconds, snaps = train(image, labels, args, seed, init=init)
        pred = _segment(trainer, image[held])
        curve = _curve(
            trainer,
            snaps,
            seconds,
            lambda t=trainer: seg_score_planes(_segment(t, image[held]), truth[held]),
        )
        row = {"set": "synthetic", "shots": 2, "seed": seed, "start": start,
               "steps": trainer.step, "train_s": round(seconds, 1),
               "seg": seg_score_planes(pred, truth[held]), "curve": curve,
               "objects": _objects_per_plane(pred),
               "ref_objects": float(np.mean([truth[z].max() for z in held]))}  # fmt: skip
        rows.append(record(row))
    return rows


def plot_curves(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = [("isbi2012", "rand_error", "ISBI 2012: adapted Rand error (lower is better)"),
              ("phc-u373", "seg", "PhC-U373: SEG on seq. 02"),
              ("synthetic", "seg", "synthetic demo: SEG")]  # fmt: skip
    for ax, (name, _, title) in zip(axes, panels, strict=True):
        for r in (r for r in rows if r["set"] == name):
            label = f"{r['shots']} planes, seed {r['seed']}" + (
                ", partial" if r.get("partial") else ""
            )
            if r.get("start", "scratch") != "scratch":
                label += ", starting model"
            ax.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], "o-", label=label)
        ax.set(xlabel="training minutes (this CPU)", title=title)
        ax.legend(fontsize=6)
    fig.tight_layout()
    CURVES.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(CURVES, dpi=100)


def plot_failures(root: Path) -> None:
    """Image, our outlines (yellow) and the reference (cyan) for the worst PhC test frame."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    path = SCRATCH / "phc3-pred.npy"
    if not path.exists():
        return
    pred = np.load(path)
    images, gt = _phc_load(root, "02")
    per_frame = [seg_score_planes(p[None], g[None]) for p, g in zip(pred, gt, strict=True)]
    tiles = []
    for k in (int(np.argmin(per_frame)), int(np.argsort(per_frame)[len(per_frame) // 2])):
        gray = images[k].astype(np.float32)
        gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-6)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        rgb[find_boundaries(gt[k], mode="inner")] = (0.0, 0.9, 1.0)
        rgb[find_boundaries(pred[k], mode="inner")] = (1.0, 0.85, 0.0)
        tiles.append(rgb)
    canvas = np.concatenate([tiles[0], np.ones((tiles[0].shape[0], 6, 3)), tiles[1]], axis=1)
    imsave(FAILURES, (canvas * 255).astype(np.uint8), check_contrast=False)


def _mean(rows, key):
    values = [r[key] for r in rows]
    text = f"{np.mean(values):.3f}"
    return text + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")


def write_doc(rows: list[dict], meta: dict) -> None:
    lines = [START, "",
             f"Measured {meta['date']} on {meta['machine']}, device {meta['device']}, torch "
             f"{meta['torch']}, the product's defaults ({meta['defaults']}). Command: "
             f"`{meta['command']}`. Seeds: {meta['seeds']} (mean ± standard deviation over seeds). "
             "Paper and leaderboard figures are on the official test sets; ours on held-out "
             "training data (the split differs).", ""]  # fmt: skip
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["set"], r["shots"], r.get("partial", False), r.get("start", "scratch"))
        groups.setdefault(key, []).append(r)
    groups = dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])))
    isbi = [(k, g) for k, g in groups.items() if k[0] == "isbi2012"]
    if isbi:
        lines += ["| ISBI 2012: training slices | start | adapted Rand error | pixel error "
                  "| objects/ref. | train time |", "|---|---|---|---|---|---|"]  # fmt: skip
        for (_, n, _, start), g in isbi:
            lines.append(f"| {n} | {start} | {_mean(g, 'rand_error')} | "
                         f"{_mean(g, 'pixel_error')} | "
                         f"{np.mean([r['objects'] for r in g]):.0f} / {g[0]['ref_objects']:.0f} | "
                         f"{np.mean([r['train_s'] for r in g]):.0f} s |")  # fmt: skip
        lines += [f"| paper (test set, GPU) | | {REFERENCE['isbi_rand']} | "
                  f"{REFERENCE['isbi_pixel']} | | |", ""]  # fmt: skip
    phc_groups = [(k, g) for k, g in groups.items() if k[0] == "phc-u373"]
    if phc_groups:
        lines += ["| PhC-U373: frames of seq. 01 | annotations | start | SEG on seq. 02 "
                  "| objects / ref. per frame | train time |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for (_, n, partial, start), g in phc_groups:
            lines.append(
                f"| {n} | {'partial (`--partial`)' if partial else 'default'} | {start} | "
                f"{_mean(g, 'seg')} | {np.mean([r['objects'] for r in g]):.1f} / "
                f"{g[0]['ref_objects']:.1f} | {np.mean([r['train_s'] for r in g]):.0f} s |"
            )
        lines += [
            f"| paper (test set, GPU) | | | {REFERENCE['phc_seg_paper']} | | |",
            f"| best published (CTC leaderboard) | | | {REFERENCE['phc_seg_best']} | | |",
            "",
        ]
    syn = [(k, g) for k, g in groups.items() if k[0] == "synthetic"]
    if syn:
        lines += [
            "| synthetic demo set: annotated planes | start | SEG on the other 6 "
            "| objects / ref. | train time |",
            "|---|---|---|---|---|",
        ]
    for (_, n, _, start), g in syn:
        lines += [
            f"| {n} | {start} | {_mean(g, 'seg')} | {np.mean([r['objects'] for r in g]):.1f} / "
            f"{g[0]['ref_objects']:.1f} | {np.mean([r['train_s'] for r in g]):.0f} s |",
        ]
    if syn:
        lines.append("")
    lines += ["Learning curves (score against training minutes, snapshots of each run):", "",
              "![learning curves](images/accuracy-curves.png)", "",
              "Typical failures, PhC-U373 seq. 02 (3 training frames, first seed): the worst frame "
              "(left) and a median one (right); ours yellow, reference cyan:", "",
              "![failures](images/accuracy-failures.png)", "", END]  # fmt: skip
    block = "\n".join(lines)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n## Accuracy\n\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text += "\n## Accuracy\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> int:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="isbi,phc,synthetic")
    parser.add_argument("--isbi-shots", default="1,3,20")
    parser.add_argument("--phc-shots", default="1,3,15")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, help="override the default steps (not the product)")
    parser.add_argument("--minutes", type=float, help="training time budget per run")
    parser.add_argument("--no-partial-rows", dest="partial_rows", action="store_false")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--start",
        choices=["scratch", "starting-model", "both"],
        default="both",
        help="random weights, a starting model that never saw the set, or both (default)",
    )
    parser.add_argument(
        "--preset",
        choices=["small", "paper"],
        default="small",
        help="network (small: the default; paper: the 2015 network, for GPUs)",
    )
    parser.add_argument(
        "--no-doc", action="store_true", help="do not touch docs/benchmarks.md or its pictures"
    )
    parser.add_argument(
        "--no-curves", dest="curves", action="store_false", help="score only the final model"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as is)")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="where the rows go (another file lets two runs share a machine)",
    )
    parser.add_argument(
        "--from-rows",
        type=Path,
        help="only redraw the plots and the doc from saved rows (a JSON list, e.g. "
        "benchmarks/results/accuracy.partial.json of a stopped run)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add these rows to those already in benchmarks/results/accuracy.json",
    )
    parser.add_argument(
        "--partial-shots", default="3", help="PhC frame counts that also get a --partial row"
    )
    args = parser.parse_args()
    args.isbi_shots = [int(s) for s in args.isbi_shots.split(",") if s]
    args.phc_shots = [int(s) for s in args.phc_shots.split(",") if s]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.partial_shots = [int(s) for s in args.partial_shots.split(",") if s]
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS = args.results
    root = data_root()
    from napari_unet.devices import resolve_device

    device = resolve_device(args.device)
    args.device = str(device)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = json.loads(args.from_rows.read_text()) if args.from_rows else []
    for seed in [] if args.from_rows else args.seeds:
        if "synthetic" in args.sets:
            rows += synthetic(args, seed)
        if root is None:
            print("shared data not found (set NAPARI_UNET_DATA): synthetic set only")
            continue
        if "phc" in args.sets:
            rows += phc(root, args, seed)
        if "isbi" in args.sets:
            rows += isbi(root, args, seed)
    defaults = TrainConfig()
    steps = args.steps or defaults.steps
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else str(device),
        "defaults": f"{args.preset} preset, {steps} steps"
        + (f", at most {args.minutes} min" if args.minutes else "")
        + f", batch {defaults.batch_size}",
        "seeds": ", ".join(str(s) for s in args.seeds),
        "command": " ".join(["python benchmarks/accuracy.py", *sys.argv[1:]]),
        "torch": torch.__version__,
    }
    if args.merge and RESULTS.exists():
        earlier = json.loads(RESULTS.read_text())
        rows = earlier["rows"] + rows
        meta["command"] = earlier["meta"]["command"] + "` then `" + meta["command"]
        seeds = sorted({r["seed"] for r in rows})
        meta["seeds"] = ", ".join(str(s) for s in seeds)
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if not args.no_doc:  # the pictures belong to the doc's section
        plot_curves(rows)
        if root is not None:
            plot_failures(root)
        write_doc(rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo: the paper's way of working on built-in synthetic data, end to end, in minutes.

Make a stack of touching cells with ground truth, take the annotations of two planes, train the
small U-Net preset, segment every plane, and score the result against the ground truth.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_unet.inference.batch import SegmentConfig, segment_stack
from napari_unet.io.files import write_array
from napari_unet.metrics import iou, seg_score_planes
from napari_unet.sample_data import make_cell_stack
from napari_unet.training.recipe import TrainingRecipe, prepare_run
from napari_unet.training.trainer import TrainConfig

IOU_BAR = 0.8


@dataclass(frozen=True)
class DemoConfig:
    """Demo settings; ``steps=None`` trains with the product's default steps (what
    ``napari-unet train`` and the Train button do without options)."""

    out: Path = Path("napari-unet-demo")
    device: str = "auto"
    steps: int | None = None
    seed: int = 0
    planes: int = 8
    train_planes: tuple[int, ...] = (0, 4)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(config: DemoConfig | None = None, log=_log) -> dict:
    """Run the demo; returns the scores and output paths.

    ``passed``: IoU >= 0.8 on the held-out planes.
    """
    config = config or DemoConfig()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    image, truth = make_cell_stack(config.planes, seed=config.seed)
    log(
        f"[demo] synthetic stack {image.shape} with {int(truth.max())}+ touching cells per plane; "
        f"annotated planes {list(config.train_planes)} (their ground truth)"
    )
    annotations = np.zeros_like(truth)
    for z in config.train_planes:
        annotations[z] = truth[z]
    steps = config.steps or TrainConfig().steps
    recipe = TrainingRecipe(
        training=TrainConfig(steps=steps, seed=config.seed, device=config.device)
    )
    trainer = prepare_run(image, annotations, recipe)
    model = trainer.model
    log(
        f"[demo] training the small U-Net preset ({sum(p.numel() for p in model.parameters()):,} "
        f"parameters) for {steps} steps on {trainer.device}, tile {trainer.tile}; "
        f"{trainer.start_note}"
    )
    for event in trainer.run():
        if event.kind == "step" and (event.step % max(1, steps // 10) == 0 or event.step == steps):
            log(
                f"[demo]   step {event.step:4d}/{steps}  loss {event.loss:.4f}  "
                f"{event.tiles_per_s:.1f} tiles/s  ETA {event.eta_s:.0f}s"
            )
    model_path = trainer.save_model(out / "model.safetensors")
    t_train = time.perf_counter() - t0
    labels = segment_stack(model, trainer.metadata(), image, SegmentConfig())
    held_out = [z for z in range(config.planes) if z not in config.train_planes]
    scores = {
        "iou_held_out": iou(labels[held_out], truth[held_out]),
        "seg_held_out": seg_score_planes(labels[held_out], truth[held_out]),
        "iou_all": iou(labels, truth),
        "seg_all": seg_score_planes(labels, truth),
    }
    write_array(out / "image.tif", image)
    write_array(out / "ground_truth.tif", truth)
    write_array(out / "labels.tif", labels)
    overlay = save_overlay(out / "overlay.png", image, labels, truth, held_out[:3])
    elapsed = time.perf_counter() - t0
    passed = scores["iou_held_out"] >= IOU_BAR
    log(
        f"[demo] held-out planes {held_out}: IoU {scores['iou_held_out']:.3f}, "
        f"SEG {scores['seg_held_out']:.3f} (all planes: IoU {scores['iou_all']:.3f}, "
        f"SEG {scores['seg_all']:.3f})"
    )
    log(
        f"[demo] {'PASS' if passed else 'BELOW BAR'}: IoU >= {IOU_BAR} required; "
        f"total {elapsed:.0f}s "
        f"(training {t_train:.0f}s)"
    )
    log(
        f"[demo] wrote {model_path}, labels.tif, image.tif, ground_truth.tif and {overlay.name} "
        f"to {out}/"
    )
    log(
        f"[demo] look at it: napari {out / 'image.tif'} {out / 'labels.tif'}  "
        "(or open the napari-unet "
        "widgets from the Plugins menu)"
    )
    return {**scores, "passed": passed, "seconds": elapsed, "steps": steps, "out": str(out)}


def save_overlay(
    path: Path, image: np.ndarray, labels: np.ndarray, truth: np.ndarray, planes: list[int]
) -> Path:
    """PNG with, per plane, the image, the predicted outlines (yellow) and the truth (cyan)."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    tiles = []
    for z in planes:
        gray = image[z].astype(np.float32)
        gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-6)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        pred_rgb, truth_rgb = rgb.copy(), rgb.copy()
        pred_rgb[find_boundaries(labels[z], mode="inner")] = (1.0, 0.85, 0.0)
        truth_rgb[find_boundaries(truth[z], mode="inner")] = (0.0, 0.9, 1.0)
        gap = np.ones((gray.shape[0], 4, 3))
        tiles.append(np.concatenate([rgb, gap, pred_rgb, gap, truth_rgb], axis=1))
    sep = np.ones((4, tiles[0].shape[1], 3))
    canvas = np.concatenate([t for tile in tiles for t in (tile, sep)][:-1], axis=0)
    imsave(path, (canvas * 255).astype(np.uint8), check_contrast=False)
    return path

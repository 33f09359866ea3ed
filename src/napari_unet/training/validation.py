"""Scoring a network on held-out annotated planes, the way the user will see its output.

Predictions go through the same post-processing as ``predict`` without options (the settings
derived from the annotations), then are compared with the annotations on annotated pixels only:
foreground IoU, instance F1 and AP (``tp / (tp + fp + fn)``) at IoU 0.5. The trainer calls
:func:`validate` during training to plot the scores and keep the best weights; 3 Train shows
:func:`score_text` of the weights kept when a run ends.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_unet.annotation.derived import postprocess_config
from napari_unet.annotation.schema import TrainingPlane
from napari_unet.inference.postprocess import instance_labels, semantic_labels
from napari_unet.inference.predictor import PredictConfig, predict_plane
from napari_unet.metrics import iou, matching
from napari_unet.model import UNet


def validate(
    model: UNet, planes: list[TrainingPlane], derived: dict | None, device: torch.device
) -> dict[str, float]:
    """``{"val_iou", "val_f1", "val_ap"}`` averaged over ``planes`` (the model is left in eval
    mode)."""
    post = postprocess_config(derived)
    ious, f1s, aps = [], [], []
    model.eval()
    for plane in planes:
        probs = predict_plane(model, plane.image, PredictConfig(device=str(device)), device)
        valid = plane.weight > 0
        predicted = instance_labels(semantic_labels(probs), post, probabilities=probs)
        predicted = np.where(valid, predicted, 0)
        if plane.instances is not None:
            truth = np.where(valid, plane.instances, 0)
        else:
            truth = instance_labels(np.where(valid, plane.target, 0).astype(np.uint8))
        ious.append(iou(predicted > 0, truth > 0))
        matched = matching(predicted, truth)
        f1s.append(matched["f1"])
        aps.append(matched["ap"])
    return {
        "val_iou": float(np.mean(ious)),
        "val_f1": float(np.mean(f1s)),
        "val_ap": float(np.mean(aps)),
    }


def score_text(metrics: dict[str, float]) -> str:
    """Validation scores in words: ``"objects F1 0.83, AP@0.5 0.71; foreground IoU 0.91"``."""
    parts = [f"objects F1 {metrics['val_f1']:.2f}"]
    if "val_ap" in metrics:
        parts.append(f"AP@0.5 {metrics['val_ap']:.2f}")
    return ", ".join(parts) + f"; foreground IoU {metrics['val_iou']:.2f}"

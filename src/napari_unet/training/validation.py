"""Scoring a network on held-out annotated planes, the way the user will see its output.

Predictions go through the same post-processing as ``predict`` without options (the settings
derived from the annotations), then are compared with the annotations on annotated pixels only:
foreground IoU and instance F1 at IoU 0.5. The trainer calls :func:`validate` during training to
plot the scores and keep the best weights.
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
    """``{"val_iou", "val_f1"}`` averaged over ``planes`` (the model is left in eval mode)."""
    post = postprocess_config(derived)
    ious, f1s = [], []
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
        f1s.append(matching(predicted, truth)["f1"])
    return {"val_iou": float(np.mean(ious)), "val_f1": float(np.mean(f1s))}

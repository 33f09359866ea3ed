"""Helpers shared by the viewer tests (imported as a plain module; see conftest.py)."""

from __future__ import annotations

import numpy as np

from napari_unet.model import UNetConfig

#: The tiny network of the tests: trains in a few seconds on 2 CPU cores.
TINY = UNetConfig(width=8, depth=2, padding="same", norm="batch", dropout=0.0)
TINY_TILE = 64


def add_cells(viewer, cells, scale=(1.0, 0.5, 0.5), translate=(0.0, 10.0, -5.0)):
    """Add the stack and its ground truth, both with a non-trivial scale and translation."""
    image, truth = cells
    image_layer = viewer.add_image(image, name="cells", scale=scale, translate=translate)
    truth_layer = viewer.add_labels(truth, name="ground truth", scale=scale, translate=translate)
    return image_layer, truth_layer


def train_tiny_model(cells, steps: int):
    """A tiny network trained ``steps`` steps on planes 0 and 2 of ``cells`` with the library:
    (model, metadata)."""
    from napari_unet.annotation.schema import training_planes
    from napari_unet.model import UNet
    from napari_unet.threads import gui_cpu_threads, limited_threads
    from napari_unet.training.trainer import TrainConfig, Trainer

    image, truth = cells
    planes, classes = training_planes(image[[0, 2]], truth[[0, 2]])
    trainer = Trainer(
        UNet(TINY.with_(num_classes=classes)),
        planes,
        TrainConfig(steps=steps, tile=TINY_TILE, lr=3e-3, val_every=0, checkpoint_every=0),
    )
    with limited_threads(gui_cpu_threads()):
        for _ in trainer.run():
            pass
    return trainer.model, trainer.metadata()


def configure_tiny(train_widget, steps: int = 40) -> None:
    """Settings of the tiny, fast run used by the tests."""
    train_widget.set_custom_architecture(TINY)
    train_widget.tile.value = TINY_TILE
    train_widget.steps.value = steps
    train_widget.lr.value = 0.003
    train_widget.batch_size.value = 4


def wait_idle(qtbot, widget, timeout_s: float = 90.0) -> None:
    """Wait (processing events) until ``widget.is_running`` is False; fail after ``timeout_s``."""
    qtbot.waitUntil(lambda: not widget.is_running, timeout=int(timeout_s * 1000))


def foreground_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Jaccard index of the foregrounds (pred > 0 vs truth > 0)."""
    a, b = np.asarray(pred) > 0, np.asarray(truth) > 0
    return float((a & b).sum() / max((a | b).sum(), 1))

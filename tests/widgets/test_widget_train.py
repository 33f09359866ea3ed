"""The Train widget end to end: annotate -> weight map -> train (live plot, preview) -> segment."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication
from widget_helpers import add_cells, configure_tiny, foreground_iou, wait_idle

from napari_unet._widgets import _session
from napari_unet._widgets._plot import ema
from napari_unet._widgets.annotate import AnnotateWidget
from napari_unet._widgets.segment import SegmentWidget
from napari_unet._widgets.train import TrainWidget
from napari_unet._widgets.weightmap import WeightMapWidget
from napari_unet.inference.batch import SegmentConfig
from napari_unet.inference.suggest import DEFAULT_MEASURE, plane_uncertainty
from napari_unet.io.modelfile import load_model, read_metadata
from napari_unet.io.planes import read_plane
from napari_unet.training.checkpoint import read_checkpoint_metadata

pytestmark = pytest.mark.viewer


def _errors(notifications):
    return [m for severity, m in notifications if severity.lower() == "error"]


def test_end_to_end(viewer, cells, qtbot, tmp_path, notifications):
    image, truth = add_cells(viewer, cells)
    annotate, weights = AnnotateWidget(viewer), WeightMapWidget(viewer)
    train, segment = TrainWidget(viewer), SegmentWidget(viewer)
    for widget in (annotate, weights, train, segment):
        viewer.window.add_dock_widget(widget)

    # 1 annotate: the ground truth of planes 0 and 2 (training) and 3 (held out)
    annotate.import_labels(truth, [0, 2, 3])
    labels = annotate.annotation_layer()
    assert annotate.annotated_planes() == [(0,), (2,), (3,)]

    # 2 weight map
    weights.labels_combo.value = labels
    weights.compute("all annotated planes")
    qtbot.waitUntil(lambda: weights.worker is None, timeout=30000)
    assert viewer.layers["cells annotations weight map"].data[0].max() > 2

    # 3 train; live previews come after step 1, then every 0.5 s here (default: 3 s), and at the end
    train.labels_combo.value = labels
    assert train.image_combo.current_choice == "cells"  # bound by the annotation layer
    configure_tiny(train, steps=40)
    train.preview_every.value = 0.5
    train.hold_out.value = "3"
    assert train.start_training() is not None
    assert train.is_running and not train.train_button.isEnabled()
    wait_idle(qtbot, train)
    steps = [e for e in train.events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, 41))
    assert all(math.isfinite(e.loss) for e in steps)
    assert train.events[-1].kind == "done"
    assert train.plot.steps == list(range(1, 41)) and train.plot.redraws >= 1
    assert train.plot.val_ious and 0 <= train.plot.val_ious[-1] <= 1
    assert train.preview.updates >= 2  # at least one during training (step 1), one at the end
    live = viewer.layers["cells live prediction"]
    assert live.data.shape == labels.data.shape and live.data.any()
    np.testing.assert_allclose(live.scale, image.scale)
    assert train.status.text().startswith("done: 40 steps in ")  # one run: no "in this run"
    assert _session.trained() is not None
    assert train.save_button.isEnabled()
    # Save model suggests a name after the image (no file behind it: the working folder)
    assert train.default_model_path() == Path.cwd() / "cells.unet.safetensors"
    # the loss is drawn smoothed (EMA) over the faint raw points
    assert list(train.plot.raw_line.get_ydata()) == train.plot.losses
    np.testing.assert_allclose(train.plot.loss_line.get_ydata(), ema(train.plot.losses))
    assert train.plot.raw_line.get_alpha() < 0.5 <= (train.plot.loss_line.get_alpha() or 1)
    assert np.std(np.diff(train.plot.smooth)) < np.std(np.diff(train.plot.losses))

    # 4 segment the whole stack with the model just trained
    segment.image_combo.value = image
    segment.run("whole stack")
    wait_idle(qtbot, segment)
    result = viewer.layers["cells segmentation"]
    assert result.data.shape == truth.data.shape
    np.testing.assert_allclose(result.scale, image.scale)
    np.testing.assert_allclose(result.translate, image.translate)
    # 0.87..0.93 over six training seeds on this data; 0.7 leaves room for other CPUs' numerics
    assert foreground_iou(result.data, truth.data) > 0.7
    assert foreground_iou(result.data[1], truth.data[1]) > 0.7  # a plane never annotated
    assert not _errors(notifications)

    # save the model; segment the current plane from the file, with probability + uncertainty
    path = train.save_model(tmp_path / "tiny.safetensors")
    assert read_metadata(path).provenance["steps"] == 40
    segment.source.value = "model file..."
    segment.model_path.value = str(path)
    segment.probability.value = True
    segment.uncertainty.value = True
    viewer.dims.set_point(0, image.data_to_world((1, 0, 0))[0])
    segment.run("current plane")
    wait_idle(qtbot, segment)
    assert segment.status.text().startswith("done: plane 1 in ")  # not "plane (1,)" (#21)
    probability = viewer.layers["cells probability"]
    uncertainty = viewer.layers["cells uncertainty"]
    assert probability.data.shape == truth.data.shape
    assert 0 <= probability.data[1].min() and probability.data[1].max() <= 1
    assert probability.data[1].max() > 0.5 and not probability.data[0].any()
    # the uncertainty layer holds plane 1's map of the default ranking measure, nothing elsewhere
    unc = uncertainty.data[1]
    assert uncertainty.data.shape == truth.data.shape and not uncertainty.data[0].any()
    assert np.isfinite(unc).all() and 0 <= unc.min() and unc.max() <= 1
    assert unc.max() > 0 and np.unique(unc).size > 1  # the 8 passes disagree, unevenly
    model, metadata = load_model(path)
    expected = plane_uncertainty(
        model, metadata, read_plane(image.data, (1,), None), SegmentConfig()
    ).map_for(DEFAULT_MEASURE)
    np.testing.assert_allclose(unc, expected, atol=1e-4)
    assert not _errors(notifications)


def test_cancel_and_resume(viewer, cells, qtbot, tmp_path):
    image, truth = add_cells(viewer, cells)
    annotate, train = AnnotateWidget(viewer), TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    annotate.import_labels(truth, [0, 2])
    train.checkpoint_dir = tmp_path / "checkpoints"
    configure_tiny(train, steps=5000)
    train.start_training()
    qtbot.waitUntil(lambda: len(train.plot.steps) >= 5, timeout=60000)
    train.cancel_button.click()
    wait_idle(qtbot, train)
    stopped = train.events[-1]
    assert stopped.kind == "cancelled" and 5 <= stopped.step < 5000
    assert train.status.text() == f"cancelled at step {stopped.step}, checkpoint saved"
    checkpoint = train.last_checkpoint
    assert checkpoint is not None and checkpoint.is_file()
    assert checkpoint.parent == tmp_path / "checkpoints"
    assert read_checkpoint_metadata(checkpoint).provenance["steps"] == stopped.step
    assert train.resume_button.isEnabled() and train.save_button.isEnabled()
    assert _session.trained() is None  # only a finished run becomes "the model just trained"
    # the stopped run's live prediction is gone: it is not the model's output (#21)
    assert "cells live prediction" not in viewer.layers

    # the viewer is still usable
    viewer.add_points([[0, 5, 5]], name="still alive")
    viewer.dims.set_point(0, image.data_to_world((3, 0, 0))[0])
    QApplication.processEvents()
    assert "still alive" in viewer.layers and viewer.dims.current_step[0] == 3

    # resume from the checkpoint for 5 more steps (Trainer.load_checkpoint in the worker)
    train.steps.value = stopped.step + 5
    train.resume_button.click()
    wait_idle(qtbot, train)
    resumed = [e.step for e in train.events if e.kind == "step"]
    assert resumed[-5:] == list(range(stopped.step + 1, stopped.step + 6))
    assert train.events[-1].kind == "done"
    assert train.plot.steps[-1] == stopped.step + 5  # the curve continues
    assert _session.trained() is not None
    # the whole run's steps, and how many this resumed run did (#21)
    total = stopped.step + 5
    assert train.status.text().startswith(f"done: {total} steps (5 in this run) in ")
    assert train.progress.value() == total == train.plot.steps[-1]


def test_errors_become_notifications(viewer, cells, qtbot, notifications):
    add_cells(viewer, cells)
    annotate, train = AnnotateWidget(viewer), TrainWidget(viewer)
    annotate.new_annotation_layer()
    configure_tiny(train, steps=5)
    # on the GUI thread: nothing annotated
    assert train.start_training() is None
    assert not train.is_running
    assert any("no annotated plane" in m for m in _errors(notifications))
    # in the worker: a plane marked as annotated but empty has no foreground to learn
    annotate.mark_current_plane()
    train.train_button.click()
    wait_idle(qtbot, train)
    assert any("hold no foreground" in m for m in _errors(notifications))
    assert "failed" in train.status.text()
    assert train.train_button.isEnabled() and not train.cancel_button.isEnabled()
    # nothing to resume or save
    assert not train.resume_button.isEnabled()
    assert train.start_training(resume=True) is None
    assert any("nothing to resume" in m for m in _errors(notifications))
    with pytest.raises(Exception, match="train a model first"):
        train.save_model("never.safetensors")


def test_augmentation_preview(viewer, cells):
    image, truth = add_cells(viewer, cells)
    annotate, train = AnnotateWidget(viewer), TrainWidget(viewer)
    annotate.import_labels(truth, [2])
    train.augment.value = 1.5
    shown, targets = train.preview_augmentation(n=3)
    assert shown.data.shape == targets.data.shape
    assert shown.data.shape[0] == 128 and shown.data.shape[1] == 3 * 128 + 2 * 8
    assert set(np.unique(targets.data)) <= {0, 1, 2}  # background, interior, border band
    # placed to the right of the image, not on top of it
    assert shown.translate[-1] > image.translate[-1] + 128 * image.scale[-1]
    train.preview_button.click()  # again: the same layers are updated
    assert [layer.name for layer in viewer.layers].count("augmentation preview") == 1


def test_deleting_the_widget_stops_training(viewer, cells, qtbot):
    _, truth = add_cells(viewer, cells)
    annotate, train = AnnotateWidget(viewer), TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    annotate.import_labels(truth, [0, 2])
    configure_tiny(train, steps=5000)
    worker = train.start_training()
    qtbot.waitUntil(lambda: len(train.plot.steps) >= 2, timeout=60000)
    job, finished = train.job, []
    worker.finished.connect(lambda: finished.append(True))
    train.deleteLater()  # e.g. the viewer closes while training
    qtbot.waitUntil(lambda: bool(finished), timeout=60000)
    assert job.cancelled and job.trainer is None
    viewer.add_points([[0, 1, 1]])  # still fine


def test_fine_tune_a_model_file(viewer, cells, qtbot, tmp_path):
    _, truth = add_cells(viewer, cells)
    annotate, train = AnnotateWidget(viewer), TrainWidget(viewer)
    annotate.import_labels(truth, [0, 2])
    configure_tiny(train, steps=4)
    train.start_training()
    wait_idle(qtbot, train)
    parent = train.save_model(tmp_path / "parent.safetensors")
    train.model_combo.value = "fine-tune model file..."
    assert train.model_path.native.isVisibleTo(train)
    train.model_path.value = str(parent)
    train.steps.value = 3
    train.start_training()
    wait_idle(qtbot, train)
    assert train.events[-1].kind == "done"
    model, metadata = train.result
    assert (
        metadata.provenance["parent_model"] == parent.name
    )  # one rule for CLI and GUI: the file name
    assert metadata.architecture == read_metadata(parent).architecture


def test_new_models_start_from_the_starting_model_by_default(viewer, cells):
    from napari_unet.model import PRESETS

    add_cells(viewer, cells)
    train = TrainWidget(viewer)
    assert train.model_combo.value == "new: from the starting model"
    assert train.start() == "starting-model" and train.architecture() == PRESETS["small"]
    train.model_combo.value = "new: small preset, from scratch"  # one choice away
    assert train.start() == "scratch" and train.architecture() == PRESETS["small"]
    train.set_custom_architecture(PRESETS["small"].with_(width=8))
    assert train.start() == "scratch"

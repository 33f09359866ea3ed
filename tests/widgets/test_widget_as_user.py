"""The four widgets as a biologist uses them: opened from the Plugins menu on a 1600x1000 screen,
closed with their title-bar x, with notifications, status lines and tooltips read as shown."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import qtpy
from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QScrollBar,
)
from widget_helpers import TINY, add_cells, configure_tiny, train_tiny_model, wait_idle

from napari_unet._widgets import _session
from napari_unet._widgets._preview import LivePreview
from napari_unet._widgets.train import TrainWidget
from napari_unet.annotation.derived import describe
from napari_unet.inference.batch import SegmentConfig, segment_plane
from napari_unet.io.modelfile import ModelMetadata
from napari_unet.model import UNet
from napari_unet.training import job as train_job

pytestmark = pytest.mark.viewer

NAMES = ("1 Annotate", "2 Weight map", "3 Train", "4 Segment")
SCREEN = (1600, 1000)


def _open_all(viewer) -> dict:
    """The four widgets through napari's plugin machinery (as Plugins > napari U-Net > ...)."""
    return {name: viewer.window.add_plugin_dock_widget("napari-unet", name) for name in NAMES}


def worker_returned(worker) -> bool:
    """Whether the worker's thread is done with its function."""
    return not worker.is_running


def _errors(notifications) -> list[str]:
    return [m for severity, m in notifications if severity.lower() == "error"]


def _settle(qtbot, viewer, timeout_s: float = 30.0) -> None:
    """Process events until the layout has settled: the window, every dock and the canvas keep
    the same geometry over 5 consecutive checks (pytest-qt checks every 10 ms; that is only the
    poll interval), failing after ``timeout_s``."""
    window = viewer.window._qt_window
    seen: list = []

    def geometry() -> tuple:
        docks = tuple(dock.geometry().getRect() for dock in viewer.window.dock_widgets.values())
        return window.geometry().getRect(), docks, tuple(viewer.canvas.size)

    def unchanged() -> bool:
        QApplication.processEvents()
        seen.append(geometry())
        return len(seen) >= 5 and all(g == seen[-1] for g in seen[-5:])

    qtbot.waitUntil(unchanged, timeout=int(timeout_s * 1000))


@pytest.fixture
def big_viewer(viewer, qtbot):
    """The viewer in a 1600 x 1000 window (the size of the test screen)."""
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    _settle(qtbot, viewer)
    return viewer


# ------------------------------------------------------------------ 1 stop what was started
def test_title_bar_close_stops_training_and_viewer_close_stops_the_next(big_viewer, cells, qtbot):
    viewer = big_viewer
    _, truth = add_cells(viewer, cells)
    opened = _open_all(viewer)
    opened["1 Annotate"][1].import_labels(truth, [0, 2])
    dock, train = opened["3 Train"]
    configure_tiny(train, steps=100_000)
    worker = train.start_training()
    qtbot.waitUntil(lambda: len(train.plot.steps) >= 2, timeout=60000)
    job = train.job

    dock.titleBarWidget().close_button.click()  # what the user clicks: the dock's x
    assert job.cancelled
    assert worker_returned(worker)  # the thread is done before the click returns
    assert "3 Train" not in " ".join(viewer.window.dock_widgets)

    # reopened from the menu: a fresh widget, and no hidden run beside the new one
    _, again = viewer.window.add_plugin_dock_widget("napari-unet", "3 Train")
    assert again is not train
    configure_tiny(again, steps=100_000)
    second = again.start_training()
    qtbot.waitUntil(lambda: len(again.plot.steps) >= 2, timeout=60000)
    running = again.job
    viewer.close()  # the viewer's window closes with a run going
    assert running.cancelled and worker_returned(second)


def test_title_bar_close_stops_a_whole_stack_segmentation(big_viewer, qtbot):
    viewer = big_viewer
    stack = np.random.default_rng(0).random((400, 96, 96)).astype(np.float32)
    viewer.add_image(stack, name="long stack")
    model = UNet(TINY.with_(num_classes=2)).eval()
    metadata = ModelMetadata(
        architecture=model.config,
        normalization={"method": "percentile", "low": 1.0, "high": 99.8},
        class_names=["background", "cell"],
        provenance={},
    )
    _session.set_trained(model, metadata, "untrained")
    dock, segment = viewer.window.add_plugin_dock_widget("napari-unet", "4 Segment")
    segment.run("whole stack")
    qtbot.waitUntil(lambda: segment.progress.value() >= 1, timeout=60000)
    worker = segment.worker
    dock.titleBarWidget().close_button.click()
    assert segment._cancel.is_set() and not worker.is_running
    assert "long stack segmentation" not in viewer.layers


LONG_DERIVED = {
    "method": "relative-cores", "core_ratio": 0.6, "join_wide": 0.8, "join_shallow": 0.3,
    "min_size": 128, "fill_holes": True, "object_diameter": 39.6,
    "derived_from": "min size = a quarter of the smallest of 16 annotated objects not cut by "
    "the edge; 3 stray piece(s) under 2 % of the typical area ignored",
}  # fmt: skip


# ------------------------------------------------------------------ 2 fit the screen
def test_four_widgets_fit_a_1600x1000_screen(big_viewer, qtbot):
    viewer = big_viewer
    viewer.open_sample("napari-unet", "cells-stack")
    opened = _open_all(viewer)
    _settle(qtbot, viewer)
    window = opened["1 Annotate"][1].window()
    screen = QApplication.primaryScreen().availableGeometry()
    assert window.frameGeometry().height() <= screen.height() <= SCREEN[1]
    for name, (dock, widget) in opened.items():
        assert dock.height() >= 150, f"{name} is squeezed to its title bar"
        body = widget.body  # scrolls inside the dock: never squashed below its minimum
        assert body.height() >= body.minimumSizeHint().height(), name
    # the Annotate legend is whole, "65535 ignore" row included
    legend = opened["1 Annotate"][1].schema_label
    assert "65535" in legend.value
    label = legend.native
    assert label.height() >= label.heightForWidth(label.width())
    # a long line of derived settings wraps instead of widening the dock; with the vertical
    # scroll bar shown, nothing is cut off on the right (the Cancel button, the spin boxes)
    segment = opened["4 Segment"][1]
    segment.derived.value = describe(LONG_DERIVED)
    segment.derived.visible = True
    _settle(qtbot, viewer)
    for name, (_dock, widget) in opened.items():
        assert widget.scroll.horizontalScrollBar().maximum() == 0, f"{name} is cut on the right"


def test_three_docks_and_a_long_model_name_stay_on_screen(big_viewer, cells, qtbot, monkeypatch):
    """A continued model's long file name cut in the middle (whole in the tooltip), no control
    past a dock's right edge, Train's button reachable by scrolling; opening Train does not
    load PyTorch's optimiser (seconds of imports: only when a run starts)."""
    viewer = big_viewer
    add_cells(viewer, cells)
    path = "/tmp/napari-unet/" + "cells_annotations-20261203-153000-" * 3 + "2.safetensors"
    description = f"trained on 'cells', 6 + 4 steps (continued from {path})"
    _session.set_trained(*train_tiny_model(cells, steps=2), description)
    monkeypatch.setattr(train_job, "_WARM", False)
    names = ("1 Annotate", "3 Train", "4 Segment")
    opened = {name: viewer.window.add_plugin_dock_widget("napari-unet", name) for name in names}
    _settle(qtbot, viewer)
    assert not train_job.is_warm()
    segment, train = opened["4 Segment"][1], opened["3 Train"][1]
    assert description in segment.model_info.native.toolTip()
    assert len(segment.model_info.value) < len(description) and path not in segment.model_info.value
    for name, (_, widget) in opened.items():
        viewport = widget.scroll.viewport()
        for control in widget.body.findChildren((QAbstractButton, QComboBox)):
            if control.isVisibleTo(widget.body):
                right = control.mapTo(viewport, QPoint(control.width(), 0)).x()
                assert right <= viewport.width(), (
                    name,
                    control.objectName(),
                    control.text() if hasattr(control, "text") else "",
                )
    window = viewer.window._qt_window
    screen = QApplication.primaryScreen().availableGeometry()
    assert window.frameGeometry().width() <= screen.width()  # no dock widened the window
    for name, (dock, _) in opened.items():
        assert dock.width() <= screen.width() // 3, name
    train.scroll.ensureWidgetVisible(train.train_button)
    QApplication.processEvents()
    button = QRect(train.train_button.mapTo(window, QPoint(0, 0)), train.train_button.size())
    assert window.rect().contains(button)


# ------------------------------------------------------------------ 3 never train on GT silently
def test_train_does_not_pick_the_ground_truth(viewer, notifications):
    viewer.open_sample("napari-unet", "cells-stack")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "3 Train")
    assert train.labels_combo.current_choice == ""  # "none: create one in 1 Annotate"
    assert not train.labels_combo.choices
    assert train.start_training() is None
    assert any("annotation layer" in m for m in _errors(notifications))
    assert train.status.text().startswith("not started: choose an image and its annotation")
    # once the user made an annotation layer (1 Annotate), it is the one offered
    _, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "1 Annotate")
    annotate.new_annotation_layer()
    assert train.labels_combo.current_choice == "cells stack annotations"


# ------------------------------------------------------------------ 4 status that tells the truth
def test_status_progress_and_resume_tell_the_truth(viewer, cells, qtbot, notifications):
    _, truth = add_cells(viewer, cells)
    opened = _open_all(viewer)
    opened["1 Annotate"][1].import_labels(truth, [0, 2])
    train = opened["3 Train"][1]
    configure_tiny(train, steps=6)
    train.start_training()
    wait_idle(qtbot, train)
    assert train.status.text().startswith("done: 6 steps")
    assert train.progress.text().endswith("done") and "ETA" not in train.progress.text()
    assert not train.resume_button.isEnabled()  # a finished run has nothing to resume
    assert train.start_training(resume=True) is None

    # an error before a run starts replaces the old "done" line, and says the same as the message
    train.hold_out.value = "0, 2"
    assert train.start_training() is None
    message = _errors(notifications)[-1]
    assert "every annotated plane (0, 2) is held out" in message
    assert train.status.text() == f"not started: {message}"

    # cancel: the progress bar stops counting down
    train.hold_out.value = ""
    train.steps.value = 100_000
    train.start_training()
    qtbot.waitUntil(lambda: "ETA" in train.progress.text(), timeout=60000)
    train.cancel_button.click()
    wait_idle(qtbot, train)
    assert "ETA" not in train.progress.text() and "cancelled" in train.progress.text()
    assert train.resume_button.isEnabled()  # the cancelled run can go on


# ------------------------------------------------------------------ 5 previews that look right
def test_augmentation_preview_is_on_screen(big_viewer, cells, qtbot):
    viewer = big_viewer
    image, truth = add_cells(viewer, cells)
    opened = _open_all(viewer)
    opened["1 Annotate"][1].import_labels(truth, [2])
    _settle(qtbot, viewer)  # the docks have taken their place: the canvas has its final size
    viewer.camera.zoom = 8.0  # the user was looking closely at the image
    shown, _ = opened["3 Train"][1].preview_augmentation(n=4)
    _settle(qtbot, viewer)
    (low_y, low_x), (high_y, high_x) = shown.extent.world[:, -2:]
    height, width = viewer.canvas.size
    centre_y, centre_x = viewer.camera.center[-2:]
    half_h, half_w = height / viewer.camera.zoom / 2, width / viewer.camera.zoom / 2
    assert centre_y - half_h <= low_y and high_y <= centre_y + half_h
    assert centre_x - half_w <= low_x and high_x <= centre_x + half_w
    assert "right of the image" in opened["3 Train"][1].status.text()


def test_live_prediction_covers_the_plane_or_is_framed(viewer):
    plane = viewer.add_labels(np.zeros((2, 600, 700), np.uint8), name="annotations")
    preview = LivePreview(viewer)
    index, box = preview.request(plane)
    assert box == (0, 600, 0, 700)  # a 600 x 700 plane is predicted whole
    preview.show(None, plane, index, box, np.ones((600, 700), np.uint8))
    assert "annotations live prediction window" not in viewer.layers

    huge = viewer.add_labels(np.zeros((1, 2000, 2000), np.uint8), name="huge")
    index, (y0, y1, x0, x1) = preview.request(huge)
    assert (y1 - y0, x1 - x0) == (1024, 1024)
    layer = preview.show(None, huge, index, (y0, y1, x0, x1), np.ones((1024, 1024), np.uint8))
    frame = viewer.layers["huge live prediction window"]  # the window is drawn as a window
    assert frame.shape_type == ["rectangle"]
    # a later window replaces the earlier one instead of leaving a stale square behind
    preview.show(None, huge, index, (0, 1024, 0, 1024), np.full((1024, 1024), 2, np.uint8))
    assert set(np.unique(layer.data[0, y0:y1, x0:x1])) <= {0, 2}


# ------------------------------------------------------------------ 6 no specks by default
def test_segment_defaults_follow_the_annotated_object_size(viewer, cells, qtbot):
    image, truth = add_cells(viewer, cells)
    opened = _open_all(viewer)
    opened["1 Annotate"][1].import_labels(truth, [0, 2])
    train, segment = opened["3 Train"][1], opened["4 Segment"][1]
    configure_tiny(train, steps=30)
    train.start_training()
    wait_idle(qtbot, train)
    entry = _session.trained()
    min_size = entry.metadata.postprocess["min_size"]
    assert min_size > 20  # a quarter of the smallest annotated cell
    assert segment.min_size.native.text() == f"auto: {min_size} px"  # the line under it: from what
    viewer.dims.set_point(0, image.data_to_world((1, 0, 0))[0])
    segment.run("current plane")
    wait_idle(qtbot, segment)
    result = viewer.layers["cells segmentation"].data[1]
    sizes = np.bincount(result.ravel())[1:]
    assert sizes[sizes > 0].min() >= min_size  # no specks
    # the same rule as the command line / library defaults
    library, _ = segment_plane(entry.model, entry.metadata, cells[0][1][None], SegmentConfig())
    np.testing.assert_array_equal(result > 0, library > 0)


# ------------------------------------------------------------------ 7 weight map
def test_weight_map_status_and_layout(viewer, cells, qtbot, notifications):
    image, truth = add_cells(viewer, cells)
    opened = _open_all(viewer)
    opened["1 Annotate"][1].import_labels(truth, [0, 2])
    weights = opened["2 Weight map"][1]
    weights.compute("all annotated planes")
    qtbot.waitUntil(lambda: weights.worker is None, timeout=30000)
    assert re.match(r"plane 0, 2: weights 1\.00 \.\. \d+\.\d\d$", weights.status.text())

    viewer.dims.set_point(0, image.data_to_world((1, 0, 0))[0])  # not annotated
    weights.compute_button.click()
    assert "plane 1 is not annotated" in _errors(notifications)[-1]
    assert weights.worker is None

    # hidden rows (field and label) leave no gap
    assert not weights.lam.visible and weights.w0.visible
    weights.variant.value = "falk"
    assert weights.lam.visible and not weights.w0.visible


# ------------------------------------------------------------------ 8 explain every control
CONTROLS = (
    QAbstractButton,
    QComboBox,
    QAbstractSpinBox,
    QLineEdit,
    QAbstractSlider,
    QListWidget,
    QProgressBar,
)


def _tooltip(widget, top) -> str:
    """The tooltip Qt shows over ``widget``: its own, else the nearest parent's inside ``top``."""
    while widget is not None and widget is not top:
        if widget.toolTip():
            return widget.toolTip()
        widget = widget.parentWidget()
    return ""


def test_every_control_has_a_tooltip_and_the_plot_starts_clean(viewer):
    for name, (_, widget) in _open_all(viewer).items():
        controls = [
            c
            for c in widget.findChildren(CONTROLS)
            if c.isVisibleTo(widget) and not isinstance(c, QScrollBar)
        ]
        assert len(controls) >= 8, name
        missing = [
            f"{type(c).__name__} {getattr(c, 'text', lambda: '')()!r}"
            for c in controls
            if not _tooltip(c, widget)
        ]
        assert not missing, f"{name}: no tooltip on {missing}"
    train = viewer.window.dock_widgets["3 Train (napari-unet)"]
    assert isinstance(train, TrainWidget)
    assert train.plot.ax.get_ylim() == (0.0, 1.0) and train.plot.placeholder.get_visible()
    for tip in (train.model_combo.tooltip, train.augment.tooltip, train.lr.tooltip):
        assert "paper" in tip  # the paper's value is named where there is one


# ------------------------------------------------------------------ 9 Qt 6, qtpy only
def test_runs_on_qt6_through_qtpy():
    assert qtpy.QT6, f"the test command runs Qt 6; got {qtpy.API_NAME}"
    source = Path(__file__).parents[2] / "src" / "napari_unet"
    direct = [
        str(path)
        for path in source.rglob("*.py")
        if re.search(r"^\s*(from|import) (PyQt5|PyQt6|PySide2|PySide6)", path.read_text(), re.M)
    ]
    assert not direct, f"import Qt through qtpy only: {direct}"

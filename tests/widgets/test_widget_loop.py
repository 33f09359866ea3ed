"""The human-in-the-loop round in 4 Segment (#14): segment the stack, rank the planes ("Annotate
next"), correct a plane and use it as annotation (undo-able), train, segment and rank again.

A real viewer, a tiny network trained for a few steps, 4 planes of 128 x 128.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt
from widget_helpers import add_cells, configure_tiny, train_tiny_model, wait_idle

from napari_unet._widgets import _session
from napari_unet._widgets._common import META_PLANES, current_plane
from napari_unet._widgets.annotate import AnnotateWidget, training_plane_list
from napari_unet._widgets.segment import NOTHING_TO_RANK, SegmentWidget
from napari_unet._widgets.train import CONTINUE
from napari_unet.annotation.schema import MAX_OBJECTS, plane_as_annotation
from napari_unet.errors import AnnotationError

pytestmark = pytest.mark.viewer

ROW = re.compile(r"^plane (\d+)   (\d+\.\d{3})   \((\d+) objects?\)$")


@pytest.fixture(scope="module")
def tiny_model(cells):
    """A tiny network trained for a few steps with the library (once per module)."""
    return train_tiny_model(cells, steps=8)


def _retrained(model):
    """Another network, as a new training would give (the weights nudged)."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return other


def _errors(notifications) -> list[str]:
    return [m for severity, m in notifications if severity.lower() == "error"]


def _infos(notifications) -> list[str]:
    return [m for severity, m in notifications if severity.lower() == "info"]


def _rows(widget) -> list[str]:
    return [widget.next_list.item(i).text() for i in range(widget.next_list.count())]


def _ranked_planes(widget) -> list[int]:
    return [int(ROW.match(text).group(1)) for text in _rows(widget)]


def _setup(viewer, cells, model, annotated=(0,)):
    """The stack, its annotations (ground truth on ``annotated``), the model, docked widgets."""
    image, truth = add_cells(viewer, cells)
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate, name="annotate")
    annotate.import_labels(truth, list(annotated))
    _session.set_trained(*model, "test model")
    widget = SegmentWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="segment")
    widget.image_combo.value = image
    return image, truth, annotate.annotation_layer(), widget, dock


def test_segment_rank_correct_train_again(viewer, cells, tiny_model, qtbot, notifications):
    image, truth, annotations, widget, _ = _setup(viewer, cells, tiny_model)
    assert widget.rank_after.isChecked() and widget.resegment.isChecked()
    assert widget.rank_button.isEnabled()

    # 1 the whole stack, then the ranking (one busy period: the ranking follows by itself)
    widget.run("whole stack")
    wait_idle(qtbot, widget)
    assert not _errors(notifications)
    result = viewer.layers["cells segmentation"]
    assert result.data.shape == (4, 128, 128)
    rows = _rows(widget)
    assert len(rows) == 3 and all(ROW.match(text) for text in rows), rows
    assert sorted(_ranked_planes(widget)) == [1, 2, 3]  # plane 0 is annotated
    scores = [float(ROW.match(text).group(2)) for text in rows]
    assert scores == sorted(scores, reverse=True)  # least sure first
    assert [e.index for e in widget.ranking] == [(p,) for p in _ranked_planes(widget)]
    assert widget.status.text().startswith("ranked 3 planes")
    # the objects a row lists are the segmentation layer's objects of that plane (#21)
    for text in rows:
        plane, _, listed = ROW.match(text).groups()
        segmented = result.data[int(plane)]
        assert int(listed) == len(np.unique(segmented[segmented > 0])), (text, plane)
    uncertainty = viewer.layers["cells uncertainty"]
    assert uncertainty.data.shape == (4, 128, 128) and uncertainty.data.dtype == np.float32
    assert not uncertainty.data[0].any()  # the annotated plane is not scored
    assert all(uncertainty.data[p].any() for p in (1, 2, 3))
    assert uncertainty.blending == "additive" and uncertainty.opacity < 1
    assert tuple(uncertainty.scale) == tuple(image.scale)

    # 2 click the last row (the surest plane): the viewer goes there
    row = widget.next_list.count() - 1
    target = _ranked_planes(widget)[row]
    viewer.dims.set_point(0, 0.0)
    item = widget.next_list.item(row)
    widget.next_list.scrollToItem(item)
    rect = widget.next_list.visualItemRect(item)
    qtbot.mouseClick(widget.next_list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert current_plane(viewer, result, 1) == (target,)

    # 3 correct that plane in the result: erase one object, paint one with a huge id
    before = np.asarray(annotations.data).copy()
    plane = np.asarray(result.data[target]).copy()
    ids = [i for i in np.unique(plane) if i]
    if ids:
        where = np.nonzero(plane == ids[0])
        result.data_setitem((np.full(where[0].size, target),) + where, 0)
    ys, xs = np.mgrid[2:10, 2:10]
    result.data_setitem((np.full(ys.size, target), ys.ravel(), xs.ravel()), 4_000_000_000)
    edited = np.asarray(result.data[target]).copy()
    assert (edited == 4_000_000_000).sum() == 64 and (not ids or ids[0] not in edited)

    widget.use_plane_button.click()  # "Use plane as annotation"
    assert not _errors(notifications)
    copied = np.asarray(annotations.data[target])
    n = len(np.unique(edited[edited > 0]))
    assert set(np.unique(copied)) == set(range(n + 1))  # renumbered 1..n
    assert np.array_equal(copied > 0, edited > 0)
    for value in np.unique(edited[edited > 0]):  # one annotation id per result id
        assert len(np.unique(copied[edited == value])) == 1
    others = [p for p in range(4) if p != target]
    assert np.array_equal(np.asarray(annotations.data)[others], before[others])
    assert (target,) in training_plane_list(annotations)
    message = _infos(notifications)[-1]
    assert f"plane {target}" in message and "Ctrl+Z" in message and "replaced" not in message
    assert target not in _ranked_planes(widget)  # annotated now: not to annotate next

    # 4 one undo on the annotation layer restores the earlier plane (and its state)
    annotations.undo()
    assert np.array_equal(np.asarray(annotations.data), before)
    assert (target,) not in training_plane_list(annotations)
    annotations.redo()
    assert np.array_equal(np.asarray(annotations.data[target]), copied)

    # 5 a new model from 3 Train: the stack is segmented and ranked again by itself
    previous = widget.last_result
    entry = _session.set_trained(_retrained(tiny_model[0]), tiny_model[1], "retrained")
    assert widget.is_running
    wait_idle(qtbot, widget)
    assert not _errors(notifications)
    assert widget.last_result is not previous and widget.last_result[0] == "stack"
    assert widget._last_run.model is entry
    assert viewer.layers["cells segmentation"] is result
    assert (result.data[target] != 4_000_000_000).all()  # the result was replaced
    assert sorted(_ranked_planes(widget)) == sorted(set([1, 2, 3]) - {target})
    assert viewer.layers["cells uncertainty"] is uncertainty  # updated in place
    assert not uncertainty.data[target].any()


def test_use_plane_replaces_creates_and_refuses(viewer, cells, tiny_model, qtbot, notifications):
    image, truth = add_cells(viewer, cells)
    _session.set_trained(*tiny_model, "test model")
    widget = SegmentWidget(viewer)
    widget.image_combo.value = image
    widget.use_plane_button.click()  # nothing segmented yet
    assert "segment 'cells' first" in _errors(notifications)[-1]

    widget.rank_after.setChecked(False)
    widget.run("whole stack")
    wait_idle(qtbot, widget)
    assert widget.next_list.count() == 0  # not ranked: the box is unticked
    result = viewer.layers["cells segmentation"]
    # no annotation layer yet: one is made, as 1 Annotate makes it
    viewer.dims.set_point(0, 1.0)
    assert widget.use_plane_as_annotation() == (1,)
    annotations = viewer.layers["cells annotations"]
    assert annotations.metadata["napari_unet_image"] == "cells"
    assert annotations.data.dtype == np.uint16 and annotations.data.shape == (4, 128, 128)
    assert tuple(annotations.scale) == tuple(image.scale)
    assert "created the annotation layer" in _infos(notifications)[-1]

    # a plane annotated already is replaced (and says so); an empty result plane is marked
    annotations.data[2] = truth.data[2]
    result.data[2] = 0
    viewer.dims.set_point(0, 2.0)
    widget.use_plane_as_annotation()
    assert "replaced" in _infos(notifications)[-1]
    assert not np.asarray(annotations.data[2]).any()
    assert [2] in annotations.metadata[META_PLANES]
    assert (2,) in training_plane_list(annotations)
    annotations.undo()
    assert np.array_equal(np.asarray(annotations.data[2]), truth.data[2])

    # the annotation layer hidden (as one hides it to correct the result): copied all the same
    annotations.visible = False
    viewer.dims.set_point(0, 3.0)
    widget.use_plane_as_annotation()
    assert np.array_equal(np.asarray(annotations.data[3]) > 0, np.asarray(result.data[3]) > 0)
    assert not annotations.visible

    # shape mismatch: one clear notification, nothing changed
    viewer.layers.remove(result)
    viewer.add_labels(np.zeros((4, 64, 64), np.uint32), name="cells segmentation")
    count = len(_errors(notifications))
    widget.use_plane_button.click()
    assert len(_errors(notifications)) == count + 1
    assert "shape" in _errors(notifications)[-1]

    # a 2D image: nothing to rank
    flat = viewer.add_image(cells[0][0], name="flat")
    widget.image_combo.value = flat
    assert not widget.rank_button.isEnabled() and widget.next_hint.text() == NOTHING_TO_RANK
    assert widget.rank_planes() is None
    assert NOTHING_TO_RANK in _errors(notifications)[-1]


def test_plane_as_annotation_values():
    plane = np.array([[0, 7_000_000], [7_000_000, 65535]], np.uint32)
    out, count = plane_as_annotation(plane, "instances", True)
    assert out.tolist() == [[0, 1], [1, 65535]] and count == 1
    out, _ = plane_as_annotation(plane, "scribbles", True)
    assert out.tolist() == [[1, 2], [2, 65535]]
    out, _ = plane_as_annotation(plane, "classes", True)
    assert out.tolist() == [[0, 1], [1, 65535]]
    many = np.arange(100_000, 100_001 + MAX_OBJECTS, dtype=np.uint32)[None]  # 65535 ids
    with pytest.raises(AnnotationError, match="65534"):
        plane_as_annotation(many, "instances", True, "3")


def test_cancel_and_close_stop_the_ranking(viewer, cells, tiny_model, qtbot, notifications):
    long = np.concatenate([cells[0]] * 12)
    layer = viewer.add_image(long, name="long", contrast_limits=(0, 255))
    _session.set_trained(*tiny_model, "test model")
    widget = SegmentWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="segment")
    widget.image_combo.value = layer
    widget.rank_button.click()
    assert widget.is_running and not widget.rank_button.isEnabled()
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=30000)
    assert widget.status.text().startswith("ranking: plane")
    widget.cancel_button.click()
    wait_idle(qtbot, widget)
    assert widget.status.text().startswith("ranking cancelled")
    assert widget.next_list.count() == 0 and "long uncertainty" not in viewer.layers
    assert not _errors(notifications)

    # closing the dock stops a ranking and the widget no longer follows 3 Train
    listeners = len(_session.changed)
    widget.rank_planes()
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=30000)
    worker = widget.worker
    dock.titleBarWidget().close_button.click()
    assert widget._cancel.is_set() and not worker.is_running
    assert len(_session.changed) == listeners - 2
    qtbot.waitUntil(lambda: not widget.is_running, timeout=10000)
    assert "long uncertainty" not in viewer.layers


def test_one_loop_round_through_the_three_widgets(viewer, cells, qtbot, notifications):
    """As a user: train, segment the stack, go to the least sure plane, correct it, use it as
    annotation, continue training in 3 Train; 4 Segment segments and ranks again by itself."""
    image, truth = add_cells(viewer, cells)
    _, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "1 Annotate")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "3 Train")
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "4 Segment")
    annotate.import_labels(truth, [0])
    annotations = annotate.annotation_layer()
    configure_tiny(train, steps=6)
    train.start_training()
    wait_idle(qtbot, train)
    first = _session.trained()
    assert first is not None

    segment.image_combo.value = image
    segment.run("whole stack")
    wait_idle(qtbot, segment)
    assert sorted(_ranked_planes(segment)) == [1, 2, 3]
    top = _ranked_planes(segment)[0]
    item = segment.next_list.item(0)
    rect = segment.next_list.visualItemRect(item)
    qtbot.mouseClick(segment.next_list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    result = viewer.layers["cells segmentation"]
    assert current_plane(viewer, result, 1) == (top,)

    # the correction: the plane's true objects (what a careful annotator would paint)
    where = np.nonzero(np.ones(truth.data[top].shape, bool))
    result.data_setitem((np.full(where[0].size, top),) + where, truth.data[top][where])
    segment.use_plane_button.click()
    assert not _errors(notifications)
    assert np.array_equal(np.asarray(annotations.data[top]) > 0, truth.data[top] > 0)

    train.model_combo.value = CONTINUE
    assert train.continue_training(steps=4) is not None
    wait_idle(qtbot, train)
    second = _session.trained()
    assert second is not first and second.chain_steps == 6 + 4
    assert train.plot.steps[-1] == 10  # the loss curve went on
    # the continued model trained on both annotated planes, and 4 Segment followed it
    assert second.metadata.provenance["planes"] == 2
    qtbot.waitUntil(lambda: segment._last_run is not None and segment._last_run.model is second)
    wait_idle(qtbot, segment)
    assert not _errors(notifications)
    assert sorted(_ranked_planes(segment)) == sorted({1, 2, 3} - {top})

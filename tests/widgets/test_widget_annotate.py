"""The Annotate widget: annotation layers, schema colours, annotated planes, import, brushes."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels
from qtpy.QtCore import Qt
from widget_helpers import add_cells

from napari_unet._widgets.annotate import AnnotateWidget
from napari_unet.annotation.schema import IGNORE_LABEL

pytestmark = pytest.mark.viewer


def test_new_layer_matches_grayscale_stack(viewer, cells):
    image, _ = add_cells(viewer, cells)
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    layer = widget.new_annotation_layer()
    assert isinstance(layer, Labels)
    assert layer.name == "cells annotations"
    assert layer.data.shape == image.data.shape
    assert np.iinfo(layer.data.dtype).max >= IGNORE_LABEL
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert layer.metadata["napari_unet_image"] == "cells"
    assert layer.metadata["napari_unet_mode"] == "instances"
    # the schema is visible: ignore is grey, 0 transparent, objects coloured
    colours = layer.colormap.map(np.array([0, 1, IGNORE_LABEL]))
    assert colours[0][3] == 0
    assert colours[1][3] == 1
    np.testing.assert_allclose(colours[2][:3], [0.55, 0.55, 0.55], atol=0.01)
    assert widget.annotation_layer() is layer
    assert "background" in widget.schema_label.value


def test_rgb_and_multichannel_images(viewer):
    widget = AnnotateWidget(viewer)
    rgb = viewer.add_image(
        np.zeros((3, 40, 50, 3), np.uint8), rgb=True, name="rgb", scale=(2, 1, 1)
    )
    layer = widget.new_annotation_layer(rgb)
    assert layer.data.shape == (3, 40, 50)
    np.testing.assert_allclose(layer.scale, (2, 1, 1))
    multi = viewer.add_image(
        np.zeros((3, 2, 40, 50), np.uint16), name="two channels", scale=(4, 1, 0.5, 0.5)
    )
    widget.image_combo.value = multi
    widget.channel_combo.value = 1  # "axis 1 (2)"
    layer = widget.new_annotation_layer()
    assert layer.data.shape == (3, 40, 50)
    np.testing.assert_allclose(layer.scale, (4, 0.5, 0.5))
    assert multi.metadata["napari_unet_channel_axis"] == 1


def test_schema_modes_change_colours(viewer, cells):
    add_cells(viewer, cells)
    widget = AnnotateWidget(viewer)
    widget.mode_combo.value = "scribbles"
    layer = widget.new_annotation_layer()
    assert layer.metadata["napari_unet_mode"] == "scribbles"
    background = layer.colormap.map(np.array([1]))[0]
    assert background[2] > 0.9 and background[0] < 0.3  # blue
    assert "background stroke" in widget.schema_label.value
    widget.mode_combo.value = "classes"
    assert layer.metadata["napari_unet_mode"] == "classes"
    assert widget.use_brush("background") == 0
    assert layer.mode == "erase"
    assert widget.use_brush("object") == 1


def test_import_mark_and_jump(viewer, cells, qtbot):
    image, truth = add_cells(viewer, cells)
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    copied = widget.import_labels(truth, [0, 2])
    layer = widget.annotation_layer()
    assert copied == [(0,), (2,)]
    np.testing.assert_array_equal(layer.data[0], truth.data[0])
    assert not layer.data[1].any()
    assert widget.annotated_planes() == [(0,), (2,)]
    assert widget.plane_list.count() == 2

    viewer.dims.set_point(0, image.data_to_world((3, 0, 0))[0])
    assert widget.mark_current_plane() == (3,)
    assert widget.annotated_planes() == [(0,), (2,), (3,)]
    assert layer.metadata["napari_unet_planes"] == [[0], [2], [3]]
    assert "marked, empty" in widget.plane_list.item(2).text()
    widget.mark_current_plane(False)
    assert widget.annotated_planes() == [(0,), (2,)]

    # click-to-jump
    item = widget.plane_list.item(1)
    widget.plane_list.itemClicked.emit(item)
    assert item.data(Qt.UserRole) == [2]
    assert round(layer.world_to_data(viewer.dims.point)[0]) == 2

    # painting refreshes the list (debounced)
    viewer.dims.set_point(0, image.data_to_world((1, 0, 0))[0])
    layer.selected_label = 7
    layer.paint((1, 60, 60), 7)
    qtbot.waitUntil(lambda: widget.plane_list.count() == 3, timeout=3000)
    assert widget.annotated_planes() == [(0,), (1,), (2,)]


def test_brush_helpers(viewer, cells):
    image, truth = add_cells(viewer, cells)
    viewer.dims.set_point(0, image.data_to_world((0, 0, 0))[0])
    widget = AnnotateWidget(viewer)
    widget.import_labels(truth, [0])
    layer = widget.annotation_layer()
    assert widget.use_ignore_label() == IGNORE_LABEL
    assert layer.selected_label == IGNORE_LABEL
    assert layer.mode == "paint"
    widget.ignore_button.click()
    assert layer.selected_label == IGNORE_LABEL
    new_id = widget.use_brush("object")
    assert new_id == int(truth.data[0].max()) + 1
    assert viewer.layers.selection.active is layer


def test_import_refuses_mismatched_shape(viewer, cells, notifications):
    add_cells(viewer, cells)
    widget = AnnotateWidget(viewer)
    widget.new_annotation_layer()
    other = viewer.add_labels(np.zeros((2, 10, 10), np.uint8), name="small")
    widget.source_combo.value = other
    widget.import_button.click()  # the button path: a notification, no exception
    assert any("do not" in m or "shape" in m for _, m in notifications)
    widget.import_planes.value = "zero"
    widget.import_button.click()
    assert any("cannot read the plane list" in m for _, m in notifications)

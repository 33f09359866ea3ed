"""1 Annotate brings annotations in and out: per-frame masks, 2D layers into one plane, and
annotation files that survive napari's own Save and Open (issue #21, points 1-2)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap
from skimage.io import imsave

from napari_unet._widgets import _common
from napari_unet._widgets.annotate import AnnotateWidget
from napari_unet.annotation.schema import IGNORE_LABEL
from napari_unet.io import annotation_layer

pytestmark = pytest.mark.viewer

SHAPE = (10, 52, 70)


def _stack_and_widget(viewer, scale=(2.0, 0.5, 0.5)):
    rng = np.random.default_rng(0)
    image = viewer.add_image(rng.random(SHAPE, np.float32), name="frames", scale=scale)
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.new_annotation_layer(image)
    return image, widget


def _mask(n_objects: int, seed: int) -> np.ndarray:
    """A (Y, X) instance mask with ``n_objects`` separate rectangles."""
    mask = np.zeros(SHAPE[1:], np.uint16)
    for k in range(n_objects):
        y, x = divmod(k, 6)
        mask[2 + 8 * y : 7 + 8 * y, 2 + 11 * x : 10 + 11 * x] = 3 * k + seed + 1
    return mask


def _infos(notifications):
    return [m for s, m in notifications if s == "info"]


def _errors(notifications):
    return [m for s, m in notifications if s == "error"]


def test_layer_metadata_keys_agree():
    assert annotation_layer.LAYER_IMAGE == _common.META_IMAGE
    assert annotation_layer.LAYER_MODE == _common.META_MODE
    assert annotation_layer.LAYER_PLANES == _common.META_PLANES


def test_2d_labels_layer_goes_into_one_plane(viewer, notifications):
    image, widget = _stack_and_widget(viewer)
    layer = widget.annotation_layer()
    frame = viewer.add_labels(_mask(4, 0), name="man_seg001")
    widget.source_combo.value = frame
    widget.import_planes.value = "1"
    widget.import_button.click()  # the button path, as a user clicks it
    assert not _errors(notifications)
    np.testing.assert_array_equal(layer.data[1], frame.data)
    assert not layer.data[[0, *range(2, 10)]].any()
    assert widget.annotated_planes() == [(1,)]
    assert _infos(notifications)[-1] == "imported 'man_seg001' into plane 1: 4 objects"
    assert widget.import_status.value == _infos(notifications)[-1]

    # no plane typed: the plane on screen; an empty 2D mask still marks its plane annotated
    viewer.dims.set_point(0, image.data_to_world((6, 0, 0))[0])
    widget.import_planes.value = ""
    empty = viewer.add_labels(np.zeros(SHAPE[1:], np.uint8), name="empty frame")
    widget.source_combo.value = empty
    widget.import_button.click()
    assert widget.annotated_planes() == [(1,), (6,)]
    assert "marked, empty" in widget.plane_list.item(1).text()
    assert _infos(notifications)[-1] == "imported 'empty frame' into plane 6: 0 objects"

    # two planes for one 2D frame: refused in one line, nothing changed
    widget.import_planes.value = "2, 3"
    widget.import_button.click()
    assert "name one plane" in _errors(notifications)[-1]
    assert widget.annotated_planes() == [(1,), (6,)]


def test_per_frame_mask_files_fill_the_matching_planes(viewer, notifications, tmp_path):
    _, widget = _stack_and_widget(viewer)
    layer = widget.annotation_layer()
    one, seven = _mask(5, 0), _mask(3, 100)
    tifffile.imwrite(tmp_path / "man_seg001.tif", one)
    tifffile.imwrite(tmp_path / "man_seg007.tif", seven)
    widget.mask_files.value = [tmp_path / "man_seg007.tif", tmp_path / "man_seg001.tif"]
    widget.masks_button.click()
    assert not _errors(notifications)
    np.testing.assert_array_equal(layer.data[1], one)
    np.testing.assert_array_equal(layer.data[7], seven)
    assert not layer.data[[0, 2, 3, 4, 5, 6, 8, 9]].any()
    assert widget.annotated_planes() == [(1,), (7,)]
    assert layer.metadata["napari_unet_planes"] == [[1], [7]]
    message = "imported 2 mask files into planes 1, 7: 5 and 3 objects"
    assert _infos(notifications)[-1] == message
    assert widget.import_status.value == message

    # cellpose's PNG masks beside their images, imported as a folder
    cp = tmp_path / "cellpose"
    cp.mkdir()
    imsave(cp / "img_0003.png", np.zeros(SHAPE[1:], np.uint8), check_contrast=False)
    imsave(cp / "img_0003_cp_masks.png", _mask(2, 7), check_contrast=False)
    counts = widget.import_mask_files([cp])
    assert counts == {3: 2}
    np.testing.assert_array_equal(layer.data[3], _mask(2, 7))
    assert widget.annotated_planes() == [(1,), (3,), (7,)]


def test_bad_mask_files_give_one_short_line_and_change_nothing(viewer, notifications, tmp_path):
    _, widget = _stack_and_widget(viewer)
    layer = widget.annotation_layer()
    deep = tmp_path / ("a_folder_with_a_rather_long_name_" * 3)
    deep.mkdir()
    tifffile.imwrite(deep / "man_seg002.tif", _mask(2, 0))
    tifffile.imwrite(
        deep / "man_seg004_with_an_equally_long_file_name_here.tif", _mask(2, 0)[:, :60]
    )
    widget.mask_files.value = sorted(deep.iterdir())
    widget.masks_button.click()
    (error,) = _errors(notifications)
    full = widget.import_status.value
    assert "shape (52, 60), the planes are (52, 70)" in full
    assert widget.import_status.tooltip == full
    assert "\n" not in error and len(error) <= 100
    assert error == full or error.endswith("\u2026")
    assert not layer.data.any() and widget.annotated_planes() == []  # plane 2 not written

    tifffile.imwrite(tmp_path / "t1_z3.tif", _mask(1, 0))
    tifffile.imwrite(tmp_path / "t2_z4.tif", _mask(1, 0))
    widget.mask_files.value = [tmp_path / "t1_z3.tif", tmp_path / "t2_z4.tif"]
    widget.masks_button.click()
    assert "ambiguous numbering" in _errors(notifications)[-1]
    widget.match_combo.value = "order"
    widget.masks_button.click()
    assert widget.annotated_planes() == [(0,), (1,)]


def test_masks_match_the_images_own_file_names(viewer, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for n in (3, 5, 10):
        imsave(frames / f"img_{n:04d}.png", np.full(SHAPE[1:], n, np.uint8), check_contrast=False)
    (image,) = viewer.open(frames, plugin="napari", stack=False)
    assert image.data.shape == (3, *SHAPE[1:])
    widget = AnnotateWidget(viewer)
    widget.new_annotation_layer(image)
    imsave(tmp_path / "img_0010_cp_masks.png", _mask(2, 0), check_contrast=False)
    assert widget.import_mask_files([tmp_path / "img_0010_cp_masks.png"]) == {2: 2}
    assert widget.annotated_planes() == [(2,)]


def _painted_layer(viewer, widget, image):
    """Annotations with objects (and ignore) on plane 2 and an 'annotated, empty' plane 5."""
    layer = widget.annotation_layer()
    layer.data[2] = _mask(4, 0)
    layer.data[2, 40:45, 50:60] = IGNORE_LABEL
    layer.refresh()
    viewer.dims.set_point(0, image.data_to_world((5, 0, 0))[0])
    widget.mark_current_plane()
    assert widget.annotated_planes() == [(2,), (5,)]
    return layer


def test_napari_save_and_open_keep_the_annotations(viewer, tmp_path):
    image, widget = _stack_and_widget(viewer)
    layer = _painted_layer(viewer, widget, image)
    saved = np.array(layer.data)
    path = tmp_path / "frames.unet-annotations.tif"
    # napari's own Save picks the plugin's writer by the file ending (no plugin named)
    assert layer.save(str(path)) == [str(path)]
    again = tmp_path / "again.unet-annotations.tif"
    assert layer.save(str(again), plugin="napari-unet") == [str(again)]
    viewer.layers.remove(layer)
    assert widget.annotation_layer() is None

    (opened,) = viewer.open(path, plugin="napari-unet")
    assert isinstance(opened, Labels)
    assert opened.name == "frames annotations"
    assert opened.data.dtype == saved.dtype
    np.testing.assert_array_equal(opened.data, saved)
    np.testing.assert_allclose(opened.scale, image.scale)
    # the widget offers it as annotations, with the same planes, the empty one included
    assert any(v is opened for v in widget.labels_combo.choices)
    widget.labels_combo.value = opened
    assert widget.annotated_planes() == [(2,), (5,)]
    assert "marked, empty" in widget.plane_list.item(1).text()
    assert isinstance(opened.colormap, DirectLabelColormap)  # the schema's colours
    assert widget.image_combo.value is image


def test_save_and_open_buttons_round_trip(viewer, tmp_path, notifications):
    image, widget = _stack_and_widget(viewer)
    widget.mode_combo.value = "classes"
    layer = _painted_layer(viewer, widget, image)
    written = widget.save_annotations(tmp_path / "mine")
    assert written.name == "mine.unet-annotations.tif"
    assert _infos(notifications)[-1] == (
        "saved 'frames annotations' (2 annotated planes) to mine.unet-annotations.tif"
    )
    opened = widget.open_annotations(written)
    assert widget.annotation_layer() is opened and opened is not layer
    assert opened.metadata["napari_unet_mode"] == "classes"
    assert widget.mode_combo.value == "classes"
    np.testing.assert_array_equal(opened.data, layer.data)
    assert widget.annotated_planes() == [(2,), (5,)]

    # what napari's builtin TIFF writer saves has no annotation metadata: said in one line
    plain = tmp_path / "plain.tif"
    layer.save(str(plain), plugin="napari")
    with pytest.raises(Exception, match="plain.tif: not a napari-unet annotation file"):
        widget.open_annotations(plain)


def test_labels_too_large_for_the_layer_are_refused(viewer, tmp_path, notifications):
    from napari_unet.io.annotation_file import save_annotations

    _, widget = _stack_and_widget(viewer)
    path = tmp_path / "small.unet-annotations.tif"
    save_annotations(path, np.zeros(SHAPE, np.uint8), {"image": "frames", "planes": [[0]]})
    layer = widget.open_annotations(path)
    assert layer.data.dtype == np.uint8
    tifffile.imwrite(tmp_path / "man_seg003.tif", np.full(SHAPE[1:], 300, np.uint16))
    widget.mask_files.value = [tmp_path / "man_seg003.tif"]
    widget.masks_button.click()
    assert (
        "label 300 does not fit the annotations (uint8, at most 255)" in _errors(notifications)[-1]
    )
    assert not layer.data.any() and widget.annotated_planes() == [(0,)]

"""The Weight map widget: the layer it shows equals the library's weight map."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import add_cells

from napari_unet._widgets.annotate import AnnotateWidget
from napari_unet._widgets.weightmap import WeightMapWidget
from napari_unet.annotation.schema import IGNORE_LABEL, AnnotationConfig, plane_targets
from napari_unet.annotation.weightmap import WeightMapConfig
from napari_unet.errors import AnnotationError

pytestmark = pytest.mark.viewer


def test_weight_map_layer(viewer, cells, qtbot):
    image, truth = add_cells(viewer, cells)
    annotate = AnnotateWidget(viewer)
    annotate.import_labels(truth, [0, 2])
    labels = annotate.annotation_layer()
    labels.data[2, :10, :10] = IGNORE_LABEL
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.labels_combo.value = labels
    widget.w0.value = 8.0
    widget.sigma.value = 4.0
    widget.compute("all annotated planes")
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30000)
    layer = viewer.layers["cells annotations weight map"]
    assert layer.data.shape == labels.data.shape
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    # transparent at the base weight (1 here), so only what the border term adds shows
    assert layer.colormap.map([0.0])[0, 3] == 0 and layer.colormap.map([1.0])[0, 3] > 0.9
    assert layer.contrast_limits[0] == pytest.approx(1.0)
    assert viewer.layers.index(layer) == viewer.layers.index(labels) - 1
    # the weights training uses (the default three-class targets), ignored pixels weigh 0
    config = WeightMapConfig(w0=8.0, sigma=4.0)
    plane = labels.data[2].astype(np.int64)
    expected = plane_targets(plane, AnnotationConfig(weight_map=config))[1]
    assert expected.max() > 2 and not expected[:10, :10].any()
    np.testing.assert_allclose(layer.data[2], expected, rtol=1e-4)
    assert not layer.data[1].any()  # not annotated: no weights
    assert labels.metadata["napari_unet_weightmap"]["w0"] == 8.0  # training will use it
    assert layer.contrast_limits[1] >= float(expected.max()) - 1e-3

    # "current plane" with the Falk variant only touches the plane on screen
    viewer.dims.set_point(0, image.data_to_world((0, 0, 0))[0])
    widget.variant.value = "falk"
    assert not widget.w0.visible and widget.lam.visible
    widget.compute("current plane")
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30000)
    falk_config = AnnotationConfig(weight_map=WeightMapConfig(variant="falk"))
    falk = plane_targets(labels.data[0].astype(np.int64), falk_config)[1]
    np.testing.assert_allclose(layer.data[0], falk, rtol=1e-5)
    np.testing.assert_allclose(layer.data[2], expected, rtol=1e-4)


def _with_and_without(viewer, layer) -> tuple[np.ndarray, np.ndarray]:
    """The canvas with ``layer`` shown and hidden."""
    shown = viewer.screenshot(canvas_only=True, flash=False)
    layer.visible = False
    hidden = viewer.screenshot(canvas_only=True, flash=False)
    layer.visible = True
    return shown, hidden


def test_weight_map_shows_only_the_gaps(viewer, qtbot):
    """Apart objects: the map adds nothing on screen and the status says why; a plane that is
    not annotated shows nothing and its error replaces the status; touching objects glow."""
    rng = np.random.default_rng(0)
    image = viewer.add_image(rng.random((3, 64, 64)).astype(np.float32), name="img")
    annotate = AnnotateWidget(viewer)
    annotate.image_combo.value = image
    labels = annotate.new_annotation_layer()
    labels.data[0, 8:20, 8:20], labels.data[0, 40:52, 40:52] = 1, 2  # far apart
    labels.data[1, 10:40, 10:25], labels.data[1, 10:40, 25:40] = 1, 2  # touching
    labels.visible = False  # the image and the weights only
    widget = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.labels_combo.value = labels
    viewer.dims.set_point(0, 0)
    widget.compute("current plane")
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30000)
    assert "no touching objects on plane 0" in widget.status.text()
    layer = viewer.layers["img annotations weight map"]
    shown, hidden = _with_and_without(viewer, layer)
    np.testing.assert_array_equal(shown, hidden)  # no opaque sheet over the image

    viewer.dims.set_point(0, 2)
    with pytest.raises(AnnotationError, match="plane 2 is not annotated"):
        widget.compute("current plane")
    assert "plane 2 is not annotated" in widget.status.text()
    shown, hidden = _with_and_without(viewer, layer)
    np.testing.assert_array_equal(shown, hidden)  # not black: nothing at all

    viewer.dims.set_point(0, 1)
    widget.compute("current plane")
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30000)
    assert "no touching" not in widget.status.text()
    shown, hidden = _with_and_without(viewer, layer)
    differ = np.any(shown != hidden, axis=-1)
    assert 0 < differ.mean() < 0.2  # the gap glows, the rest of the image is untouched


def test_weight_map_errors_are_notifications(viewer, cells, notifications):
    add_cells(viewer, cells)
    annotate = AnnotateWidget(viewer)
    annotate.new_annotation_layer()
    widget = WeightMapWidget(viewer)
    widget.scope.value = "all annotated planes"
    widget.compute_button.click()
    assert any("no annotated plane" in message for _, message in notifications)
    assert widget.worker is None


def test_settings_persist_and_reset(viewer):
    """A new widget shows the last settings (kept in the settings dir); Reset puts back the
    dataclass defaults."""
    from napari_unet._widgets.segment import SegmentWidget
    from napari_unet._widgets.train import TrainWidget
    from napari_unet.training.trainer import TrainConfig

    weights = WeightMapWidget(viewer)
    weights.variant.value, weights.w0.value = "falk", 7.0
    train = TrainWidget(viewer)
    train.steps.value, train.lr.value, train.tile.value = 123, 0.002, 96
    segment = SegmentWidget(viewer)
    segment.tta.value, segment.min_size.value = True, 40

    weights, train, segment = WeightMapWidget(viewer), TrainWidget(viewer), SegmentWidget(viewer)
    assert weights.config() == WeightMapConfig(variant="falk", w0=7.0)
    config = train.train_config()
    assert (config.steps, config.lr, config.tile) == (123, 0.002, 96)
    assert segment.tta.value and segment.min_size.value == 40

    for widget in (weights, train, segment):
        widget.settings.button.native.click()
    assert weights.config() == WeightMapConfig()
    assert train.train_config() == TrainConfig(device=train.device.value)
    assert not segment.tta.value and segment.min_size.value == -1  # auto
    again = TrainWidget(viewer)
    assert again.train_config() == TrainConfig(device=again.device.value)

"""The Segment widget: model sources, cancel, lazy (dask) stacks, RGB images, errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from widget_helpers import add_cells, train_tiny_model, wait_idle

from napari_unet._widgets import _session
from napari_unet._widgets.segment import SegmentWidget

pytestmark = pytest.mark.viewer


@pytest.fixture(scope="module")
def tiny_model(cells):
    """A tiny network trained for a few steps with the library (once per module)."""
    return train_tiny_model(cells, steps=5)


@pytest.fixture
def trained(tiny_model):
    """The tiny network as "the model just trained"."""
    return _session.set_trained(*tiny_model, "test model")


class CountingArray:
    """A numpy-like array that records every read (to check that stacks are read lazily)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[tuple[int, ...]] = []

    def __getitem__(self, key):
        out = self.data[key]
        self.reads.append(out.shape)
        return out


def test_whole_stack_cancel_leaves_layers_alone(viewer, cells, trained, qtbot, notifications):
    image, _ = add_cells(viewer, cells)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert "test model" in widget.model_info.value
    # a long stack so that there is time to cancel
    big = viewer.add_image(np.concatenate([cells[0]] * 40), name="long", contrast_limits=(0, 255))
    widget.image_combo.value = big
    layers_before = [layer.name for layer in viewer.layers]
    widget.run("whole stack")
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=30000)
    widget.cancel_button.click()
    wait_idle(qtbot, widget)
    assert widget.last_result == ("cancelled",)
    assert [layer.name for layer in viewer.layers] == layers_before
    assert widget.status.text().startswith("cancelled")
    assert not [m for s, m in notifications if s.lower() == "error"]
    # the viewer and the widget still work
    widget.image_combo.value = image
    widget.run("whole stack")
    wait_idle(qtbot, widget)
    assert viewer.layers["cells segmentation"].data.shape == image.data.shape


def test_dask_stack_is_read_plane_by_plane(viewer, cells, trained, qtbot):
    source = CountingArray(cells[0])
    lazy = da.from_array(source, chunks=(1, 128, 128), asarray=False)
    layer = viewer.add_image(lazy, name="lazy", contrast_limits=(0, 255))
    widget = SegmentWidget(viewer)
    widget.image_combo.value = layer
    source.reads.clear()
    widget.run("whole stack")
    wait_idle(qtbot, widget)
    result = viewer.layers["lazy segmentation"]
    assert result.data.shape == cells[0].shape
    assert source.reads and all(shape[0] <= 1 or len(shape) == 2 for shape in source.reads)


def test_rgb_image_with_a_one_channel_model(viewer, trained, qtbot, notifications):
    rgb = viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="rgb")
    widget = SegmentWidget(viewer)
    widget.image_combo.value = rgb
    widget.run("current plane")
    wait_idle(qtbot, widget)
    assert any("channel" in m for s, m in notifications if s.lower() == "error")
    assert "rgb segmentation" not in viewer.layers


def test_missing_model_is_a_notification(viewer, cells, qtbot, notifications):
    add_cells(viewer, cells)
    widget = SegmentWidget(viewer)
    assert widget.run("whole stack") is None
    assert any("no model trained yet" in m for _, m in notifications)
    widget.source.value = "model file..."
    widget.model_path.value = "/nonexistent/model.safetensors"
    widget.run_button.click()  # the file is read in the worker
    wait_idle(qtbot, widget)
    assert any("does not exist" in m for _, m in notifications)
    assert widget.run_button.isEnabled()

"""The Segment widget: model sources, cancel, lazy (dask) stacks, RGB images, errors."""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np
import pytest
from widget_helpers import add_cells, train_tiny_model, wait_idle

from napari_unet._widgets import _session
from napari_unet._widgets.segment import SegmentWidget
from napari_unet.io.modelfile import read_metadata

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


def _recorded(metadata, fill_holes=True):
    """``metadata`` as 3 Train writes it: with the settings derived from the annotations."""
    three = metadata.architecture.num_classes == 3
    derived = {
        "min_size": 20,
        "fill_holes": fill_holes,
        "object_diameter": 18.0,
        "method": "relative-cores",
        "foreground_classes": [1, 2] if three else [1],
        "core_ratio": 0.6,
        "derived_from": "min size = a quarter of the smallest of 12 annotated objects",
    }
    return dataclasses.replace(metadata, postprocess=derived)


def _count_forward(model, monkeypatch):
    """Count the network's forward passes: a counter on the real model (no mock)."""
    model.forward_calls = 0
    forward = model.forward

    def counted(*args, **kwargs):
        model.forward_calls += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counted, raising=False)
    return model


@pytest.mark.parametrize("scope", ["current plane", "whole stack"])
def test_instance_settings_relabel_without_the_network(
    viewer, cells, tiny_model, qtbot, scope, monkeypatch
):
    """Changing min size / fill holes re-labels the planes segmented last from their kept
    network output: the network is not run again, and the labels follow the settings."""
    from napari_unet.annotation.derived import describe

    model, metadata = tiny_model[0], _recorded(tiny_model[1])
    entry = _session.set_trained(_count_forward(model, monkeypatch), metadata, "test model")
    image, _ = add_cells(viewer, cells)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    # the form starts from what the model file records, and says what was derived from what
    assert widget.fill_holes.value
    assert widget.derived.value == describe(metadata.postprocess)
    assert widget.min_size.native.text() == "auto: 20 px"
    assert widget.derived.native.isVisibleTo(widget)
    widget.min_size.value = 0
    widget.run(scope)
    wait_idle(qtbot, widget)
    layer = viewer.layers["cells segmentation"]
    before = np.array(layer.data)
    assert before.any()
    calls = entry.model.forward_calls
    assert calls > 0 and widget.cache.planes

    widget.min_size.value = 10**6  # larger than any object: all are removed
    qtbot.waitUntil(lambda: "re-labelled" in widget.status.text(), timeout=30000)
    wait_idle(qtbot, widget)
    assert not layer.data.any()
    assert "the network was not run" in widget.status.text()
    widget.min_size.value = 0  # back: the same objects again
    qtbot.waitUntil(lambda: layer.data.any(), timeout=30000)
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(layer.data, before)
    widget.fill_holes.value = not widget.fill_holes.value
    wait_idle(qtbot, widget)
    qtbot.wait(300)
    wait_idle(qtbot, widget)
    assert widget.core_ratio.enabled  # a new model parts objects at relative cores
    widget.status.setText("")
    widget.core_ratio.value = 0.3
    qtbot.waitUntil(lambda: "re-labelled" in widget.status.text(), timeout=30000)
    wait_idle(qtbot, widget)
    assert entry.model.forward_calls == calls  # never the network again

    # another image drops the kept output: changing a setting then only sets it
    other = viewer.add_image(cells[0][0], name="other")
    widget.image_combo.value = other
    assert not widget.cache.planes
    widget.min_size.value = 10**6
    qtbot.wait(400)
    wait_idle(qtbot, widget)
    assert layer.data.any()


def test_derived_settings_line_of_a_model_file(viewer, tiny_model, tmp_path):
    from napari_unet.annotation.derived import describe
    from napari_unet.io.modelfile import save_model

    model, metadata = tiny_model[0], _recorded(tiny_model[1], fill_holes=False)
    path = tmp_path / "m.safetensors"
    save_model(path, model, metadata)
    widget = SegmentWidget(viewer)
    widget.fill_holes.value = True
    assert not widget.derived.native.isVisibleTo(widget)  # no model yet
    widget.model_path.value = str(path)
    assert widget.derived.value == describe(metadata.postprocess)
    assert "12 annotated objects" in widget.derived.value
    assert widget.derived.native.isVisibleTo(widget)
    assert not widget.fill_holes.value  # what the file records


def test_neck_depth_starts_from_the_model_file_and_relabels_live(viewer, tiny_model, tmp_path):
    """A model that parts objects at necks shows its recorded depth; one that does not keeps the
    control greyed out."""
    from napari_unet.io.modelfile import save_model

    model, metadata = tiny_model[0], _recorded(tiny_model[1])
    cores = tmp_path / "cores.safetensors"
    save_model(cores, model, metadata)
    necks = tmp_path / "necks.safetensors"
    recorded = {**metadata.postprocess, "method": "necks", "neck_depth": 0.3}
    save_model(necks, model, dataclasses.replace(metadata, postprocess=recorded))
    widget = SegmentWidget(viewer)
    widget.model_path.value = str(necks)
    assert widget.neck_depth.value == pytest.approx(0.3) and widget.neck_depth.enabled
    assert widget.segment_config(read_metadata(necks)).postprocess.neck_depth == pytest.approx(0.3)
    widget.neck_depth.value = 0.5
    assert widget.segment_config(read_metadata(necks)).postprocess.neck_depth == pytest.approx(0.5)
    assert not widget.core_ratio.native.isVisibleTo(widget)
    widget.model_path.value = str(cores)
    assert not widget.neck_depth.enabled and not widget.neck_depth.native.isVisibleTo(widget)


def test_core_level_starts_from_the_model_file_and_relabels_without_the_network(
    viewer, tiny_model, tmp_path
):
    """A model parting objects at relative cores shows its recorded level; changing it
    re-labels the kept planes from the cached network output (the network is not run)."""
    from napari_unet.io.modelfile import save_model

    model, metadata = tiny_model[0], _recorded(tiny_model[1])
    path = tmp_path / "relative.safetensors"
    recorded = {**metadata.postprocess, "method": "relative-cores", "core_ratio": 0.6}
    save_model(path, model, dataclasses.replace(metadata, postprocess=recorded))
    widget = SegmentWidget(viewer)
    widget.model_path.value = str(path)
    assert widget.core_ratio.value == pytest.approx(0.6) and widget.core_ratio.enabled
    assert widget.core_ratio.native.isVisibleTo(widget)
    assert not widget.neck_depth.native.isVisibleTo(widget)
    post = widget.segment_config(read_metadata(path)).postprocess
    assert post.method == "relative-cores" and post.core_ratio == pytest.approx(0.6)
    widget.core_ratio.value = 0.3
    post = widget.segment_config(read_metadata(path)).postprocess
    assert post.core_ratio == pytest.approx(0.3)


def test_join_width_starts_from_the_model_file_and_files_without_it_do_not_join(
    viewer, tiny_model, tmp_path
):
    """A new model records the join width (shown beside the core level, changed live); a file
    written before joining shows 0 and segments as before."""
    from napari_unet.io.modelfile import save_model

    model, metadata = tiny_model[0], _recorded(tiny_model[1])
    relative = {**metadata.postprocess, "method": "relative-cores", "core_ratio": 0.6}
    older, joined = tmp_path / "older.safetensors", tmp_path / "joined.safetensors"
    save_model(older, model, dataclasses.replace(metadata, postprocess=relative))
    recorded = {**relative, "join_wide": 1.0}
    save_model(joined, model, dataclasses.replace(metadata, postprocess=recorded))
    widget = SegmentWidget(viewer)
    widget.model_path.value = str(joined)
    assert widget.join_wide.value == pytest.approx(1.0)
    assert widget.join_wide.native.isVisibleTo(widget)
    widget.join_wide.value = 1.5
    assert widget.segment_config(read_metadata(joined)).postprocess.join_wide == pytest.approx(1.5)
    widget.model_path.value = str(older)
    assert widget.join_wide.value == 0
    assert not widget.segment_config(read_metadata(older)).postprocess.join_wide

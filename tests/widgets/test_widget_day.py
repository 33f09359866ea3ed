"""A biologist's whole day in the widgets (#21), scripted: open a stack from a TIFF file, import
per-frame mask files, save and reopen the annotations, compute the weight map, train, segment,
correct a plane, continue training, export. A real viewer, the widgets opened from the Plugins
menu, a tiny network and a few steps; something that could fail is asserted at every step."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import tifffile
import yaml
from widget_helpers import configure_tiny, wait_idle

from napari_unet._widgets import _session
from napari_unet._widgets.annotate import training_plane_list
from napari_unet.sample_data import CellSampleConfig, make_cell_stack

pytestmark = pytest.mark.viewer

NAMES = ("1 Annotate", "2 Weight map", "3 Train", "4 Segment", "5 Export")
STEPS, MORE = 30, 4


def _objects(plane) -> int:
    plane = np.asarray(plane)
    return len(np.unique(plane[plane > 0]))


def _centre(plane: np.ndarray, tile: int) -> np.ndarray:
    top, left = (plane.shape[0] - tile) // 2, (plane.shape[1] - tile) // 2
    return plane[top : top + tile, left : left + tile]


def _errors(notifications) -> list[str]:
    return [m for severity, m in notifications if severity.lower() == "error"]


def test_a_whole_day(viewer, qtbot, tmp_path, notifications):
    # the morning's files: a 6-plane stack and the masks of planes 0, 2 and 4 (CTC's names)
    image, truth = make_cell_stack(6, CellSampleConfig(shape=(96, 96), n_cells=6), seed=2)
    raw = image  # uint8, as a microscope writes it
    tifffile.imwrite(tmp_path / "cells.tif", raw)
    masks = [tmp_path / f"man_seg{i:03d}.tif" for i in (0, 2, 4)]
    for i, path in zip((0, 2, 4), masks, strict=True):
        tifffile.imwrite(path, truth[i].astype(np.uint16))

    # open the stack as File > Open does, and the five widgets from the Plugins menu
    (layer,) = viewer.open(str(tmp_path / "cells.tif"))
    assert layer.name == "cells" and layer.data.shape == (6, 96, 96)
    docks = {name: viewer.window.add_plugin_dock_widget("napari-unet", name)[1] for name in NAMES}
    annotate, weights, train, segment, export = docks.values()

    # 1 Annotate: import the mask files; each lands in its plane, the planes count as annotated
    assert annotate.image_combo.value is layer
    counts = annotate.import_mask_files(masks)
    annotations = annotate.annotation_layer()
    assert sorted(counts) == [0, 2, 4] and all(n > 0 for n in counts.values())
    assert annotate.annotated_planes(annotations) == [(0,), (2,), (4,)]
    np.testing.assert_array_equal(annotations.data[2], truth[2])

    # save the annotations, remove the layer, open the file again with the plugin's reader
    saved = annotate.save_annotations(tmp_path / "cells", annotations)
    assert saved.name == "cells.unet-annotations.tif" and saved.is_file()
    data = np.array(annotations.data)
    viewer.layers.remove(annotations)
    (annotations,) = viewer.open(str(saved), plugin="napari-unet")
    np.testing.assert_array_equal(annotations.data, data)
    assert training_plane_list(annotations) == [(0,), (2,), (4,)]
    annotate.labels_combo.value = annotations
    assert annotate.annotated_planes() == [(0,), (2,), (4,)]

    # 2 Weight map of every annotated plane
    weights.labels_combo.value = annotations
    weights.compute("all annotated planes")
    qtbot.waitUntil(lambda: weights.worker is None, timeout=30000)
    weight_map = viewer.layers[f"{annotations.name} weight map"].data
    assert weight_map[[0, 2, 4]].max() > 2 and not weight_map[1].any()

    # 3 Train a tiny model for a few steps; with 3 annotated planes none is left to score on
    train.labels_combo.value = annotations
    assert train.image_combo.value is layer
    configure_tiny(train, steps=STEPS)
    assert train.start_training() is not None
    wait_idle(qtbot, train)
    assert train.events[-1].kind == "done" and _session.trained().chain_steps == STEPS
    assert train.accuracy.text().startswith("No accuracy figure: every annotated plane")

    # 4 Segment the whole stack
    segment.image_combo.value = layer
    segment.run("whole stack")
    wait_idle(qtbot, segment)
    result = viewer.layers["cells segmentation"]
    objects = [_objects(result.data[i]) for i in range(6)]
    assert result.data.shape == (6, 96, 96) and min(objects) > 0

    # correct plane 1 (never annotated): paint one object more, use the plane as annotation
    viewer.dims.set_point(0, 1.0)
    ys, xs = np.mgrid[40:50, 40:50]
    new_id = int(np.asarray(result.data[1]).max()) + 1
    result.data_setitem((np.full(ys.size, 1), ys.ravel(), xs.ravel()), new_id)
    assert segment.use_plane_as_annotation() == (1,)
    assert annotate.annotated_planes() == [(0,), (1,), (2,), (4,)]
    corrected = np.asarray(annotations.data[1])
    assert np.unique(corrected[40:50, 40:50]).size == 1 and corrected[45, 45] > 0
    assert _objects(corrected) == _objects(result.data[1]) >= 2  # the objects, renumbered

    # continue training the model just trained on the four planes; 4 Segment follows it
    first = _session.trained()
    assert train.continue_training(steps=MORE) is not None
    wait_idle(qtbot, train)
    continued = _session.trained()
    assert continued is not first and continued.chain_steps == STEPS + MORE
    assert continued.metadata.provenance["train_planes"] == [[0], [1], [2], [4]]
    qtbot.waitUntil(lambda: not segment.is_running, timeout=60000)  # segments again

    # 5 Export the continued model as a bioimage.io package; the checker's verdict is shown
    assert export.source.value == "model just trained"
    assert export.sample.value is layer  # the image trained on, not the weight map
    export.onnx_weights.value = False  # quicker (ONNX export is tested in test_widget_export)
    export.training_data.value = "6 synthetic planes, masks of 3 + 1 corrected plane"
    package = tmp_path / "cells.zip"
    assert export.export(out=package) is not None
    qtbot.waitUntil(lambda: export.worker is None, timeout=90000)
    assert package.is_file() and export.exported == package
    assert export.check.passed and export.verdict.text().startswith("✔ bioimageio.core")
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        sample = np.load(io.BytesIO(archive.read("test_input.npy")))
    provenance = rdf["config"]["napari_unet"]["provenance"]
    assert provenance["steps"] == MORE and provenance["parent_model"]  # the continued model
    np.testing.assert_array_equal(sample[0, 0], _centre(raw[1], sample.shape[-1]))  # plane 1
    assert not _errors(notifications)

"""The annotation file format: exact round trips, metadata, refusals; napari's reader/writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_unet.annotation.schema import IGNORE_LABEL, MODES
from napari_unet.errors import InputError
from napari_unet.io import annotation_file
from napari_unet.io.annotation_file import (
    AnnotationMetadata,
    load_annotations,
    read_metadata,
    save_annotations,
)
from napari_unet.io.annotation_layer import (
    get_annotation_reader,
    read_annotation_layer,
    write_annotation_layer,
)


def _labels(shape=(6, 16, 20), dtype=np.uint16):
    data = np.zeros(shape, dtype)
    data[1, 2:6, 3:9] = 3
    data[1, 8:12, 3:9] = IGNORE_LABEL if np.iinfo(dtype).max >= IGNORE_LABEL else 9
    data[3, 5:10, 5:10] = 1
    return data


def test_constants_agree_with_the_schema():
    assert annotation_file.IGNORE_LABEL == IGNORE_LABEL
    assert annotation_file.MODES == MODES


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.int64])
def test_round_trip_is_exact(tmp_path, dtype):
    data = _labels(dtype=dtype)
    meta = AnnotationMetadata(
        mode="classes",
        planes=[[4], [1]],
        image="cells",
        class_names=["background", "nucleus"],
        scale=[2, 0.5, 0.5],
        translate=[0, 10, -5],
    )
    path = save_annotations(tmp_path / "a.unet-annotations.tif", data, meta)
    back, back_meta = load_annotations(path)
    assert back.dtype == data.dtype and back.shape == data.shape
    np.testing.assert_array_equal(back, data)
    assert back_meta == meta
    assert back_meta.planes == [[1], [4]]  # sorted; plane 4 is empty, yet kept


def test_four_dimensional_and_2d_arrays(tmp_path):
    data = np.zeros((2, 3, 8, 9), np.uint16)
    data[1, 2, 1:3, 1:3] = 5
    save_annotations(tmp_path / "t.tif", data, {"planes": [[0, 1]]})
    back, meta = load_annotations(tmp_path / "t.tif")
    np.testing.assert_array_equal(back, data)
    assert meta.planes == [[0, 1]] and meta.mode == "instances"
    flat = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_annotations(tmp_path / "f.tif", flat, {"planes": [[]]})
    back, meta = load_annotations(tmp_path / "f.tif")
    np.testing.assert_array_equal(back, flat)
    assert meta.planes == [[]]


def test_the_file_is_a_plain_tiff_with_json_metadata(tmp_path):
    data = _labels()
    save_annotations(tmp_path / "a.tif", data, {"mode": "scribbles", "planes": [[2]]})
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), data)
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        described = json.loads(tif.pages[0].description)
    assert described["napari_unet"]["format"] == "napari-unet annotations"
    assert described["napari_unet"]["mode"] == "scribbles"
    assert described["napari_unet"]["planes"] == [[2]]
    assert described["napari_unet"]["ignore_label"] == IGNORE_LABEL


def test_refusals(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", _labels())
    assert read_metadata(tmp_path / "plain.tif") is None
    with pytest.raises(InputError, match="plain.tif: not a napari-unet annotation file"):
        load_annotations(tmp_path / "plain.tif")
    with pytest.raises(InputError, match="integer labels"):
        save_annotations(tmp_path / "x.tif", np.zeros((4, 4), np.float32), {})
    with pytest.raises(InputError, match=r"marked plane \[9\] is outside"):
        save_annotations(tmp_path / "x.tif", _labels(), {"planes": [[9]]})
    with pytest.raises(InputError, match="save annotations as .tif"):
        save_annotations(tmp_path / "x.npy", _labels(), {})
    with pytest.raises(InputError, match="unknown annotation mode"):
        AnnotationMetadata(mode="blobs")
    assert not (tmp_path / "x.tif").exists()  # nothing half-written
    future = {"format": "napari-unet annotations", "version": 99}
    tifffile.imwrite(tmp_path / "new.tif", _labels(), metadata={"napari_unet": future})
    with pytest.raises(InputError, match="newer napari-unet"):
        load_annotations(tmp_path / "new.tif")


def test_napari_reader_and_writer_functions(tmp_path):
    data = _labels()
    layer_state = {
        "name": "cells annotations",
        "scale": (1.0, 0.5, 0.5),
        "translate": (0.0, 10.0, -5.0),
        "metadata": {
            "napari_unet_image": "cells",
            "napari_unet_mode": "instances",
            "napari_unet_planes": [[0]],
        },
    }
    path = str(tmp_path / "cells.unet-annotations.tif")
    assert write_annotation_layer(path, data, layer_state) == [path]
    reader = get_annotation_reader(path)
    assert reader is read_annotation_layer
    ((back, kwargs, kind),) = reader(path)
    assert kind == "labels"
    np.testing.assert_array_equal(back, data)
    assert kwargs["name"] == "cells annotations"
    assert kwargs["metadata"] == layer_state["metadata"]
    assert kwargs["scale"] == (1.0, 0.5, 0.5) and kwargs["translate"] == (0.0, 10.0, -5.0)
    tifffile.imwrite(tmp_path / "plain.unet-annotations.tif", data)
    assert get_annotation_reader(str(tmp_path / "plain.unet-annotations.tif")) is None
    assert get_annotation_reader([path]) is None


def test_annotation_io_is_qt_and_napari_free():
    import subprocess
    import sys

    code = (
        "import sys; import napari_unet.io.annotation_layer, napari_unet.io.mask_files; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'napari', 'qtpy', 'PyQt6', "
        "'PyQt5', 'PySide6', 'magicgui'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

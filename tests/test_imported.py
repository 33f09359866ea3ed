"""What 1 Annotate does without Qt: labels from elsewhere as annotation planes, brush values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.annotation.imported import (
    as_annotations,
    import_summary,
    plane_inside,
    planes_from_labels,
)
from napari_unet.annotation.schema import IGNORE_LABEL, brush_value
from napari_unet.errors import InputError
from napari_unet.io.mask_files import folder_plane_names
from napari_unet.io.plane_lists import plane_label, plane_names


def test_a_stack_gives_its_planes_with_labels_or_those_listed():
    data = np.zeros((4, 8, 8), np.uint16)
    data[1, 2:4, 2:4], data[3, 5:7, 5:7] = 1, 2
    assert list(planes_from_labels(data, data.shape)) == [(1,), (3,)]
    chosen = planes_from_labels(data, data.shape, [0, 3])
    assert list(chosen) == [(0,), (3,)] and chosen[(3,)].max() == 2
    with pytest.raises(InputError, match=r"plane 4 is outside the labels \(4, 8, 8\)"):
        planes_from_labels(data, data.shape, [4])
    with pytest.raises(InputError, match="do not fit the annotations"):
        planes_from_labels(data, (4, 8, 9))


def test_a_2d_plane_goes_into_one_plane_of_a_stack():
    plane = np.ones((8, 8), np.uint8)
    assert list(planes_from_labels(plane, (5, 8, 8), current=(2,))) == [(2,)]
    assert list(planes_from_labels(plane, (5, 8, 8), [4])) == [(4,)]
    with pytest.raises(InputError, match="'gt' is one 2D plane: name one plane"):
        planes_from_labels(plane, (5, 8, 8), [1, 2], name="gt")
    with pytest.raises(InputError, match="outside the annotations"):
        planes_from_labels(plane, (5, 8, 8), [5])
    with pytest.raises(InputError, match="fractions"):
        planes_from_labels(plane + 0.5, (5, 8, 8), current=(0,))


def test_planes_take_the_schema_and_must_fit_the_dtype():
    plane = np.array([[0, 3], [IGNORE_LABEL, 0]])
    (scribbles,) = as_annotations({(0,): plane}, np.uint16, "scribbles").values()
    assert scribbles.tolist() == [[1, 2], [IGNORE_LABEL, 1]] and scribbles.dtype == np.uint16
    with pytest.raises(InputError, match=r"label 300 does not fit the annotations \(uint8"):
        as_annotations({(0,): np.full((2, 2), 300)}, np.uint8, "instances")


def test_the_summary_is_one_sentence():
    planes = {(0,): np.array([[1, 2], [0, 0]]), (2,): np.array([[0, 5], [0, IGNORE_LABEL]])}
    assert (
        import_summary("'gt'", planes, "instances")
        == "imported 'gt' into planes 0, 2: 2 and 1 objects"
    )
    one = {(1,): planes[(0,)]}
    assert import_summary("1 mask file", one, "classes") == (
        "imported 1 mask file into plane 1: 2 label values"
    )
    assert import_summary("'gt'", {}, "instances") == "'gt' holds no labels: nothing imported"


def test_planes_are_named_as_users_type_them():
    assert plane_names([(0,), (2,)]) == "0, 2" and plane_names([()]) == "the image"
    assert plane_label((7,)) == "plane 7" and plane_label((3, 7)) == "t 3, z 7"
    assert plane_inside((1, 2), (2, 3, 8, 8)) and not plane_inside((2,), (2, 8, 8))


def test_a_folder_of_2d_files_names_the_planes(tmp_path):
    for name in ("img10.png", "img2.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert folder_plane_names(tmp_path, 2) == ["img2.png", "img10.png"]
    assert folder_plane_names(tmp_path, 3) is None
    assert folder_plane_names(None, 2) is None


def test_brushes_paint_the_schema_values():
    plane = np.array([[0, 3], [IGNORE_LABEL, 0]])
    assert [brush_value(m, "background", plane) for m in ("instances", "scribbles")] == [0, 1]
    assert brush_value("instances", "object", plane) == 4  # a new id, the ignore label aside
    assert brush_value("scribbles", "object", plane) == 2
    assert brush_value("classes", "object", plane) == 1

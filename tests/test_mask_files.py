"""Per-plane mask files: which plane each file fills, and reading one as a label plane."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from napari_unet.errors import InputError
from napari_unet.io.mask_files import (
    count_objects,
    image_stem,
    mask_paths,
    match_mask_files,
    read_mask,
)


def _touch(folder, *names):
    paths = []
    for name in names:
        path = folder / name
        path.write_bytes(b"")
        paths.append(path)
    return paths


def test_ctc_names_match_by_their_number(tmp_path):
    a, b = _touch(tmp_path, "man_seg007.tif", "man_seg001.tif")
    assert match_mask_files([a, b], 10) == {1: b, 7: a}


def test_cellpose_names_match_by_number_or_by_the_image_name(tmp_path):
    a, b = _touch(tmp_path, "img_0003_cp_masks.png", "img_0010_cp_masks.png")
    assert match_mask_files([a, b], 12) == {3: a, 10: b}
    assert image_stem(a) == "img_0003"
    # the image's own file names win: plane 0 is img_0003 there
    names = ["img_0003.png", "img_0005.png", "img_0010.png"]
    assert match_mask_files([a, b], 3, image_names=names) == {0: a, 2: b}
    # ... unless the numbers are asked for (10 is then outside 3 planes)
    with pytest.raises(InputError, match="outside the stack"):
        match_mask_files([a, b], 3, image_names=names, by="number")


def test_several_numbers_use_the_one_that_varies(tmp_path):
    files = _touch(tmp_path, "t01_z004_mask.tif", "t01_z002_mask.tif")
    assert match_mask_files(files, 5) == {2: files[1], 4: files[0]}
    odd = _touch(tmp_path, "t01_z004.tif", "t02_z005.tif")
    with pytest.raises(InputError, match="ambiguous numbering"):
        match_mask_files(odd, 10)
    # by order they are simply planes 0 and 1
    assert match_mask_files(odd, 10, by="order") == {0: odd[0], 1: odd[1]}


def test_matching_errors_are_one_clear_sentence(tmp_path):
    a, b = _touch(tmp_path, "seg1.tif", "mask01.tif")
    with pytest.raises(InputError, match="mask01.tif and seg1.tif both give plane 1"):
        match_mask_files([a, b], 4)
    (c,) = _touch(tmp_path, "labels.tif")
    with pytest.raises(InputError, match="no number in the file name"):
        match_mask_files([c], 4)
    with pytest.raises(InputError, match=r"plane 9 is outside the stack \(planes 0-3\)"):
        match_mask_files(_touch(tmp_path, "man_seg009.tif"), 4)
    with pytest.raises(InputError, match="3 mask files but the stack has 2 planes"):
        match_mask_files(_touch(tmp_path, "a.tif", "b.tif", "c.tif"), 2, by="order")


def test_folder_keeps_the_masks_next_to_images(tmp_path):
    _touch(tmp_path, "img_0010.png", "img_0010_cp_masks.png", "img_0002.png")
    _touch(tmp_path, "img_0002_cp_masks.png", "notes.txt")
    assert [p.name for p in mask_paths(tmp_path)] == [
        "img_0002_cp_masks.png",
        "img_0010_cp_masks.png",
    ]
    with pytest.raises(InputError, match="TIFF or PNG"):
        mask_paths([tmp_path / "notes.txt"])
    with pytest.raises(InputError, match="no such file"):
        mask_paths([tmp_path / "missing.tif"])


def test_read_mask_tiff_and_png(tmp_path):
    plane = np.zeros((20, 30), np.uint16)
    plane[2:6, 3:9] = 4
    plane[10:15, 10:20] = 300
    tifffile.imwrite(tmp_path / "man_seg001.tif", plane[None])  # a (1, Y, X) TIFF is a plane
    np.testing.assert_array_equal(read_mask(tmp_path / "man_seg001.tif", (20, 30)), plane)
    imsave(tmp_path / "img_0002_cp_masks.png", plane, check_contrast=False)
    read = read_mask(tmp_path / "img_0002_cp_masks.png", (20, 30))
    np.testing.assert_array_equal(read, plane)
    assert count_objects(read) == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((20, 31), np.uint8), r"shape \(20, 31\), the planes are \(20, 30\)"),
        (np.full((20, 30), 1.5, np.float32), "values with fractions"),
        (np.full((20, 30), -2, np.int16), r"negative labels \(-2\)"),
        (np.full((20, 30), 70000, np.uint32), "labels above 65534"),
        (np.zeros((20, 30, 3), np.uint8), "a colour image"),
    ],
)
def test_read_mask_refuses_what_is_not_a_label_plane(tmp_path, data, message):
    tifffile.imwrite(tmp_path / "bad_001.tif", data)
    with pytest.raises(InputError, match=message) as info:
        read_mask(tmp_path / "bad_001.tif", (20, 30))
    assert str(info.value).startswith("bad_001.tif: ")


def test_read_mask_accepts_whole_floats_and_reports_damaged_files(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.full((4, 5), 3.0, np.float32))
    out = read_mask(tmp_path / "f.tif", (4, 5))
    assert out.dtype == np.uint16 and out.max() == 3
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="broken.tif: cannot be read"):
        read_mask(tmp_path / "broken.tif", (4, 5))
    tifffile.imwrite(tmp_path / "cut.tif", np.ones((40, 50), np.uint16), compression="zlib")
    whole = (tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(InputError, match="cut.tif: cannot be read"):
        read_mask(tmp_path / "cut.tif", (40, 50))

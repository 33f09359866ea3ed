"""Tests for napari_unet.sample_data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.errors import InputError
from napari_unet.sample_data import (
    MODALITIES,
    CellSampleConfig,
    make_cell_stack,
    make_cells,
    random_modality_config,
    sample_cells_2d,
    sample_cells_stack,
)


def _touching_ids(instances: np.ndarray) -> set[int]:
    """Ids of cells that another cell reaches by a 1-px (8-connected) dilation."""
    touching: set[int] = set()
    for i in range(1, int(instances.max()) + 1):
        grown = ndi.binary_dilation(instances == i, structure=np.ones((3, 3), bool))
        others = instances[grown]
        if np.any((others > 0) & (others != i)):
            touching.add(i)
    return touching


@pytest.fixture(scope="module")
def cells():
    return make_cells(seed=0)


@pytest.fixture(scope="module")
def stack():
    return make_cell_stack(8, seed=0)


def test_shapes_dtypes_and_consecutive_ids(cells):
    image, instances = cells
    assert image.shape == (256, 256) and image.dtype == np.uint8
    assert instances.shape == (256, 256) and instances.dtype == np.uint16
    ids = np.unique(instances)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))
    assert 20 <= ids.max() <= 24  # default 24 cells, a cell may be lost only in rare cases
    assert 0.15 < np.mean(instances > 0) < 0.8
    assert 5 < image.std()  # not flat


def test_each_cell_is_one_piece(cells):
    _, instances = cells
    for i in range(1, int(instances.max()) + 1):
        assert ndi.label(instances == i)[1] == 1


def test_many_cells_touch(cells):
    _, instances = cells
    default = len(_touching_ids(instances)) / instances.max()
    assert default >= 0.5
    _, free = make_cells(CellSampleConfig(touching=0.0), seed=0)
    assert len(_touching_ids(free)) == 0
    _, crowded = make_cells(CellSampleConfig(touching=1.0), seed=0)
    assert len(_touching_ids(crowded)) / crowded.max() >= default


def test_foreground_brighter_than_background(cells):
    image, instances = cells
    fg = image[instances > 0].mean()
    bg = image[instances == 0].mean()
    assert fg > bg + 40


def test_deterministic_and_seed_dependent(cells):
    image, instances = make_cells(seed=0)
    np.testing.assert_array_equal(image, cells[0])
    np.testing.assert_array_equal(instances, cells[1])
    other_image, other_instances = make_cells(seed=1)
    assert not np.array_equal(image, other_image)
    assert not np.array_equal(instances, other_instances)


def test_stack(stack, cells):
    images, instances = stack
    assert images.shape == (8, 256, 256) and images.dtype == np.uint8
    assert instances.shape == (8, 256, 256) and instances.dtype == np.uint16
    np.testing.assert_array_equal(images[0], cells[0])  # plane 0 == make_cells with the seed
    np.testing.assert_array_equal(instances[0], cells[1])
    for plane in instances:
        ids = np.unique(plane)
        np.testing.assert_array_equal(ids, np.arange(len(ids)))
    fg = instances > 0

    def iou(a, b):
        return np.sum(a & b) / np.sum(a | b)

    # neighbouring planes look alike, but not identical; far planes differ more
    assert iou(fg[0], fg[1]) > 0.85
    assert not np.array_equal(instances[0], instances[1])
    assert iou(fg[0], fg[7]) < iou(fg[0], fg[1])
    corr = [np.corrcoef(images[0].ravel(), images[z].ravel())[0, 1] for z in (1, 7)]
    assert corr[0] > 0.7 and corr[1] < corr[0]
    # the same id mostly marks the same cell in neighbouring planes
    same = instances[0] == instances[1]
    assert np.mean(same[fg[0] & fg[1]]) > 0.8


def test_stack_deterministic(stack):
    again = make_cell_stack(8, seed=0)
    np.testing.assert_array_equal(again[0], stack[0])
    np.testing.assert_array_equal(again[1], stack[1])


def test_custom_config():
    config = CellSampleConfig(
        shape=(64, 96), n_cells=5, cell_radius=8.0, blur=0.0, noise=0.0, texture=0.0
    )
    image, instances = make_cells(config, seed=3)
    assert image.shape == instances.shape == (64, 96)
    assert instances.max() == 5
    images, _ = make_cell_stack(2, config, seed=3)
    assert images.shape == (2, 64, 96)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (8, 256)},
        {"shape": (256,)},
        {"n_cells": 0},
        {"cell_radius": 0.5},
        {"touching": 1.5},
        {"blur": -1.0},
        {"noise": 2.0},
        {"texture": -0.1},
        {"modality": "brightfield"},
        {"shear_angle": float("nan")},
    ],
)
def test_invalid_config(kwargs):
    with pytest.raises(InputError, match="cell sample"):
        CellSampleConfig(**kwargs)


def test_invalid_planes():
    with pytest.raises(InputError):
        make_cell_stack(0)


def test_sample_hooks():
    layers = sample_cells_2d()
    assert [kind for *_, kind in layers] == ["image", "labels"]
    (image, meta, _), (labels, meta_gt, _) = layers
    assert image.shape == labels.shape == (256, 256)
    assert meta == {"name": "cells 2D"} and meta_gt == {"name": "cells 2D ground truth"}
    layers = sample_cells_stack()
    assert [kind for *_, kind in layers] == ["image", "labels"]
    assert layers[0][0].shape == layers[1][0].shape == (8, 256, 256)
    assert all(isinstance(meta["name"], str) for _, meta, _ in layers)


# --- modalities -------------------------------------------------------------------------------

# the same cells in every modality but em, which needs cells that tile the plane
_LOOK = {"n_cells": 14, "cell_radius": 22.0, "touching": 0.6, "blur": 0.8, "noise": 0.03}
_EM = {"n_cells": 60, "cell_radius": 18.0, "touching": 1.0, "blur": 0.6, "noise": 0.05}


def _config(modality: str, **kwargs) -> CellSampleConfig:
    base = _EM if modality == "em" else _LOOK
    return CellSampleConfig(**{**base, "texture": 0.4, **kwargs}, modality=modality)


@pytest.fixture(scope="module")
def modality_cells():
    return {m: make_cells(_config(m, shear_angle=135.0), seed=4) for m in MODALITIES}


def test_modality_default_is_fluorescence():
    assert MODALITIES == ("fluorescence", "phase", "dic", "em")
    assert CellSampleConfig().modality == "fluorescence"
    image, instances = make_cells(CellSampleConfig(modality="fluorescence"), seed=0)
    default = make_cells(seed=0)
    np.testing.assert_array_equal(image, default[0])
    np.testing.assert_array_equal(instances, default[1])


def test_invalid_modality_message():
    with pytest.raises(InputError, match="modality must be one of fluorescence, phase, dic, em"):
        CellSampleConfig(modality="Phase")


@pytest.mark.parametrize("modality", MODALITIES)
def test_modality_shapes_dtypes_deterministic(modality, modality_cells):
    image, instances = modality_cells[modality]
    assert image.shape == instances.shape == (256, 256)
    assert image.dtype == np.uint8 and instances.dtype == np.uint16
    ids = np.unique(instances)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))
    assert ids.max() >= 10
    assert 5 < image.std() and image.min() < image.max()
    again = make_cells(_config(modality, shear_angle=135.0), seed=4)
    np.testing.assert_array_equal(again[0], image)
    np.testing.assert_array_equal(again[1], instances)
    other = make_cells(_config(modality, shear_angle=135.0), seed=5)
    assert not np.array_equal(other[0], image)


def test_modalities_share_the_cells(modality_cells):
    labels = modality_cells["fluorescence"][1]
    for modality in ("phase", "dic"):
        np.testing.assert_array_equal(modality_cells[modality][1], labels)
    # also in a stack, plane after plane (the modality has its own random stream)
    config = _config("fluorescence", **_stack_kwargs())
    _, reference = make_cell_stack(3, config, seed=2)
    for modality in ("phase", "dic"):
        images, instances = make_cell_stack(3, _config(modality, **_stack_kwargs()), seed=2)
        assert images.shape == (3, 96, 96)
        np.testing.assert_array_equal(instances, reference)
        assert not np.array_equal(images[0], images[1])


def _stack_kwargs() -> dict:
    return {"shape": (96, 96), "n_cells": 6, "cell_radius": 12.0}


def test_modalities_look_different(modality_cells):
    images = [modality_cells[m][0].astype(float) for m in MODALITIES]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.mean(np.abs(images[i] - images[j])) > 5


def _rings(instances: np.ndarray, width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Background pixels just outside the cells, and cell pixels just inside, next to background."""
    fg = instances > 0
    outside = ndi.binary_dilation(fg, iterations=width) & ~fg
    inside = fg & ~ndi.binary_erosion(fg, iterations=width, border_value=1)
    return outside, inside


def test_fluorescence_objects_brighter(modality_cells):
    image, instances = modality_cells["fluorescence"]
    assert image[instances > 0].mean() > image[instances == 0].mean() + 30


def test_phase_halo_and_dark_rim(modality_cells):
    image, instances = modality_cells["phase"]
    outside, inside = _rings(instances)
    far = ndi.distance_transform_edt(instances == 0) > 15
    halo, rim, background = image[outside].mean(), image[inside].mean(), image[far].mean()
    assert halo > rim + 15  # bright halo just outside the edge, dark rim just inside
    assert halo > background  # the halo is brighter than the background further away
    assert rim < background
    assert 60 < background < 160  # mid grey
    # touching cells are separated by a faint line only, far less contrast than the free edges
    fg = instances > 0
    between = ndi.binary_dilation(_between(instances)) & fg
    assert abs(image[between].mean() - image[fg].mean()) < halo - rim


def _between(instances: np.ndarray) -> np.ndarray:
    """Cell pixels with a 4-neighbour in another cell."""
    out = np.zeros(instances.shape, bool)
    for axis in (0, 1):
        a = np.swapaxes(instances, 0, axis)
        o = np.swapaxes(out, 0, axis)
        differ = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
        o[1:] |= differ
        o[:-1] |= differ
    return out


def _side_contrast(image: np.ndarray, instances: np.ndarray, angle_deg: float) -> np.ndarray:
    """Per cell: mean of the half facing direction ``angle_deg`` minus the opposite half."""
    angle = np.deg2rad(angle_deg)
    toward = np.array([-np.sin(angle), np.cos(angle)])  # (row, col); 90 degrees = up
    out = []
    for i in range(1, int(instances.max()) + 1):
        grown = ndi.binary_dilation(instances == i, iterations=2)
        ys, xs = np.nonzero(grown)
        side = (ys - ys.mean()) * toward[0] + (xs - xs.mean()) * toward[1]
        values = image[ys, xs].astype(float)
        out.append(values[side > 0].mean() - values[side < 0].mean())
    return np.asarray(out)


def test_dic_relief_is_antisymmetric(modality_cells):
    image, instances = modality_cells["dic"]
    contrast = _side_contrast(image, instances, 135.0)
    assert np.mean(contrast > 0) > 0.8 and np.median(contrast) > 5  # lit side bright
    across = _side_contrast(image, instances, 45.0)  # perpendicular: no systematic difference
    assert abs(np.median(across)) < np.median(contrast) / 2
    # turning the shear direction round turns the relief round
    flipped, same = make_cells(_config("dic", shear_angle=315.0), seed=4)
    np.testing.assert_array_equal(same, instances)
    assert np.median(_side_contrast(flipped, instances, 135.0)) < -5
    # background: flat grey
    far = ndi.distance_transform_edt(instances == 0) > 10
    assert 80 < image[far].mean() < 170 and image[far].std() < 20


def test_em_membranes(modality_cells):
    image, instances = modality_cells["em"]
    background = instances == 0
    assert background.mean() < 0.15  # the cells tile the plane, thin membranes only
    # membranes are thin (1-3 px): no background pixel is more than 2 px from a cell
    assert ndi.distance_transform_edt(background).max() <= 2.5
    # every cell is bounded by membrane: no two cells touch directly
    assert not _between(instances).any()
    interior = ndi.distance_transform_edt(~background) > 3
    assert image[background].mean() < image[interior].mean() - 40
    # brightness varies from cell to cell
    means = ndi.mean(image, instances, np.arange(1, int(instances.max()) + 1))
    assert np.std(means) > 5
    # the same cells as in fluorescence, less the membranes (and plus any gaps)
    _, cells = make_cells(CellSampleConfig(**_EM, texture=0.4), seed=4)
    assert np.mean(cells == 0) < 0.01
    for i in range(1, int(instances.max()) + 1):
        counts = np.bincount(cells[instances == i])
        assert np.count_nonzero(counts[1:]) == 1  # one cell (plus gap pixels it was given)


@pytest.mark.parametrize("modality", [*MODALITIES, None])
def test_random_modality_config(modality):
    rng = np.random.default_rng(7)
    configs = [random_modality_config(rng, (128, 160), modality) for _ in range(12)]
    if modality is not None:
        assert {c.modality for c in configs} == {modality}
    else:
        assert len({c.modality for c in configs}) >= 3
    for c in configs:
        assert c.shape == (128, 160)
        assert 6 <= c.cell_radius <= 40
        assert (c.shear_angle is not None) == (c.modality == "dic")
    assert len({round(c.cell_radius, 3) for c in configs}) == len(configs)
    again = [random_modality_config(np.random.default_rng(7), (128, 160), modality)]
    assert again[0] == configs[0]
    image, instances = make_cells(configs[0], seed=1)
    assert image.shape == instances.shape == (128, 160)
    if configs[0].modality == "em":
        assert np.mean(instances == 0) < 0.25


def test_random_modality_config_invalid():
    with pytest.raises(InputError, match="modality"):
        random_modality_config(np.random.default_rng(0), (64, 64), "xray")

"""Tests for napari_unet.sample_data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.errors import InputError
from napari_unet.sample_data import (
    CellSampleConfig,
    make_cell_stack,
    make_cells,
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

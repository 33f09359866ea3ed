"""Post-processing on hand-made semantic maps with known numbers of objects."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.errors import InputError
from napari_unet.inference.postprocess import (
    PostprocessConfig,
    foreground_mask,
    instance_labels,
    semantic_labels,
)


def discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.uint8)
    for cy, cx in centres:
        out[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 1
    return out


def n_objects(labels):
    return len(np.unique(labels[labels > 0]))


def test_semantic_labels_is_argmax_uint8():
    p = np.zeros((3, 2, 2), np.float32)
    p[0, 0, 0] = p[1, 0, 1] = p[2, 1, 0] = p[2, 1, 1] = 1.0
    sem = semantic_labels(p)
    assert sem.dtype == np.uint8 and sem.tolist() == [[0, 1], [2, 2]]
    with pytest.raises(InputError):
        semantic_labels(np.zeros(4))


def test_one_pixel_gap_gives_two_instances():
    sem = np.zeros((8, 12), np.uint8)
    sem[2:6, 1:5] = 1
    sem[2:6, 6:10] = 1  # column 5 is background
    labels = instance_labels(sem)
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2}


def test_touching_blobs_split_by_watershed():
    sem = discs((40, 60), [(20, 20), (20, 34)], 8)
    assert n_objects(instance_labels(sem)) == 1
    split = instance_labels(sem, PostprocessConfig(watershed=True))
    assert n_objects(split) == 2
    assert np.array_equal(split > 0, sem > 0)  # nothing lost, nothing added


def test_watershed_keeps_an_elongated_object_whole():
    sem = np.zeros((20, 60), np.uint8)
    sem[5:11, 5:55] = 1  # flat distance ridge along the middle
    assert n_objects(instance_labels(sem, PostprocessConfig(watershed=True))) == 1


def test_watershed_keeps_small_object_next_to_big_one():
    sem = discs((40, 40), [(20, 14)], 10)
    sem[20, 28:30] = 1  # tiny object whose maximum is suppressed by the big disc's peak window
    labels = instance_labels(sem, PostprocessConfig(watershed=True, watershed_min_distance=10))
    assert n_objects(labels) == 2 and np.array_equal(labels > 0, sem > 0)


def test_watershed_seeds_from_probabilities():
    sem = discs((40, 60), [(20, 20), (20, 34)], 8)
    yy, xx = np.mgrid[:40, :60]
    left = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 50)
    right = np.exp(-((yy - 20) ** 2 + (xx - 34) ** 2) / 50)
    fg = np.maximum(left, right)
    probs = np.stack([1 - fg, fg])
    config = PostprocessConfig(watershed=True)
    assert n_objects(instance_labels(sem, config, probabilities=probs)) == 2
    with pytest.raises(InputError, match="shape"):
        instance_labels(sem, config, probabilities=probs[:, :10])


def test_min_size_removes_speck_and_ids_stay_consecutive():
    sem = np.zeros((10, 10), np.uint8)
    sem[0, 0] = 1  # speck
    sem[4:8, 4:8] = 1
    assert n_objects(instance_labels(sem)) == 2
    labels = instance_labels(sem, PostprocessConfig(min_size=5))
    assert set(np.unique(labels)) == {0, 1} and labels[0, 0] == 0


def test_border_class_is_background():
    sem = np.ones((6, 11), np.uint8)
    sem[:, 5] = 2  # a border line of class 2 between two cells
    assert foreground_mask(sem).sum() == 60
    assert n_objects(instance_labels(sem)) == 2
    both = PostprocessConfig(foreground_classes=(1, 2))
    assert n_objects(instance_labels(sem, both)) == 1


def test_fill_holes():
    sem = np.zeros((7, 7), np.uint8)
    sem[1:6, 1:6] = 1
    sem[3, 3] = 0
    assert (instance_labels(sem) > 0).sum() == 24
    assert (instance_labels(sem, PostprocessConfig(fill_holes=True)) > 0).sum() == 25


def test_per_plane_ids_unique_and_3d_connectivity_joins():
    plane = np.zeros((8, 12), np.uint8)
    plane[1:4, 1:4] = 1
    plane[1:4, 6:9] = 1
    stack = np.stack([plane, plane])
    labels = instance_labels(stack)
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    assert not set(np.unique(labels[0])) & set(np.unique(labels[1])) - {0}
    joined = instance_labels(stack, PostprocessConfig(per_plane=False))
    assert set(np.unique(joined)) == {0, 1, 2}
    assert joined[0, 2, 2] == joined[1, 2, 2]


def test_connectivity_2_joins_diagonal_pixels():
    sem = np.eye(4, dtype=np.uint8)
    assert n_objects(instance_labels(sem)) == 4
    assert n_objects(instance_labels(sem, PostprocessConfig(connectivity=2))) == 1


def test_bad_input_raises_input_error():
    with pytest.raises(InputError, match="integer"):
        instance_labels(np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="connectivity"):
        instance_labels(np.zeros((4, 4), np.uint8), PostprocessConfig(connectivity=3))
    with pytest.raises(InputError):
        PostprocessConfig(min_size=-1)
    with pytest.raises(InputError):
        PostprocessConfig(foreground_classes=())


def test_close_gaps_gives_back_the_learned_separation_gap():
    from napari_unet.annotation.weightmap import separate_touching

    truth = np.zeros((30, 40), np.int32)
    truth[5:25, 5:20] = 1
    truth[5:25, 20:35] = 2  # two touching rectangles
    truth[28:30, 2:4] = 3  # a speck 3 px away: a wider gap than training makes, kept
    gapped = separate_touching(truth)  # what the network learns to predict
    assert (gapped[5:25, 19:21] == 0).all()
    labels = instance_labels((gapped > 0).astype(np.uint8))
    assert n_objects(labels) == 3
    # every gap pixel is back, nothing grew on the outer borders
    assert np.array_equal(labels > 0, truth > 0)
    kept = instance_labels((gapped > 0).astype(np.uint8), PostprocessConfig(close_gaps=0))
    assert np.array_equal(kept > 0, gapped > 0)


def test_cores_split_cells_joined_by_a_faint_border():
    """The default post-processing splits two cells that share an uncertain border (p ~ 0.6)
    and keeps a cell whole, including one with no confident core."""
    from napari_unet.inference.postprocess import PostprocessConfig, instance_labels

    p = np.zeros((60, 100), np.float32)
    p[10:50, 10:45] = 0.999  # cell A
    p[10:50, 47:80] = 0.999  # cell B
    p[10:50, 45:47] = 0.6  # faint border: still foreground, so one connected component
    p[52:58, 85:95] = 0.7  # a weak object without a confident core
    probs = np.stack([1 - p, p])
    semantic = (p > 0.5).astype(np.uint8)
    split = instance_labels(semantic, PostprocessConfig(), probabilities=probs)
    assert split[30, 20] != split[30, 60] and split[30, 20] > 0 and split[30, 60] > 0
    assert split[55, 90] > 0 and split.max() == 3
    plain = instance_labels(semantic, PostprocessConfig(seed_threshold=None), probabilities=probs)
    assert plain[30, 20] == plain[30, 60]  # plain connected components merge them
    # without probabilities (a semantic image only) nothing is split
    assert instance_labels(semantic)[30, 20] == instance_labels(semantic)[30, 60]

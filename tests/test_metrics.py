"""Metrics on hand-made label images with answers computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_unet.errors import InputError
from napari_unet.metrics import (
    adapted_rand_error,
    evaluate,
    instances_from_binary,
    iou,
    matching,
    matching_curve,
    mean_ap,
    pixel_error,
    seg_score,
    seg_score_planes,
    unique_per_plane,
)


def square(shape, top, left, size, value=1, out=None):
    a = np.zeros(shape, np.int32) if out is None else out
    a[top : top + size, left : left + size] = value
    return a


def segments(length, *spans):
    """1 x length label image with label k+1 on span k = (start, stop)."""
    a = np.zeros((1, length), np.int32)
    for k, (start, stop) in enumerate(spans):
        a[0, start:stop] = k + 1
    return a


# --- iou -----------------------------------------------------------------------------------------
def test_iou_offset_squares():
    pred = square((10, 10), 0, 0, 4)
    gt = square((10, 10), 2, 2, 4, value=7)  # ids do not matter
    assert iou(pred, gt) == pytest.approx(4 / 28)  # 2x2 overlap, 16 + 16 - 4 union


def test_iou_empty_and_disjoint():
    empty = np.zeros((5, 5), np.uint8)
    assert iou(empty, empty) == 1.0
    assert iou(empty, square((5, 5), 0, 0, 2)) == 0.0


# --- seg -----------------------------------------------------------------------------------------
def test_seg_exactly_half_is_no_match():
    gt = square((8, 8), 0, 0, 4)  # 16 px
    pred = np.zeros_like(gt)
    pred[0:2, 0:4] = 1  # covers 8 px = 50 %
    assert seg_score(pred, gt) == 0.0
    pred[2, 0] = 1  # 9 px > 50 %
    assert seg_score(pred, gt) == pytest.approx(9 / 16)


def test_seg_split_object():
    gt = np.zeros((6, 10), np.int32)
    gt[0:4, 0:8] = 1  # 32 px
    halves = np.zeros_like(gt)
    halves[0:4, 0:4], halves[0:4, 4:8] = 1, 2
    assert seg_score(halves, gt) == 0.0  # each half covers exactly 50 %
    uneven = np.zeros_like(gt)
    uneven[0:4, 0:5], uneven[0:4, 5:8] = 1, 2
    assert seg_score(uneven, gt) == pytest.approx(20 / 32)


def test_seg_false_positive_does_not_count_and_is_mean_over_references():
    gt = square((12, 12), 0, 0, 4, 1)
    square((12, 12), 6, 6, 4, 2, out=gt)
    pred = square((12, 12), 0, 0, 4, 5)  # perfect on object 1, object 2 missed
    assert seg_score(pred, gt) == pytest.approx(0.5)
    pred[10:12, 0:2] = 9  # a false positive somewhere else
    assert seg_score(pred, gt) == pytest.approx(0.5)


def test_seg_empty_cases():
    empty = np.zeros((4, 4), np.uint16)
    blob = square((4, 4), 0, 0, 2)
    assert seg_score(empty, empty) == 1.0
    assert seg_score(blob, empty) == 0.0
    assert seg_score(empty, blob) == 0.0


def test_seg_planes_pools_objects_of_all_planes():
    plane = square((8, 8), 0, 0, 4)
    gt = np.stack([plane, plane])  # id 1 in both planes: two reference objects
    pred = np.stack([plane, np.zeros_like(plane)])
    assert seg_score_planes(pred, gt) == pytest.approx(0.5)
    assert seg_score(pred, gt) == 0.0  # as one 3D object it is covered exactly half


def test_unique_per_plane():
    a = np.array([[[0, 1, 1, 5]], [[5, 0, 1, 1]]])
    u = unique_per_plane(a)
    assert u[0, 0, 0] == 0 and u[1, 0, 1] == 0
    assert len({u[0, 0, 1], u[0, 0, 3], u[1, 0, 0], u[1, 0, 2]}) == 4
    assert set(np.unique(u)) == {0, 1, 2, 3, 4}


# --- matching ------------------------------------------------------------------------------------
def test_matching_counts():
    shape = (20, 20)
    gt = square(shape, 0, 0, 4, 1)
    square(shape, 0, 10, 4, 2, out=gt)
    square(shape, 10, 0, 4, 3, out=gt)
    pred = square(shape, 0, 0, 4, 3)  # IoU 1
    square(shape, 0, 10, 4, 1, out=pred)
    pred[0, 10:14] = 0  # IoU 12/16
    square(shape, 12, 12, 4, 2, out=pred)  # false positive; gt 3 missed
    m = matching(pred, gt)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["ap"] == pytest.approx(2 / 4)
    assert matching(pred, gt, 0.8)["tp"] == 1  # the 12/16 = 0.75 pair drops out
    json.dumps(m)


def test_matching_below_half_is_optimal_not_greedy():
    gt = segments(20, (0, 10), (10, 20))  # A, B
    pred = segments(20, (4, 14), (0, 4))  # X: IoU 6/14 with A, 4/16 with B; Y: 4/10 with A
    # greedy by IoU would take A-X and leave B unmatched; the optimum is A-Y, B-X
    assert matching(pred, gt, 0.2)["tp"] == 2
    assert matching(pred, gt, 0.3)["tp"] == 1
    assert matching(pred, gt, 0.5)["tp"] == 0


def test_matching_curve_and_mean_ap():
    gt = square((10, 10), 0, 0, 4)
    pred = gt.copy()
    pred[0, 0:4] = 0  # IoU 12/16 = 0.75
    curve = matching_curve(pred, gt)
    assert [c["thresh"] for c in curve] == pytest.approx(np.arange(0.5, 1.0, 0.05))
    assert [c["tp"] for c in curve] == [1] * 5 + [0] * 5
    assert mean_ap(pred, gt) == pytest.approx(0.5)
    empty = np.zeros_like(gt)
    assert matching(empty, empty)["ap"] == 1.0
    with pytest.raises(InputError):
        matching(pred, gt, 1.0)


# --- ISBI errors ---------------------------------------------------------------------------------
def test_pixel_error_of_known_flips():
    gt = square((10, 10), 0, 0, 5)
    pred = gt * 3  # different ids, same binary map
    assert pixel_error(pred, gt) == 0.0
    pred[0, 0:3] = 0
    pred[9, 5:9] = 2
    assert pixel_error(pred, gt) == pytest.approx(7 / 100)


def test_adapted_rand_error():
    gt = square((10, 10), 0, 0, 4, 1)
    square((10, 10), 5, 5, 4, 2, out=gt)
    assert adapted_rand_error(gt, gt) == 0.0
    assert adapted_rand_error(np.where(gt == 1, 7, gt * 3), gt) == pytest.approx(0.0)
    merged = gt.copy()
    merged[4:5, 0:9] = 1
    merged[0:10, 4:5] = 1
    merged[merged > 0] = 1
    assert adapted_rand_error(merged, gt) > 0.1
    # predicted background inside gt objects: singletons (ISBI/SNEMI) vs one segment (skimage)
    holes = gt.copy()
    holes[0:2, 0:4] = 0
    holes[5:7, 5:9] = 0
    singletons = adapted_rand_error(holes, gt)
    lumped = adapted_rand_error(holes, gt, pred_background="segment")
    assert 0 < singletons and 0 < lumped and singletons != pytest.approx(lumped)
    empty = np.zeros_like(gt)
    assert adapted_rand_error(gt, empty) == 0.0  # nothing scored


def test_instances_from_binary_uses_4_connectivity():
    membrane = np.full((7, 7), 255, np.uint8)
    membrane[3, :] = 0
    membrane[:, 3] = 0
    assert instances_from_binary(membrane).max() == 4
    diagonal = np.eye(3, dtype=np.uint8)
    assert instances_from_binary(diagonal).max() == 3
    stack = np.ones((2, 3, 3), np.uint8)
    assert instances_from_binary(stack).max() == 1
    assert instances_from_binary(stack, per_plane=True).max() == 2


# --- evaluate ------------------------------------------------------------------------------------
def test_evaluate_2d_keys_and_values():
    gt = square((10, 10), 0, 0, 4)
    out = evaluate(gt, gt)
    assert set(out) == {"iou", "seg", "ap50", "f1_50", "rand", "pixel"}
    assert out == {"iou": 1.0, "seg": 1.0, "ap50": 1.0, "f1_50": 1.0, "rand": 0.0, "pixel": 0.0}
    assert set(evaluate(gt, gt, ("pixel",))) == {"pixel"}
    json.dumps(out)


def test_evaluate_3d_stack_matches_per_plane():
    plane = square((8, 8), 0, 0, 4)
    gt = np.stack([plane, plane, np.zeros_like(plane)])
    pred = np.stack([plane * 2, np.zeros_like(plane), np.zeros_like(plane)])
    out = evaluate(pred, gt)
    assert out["seg"] == pytest.approx(0.5)
    assert out["ap50"] == pytest.approx(0.5) and out["f1_50"] == pytest.approx(2 / 3)
    assert out["iou"] == pytest.approx(0.5) and out["pixel"] == pytest.approx(16 / 192)
    volume = evaluate(pred, gt, ("seg", "ap50"), per_plane=False)
    assert volume["seg"] == 0.0 and volume["ap50"] == 0.0


def test_evaluate_rejects_bad_input():
    a = np.zeros((4, 4), np.int32)
    with pytest.raises(InputError, match="same shape"):
        evaluate(a, np.zeros((4, 5), np.int32))
    with pytest.raises(InputError, match="integer"):
        evaluate(a.astype(float), a)
    with pytest.raises(InputError, match="negative"):
        evaluate(a - 1, a)
    with pytest.raises(InputError, match="Unknown metric"):
        evaluate(a, a, ("iou", "dice"))


SMALL_SHAPES = st.tuples(st.integers(1, 6), st.integers(1, 6))


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, SMALL_SHAPES, elements=st.integers(0, 4)))
def test_identical_segmentations_score_one(x):
    assert seg_score(x, x) == 1.0
    assert iou(x, x) == 1.0

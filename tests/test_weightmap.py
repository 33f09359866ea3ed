"""Tests of napari_unet.annotation.weightmap: hand-checked values, fast vs. reference, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.segmentation import expand_labels

from napari_unet.annotation.job import WeightSummary, weight_planes
from napari_unet.annotation.schema import AnnotationConfig
from napari_unet.annotation.weightmap import (
    WeightMapConfig,
    border_distances,
    separate_touching,
    weight_map,
    weight_map_reference,
)
from napari_unet.errors import InputError

FALK = WeightMapConfig(variant="falk")


def two_squares() -> np.ndarray:
    """60 x 80 image, squares 1 (cols 10..29) and 2 (cols 30..49) touching along a column."""
    lab = np.zeros((60, 80), dtype=np.int32)
    lab[20:40, 10:30] = 1
    lab[20:40, 30:50] = 2
    return lab


def random_instances(shape, n_seeds, grow, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, dtype=np.int32)
    rows = rng.integers(0, shape[0], n_seeds)
    cols = rng.integers(0, shape[1], n_seeds)
    lab[rows, cols] = np.arange(1, n_seeds + 1)
    return expand_labels(lab, grow)


# ---------------------------------------------------------------- separate_touching


def test_gap_exactly_at_contact():
    lab = two_squares()
    sep = separate_touching(lab)
    gap = (lab > 0) & (sep == 0)
    expected = np.zeros_like(gap)
    expected[20:40, 29:31] = True  # one column from each square: a 2 px gap
    np.testing.assert_array_equal(gap, expected)
    assert sep[30, 28] == 1 and sep[30, 31] == 2
    assert lab[30, 29] == 1  # input untouched


def test_diagonal_contact_is_separated_8_neighbourhood():
    lab = np.zeros((6, 6), dtype=np.uint8)
    lab[1:3, 1:3] = 1
    lab[3:5, 3:5] = 2
    sep = separate_touching(lab)
    assert sep[2, 2] == 0 and sep[3, 3] == 0
    assert (sep > 0).sum() == 6


def test_single_and_far_instances_unchanged():
    lab = np.zeros((20, 20), dtype=np.int64)
    lab[2:6, 2:6] = 3
    lab[10:15, 8:12] = 7  # separated by background
    np.testing.assert_array_equal(separate_touching(lab), lab)


# ---------------------------------------------------------------- paper variant, hand-checked

# two_squares after separation: 2 x 20 x 19 = 760 foreground of 4800 pixels, 4040 background.
PAPER = WeightMapConfig(class_balance=True)  # the paper's w_c (off by default)
WC_BG = 4800 / (2 * 4040)  # 0.594059...
WC_FG = 4800 / (2 * 760)  # 3.157894...
BORDER_GAP = 10.0 * math.exp(-((1 + 2) ** 2) / (2 * 5.0**2))  # d1 = 1, d2 = 2 -> 8.3527


def test_paper_hand_values():
    w = weight_map(two_squares(), WeightMapConfig(class_balance=True))  # the paper's w_c
    assert w.dtype == np.float32 and w.shape == (60, 80)
    assert WC_BG == pytest.approx(0.5940594) and BORDER_GAP == pytest.approx(8.352702)
    # gap pixels on both sides of the contact: d1 = 1, d2 = 2
    np.testing.assert_allclose(w[20:40, 29:31], WC_BG + BORDER_GAP, rtol=1e-5)
    assert w[30, 29] == pytest.approx(8.946761, rel=1e-5)
    # far background (corner): d1 + d2 > 40 -> border term < 1e-13
    assert w[0, 79] == pytest.approx(WC_BG, rel=1e-6)
    # foreground: class weight only
    np.testing.assert_allclose(w[20:40, 10:29], WC_FG, rtol=1e-6)
    # normalisation: w_c summed over all pixels equals the number of pixels
    assert 4040 * WC_BG + 760 * WC_FG == pytest.approx(4800)
    assert (w > WC_BG + 1e-3).sum() > 40  # the border term reaches beyond the gap


def test_background_beside_gap_value():
    # just above the gap, (19, 29): d1 = |(19,29) - (20,28)| = sqrt(2), d2 = |..-(20,31)| = sqrt(5)
    w = weight_map(two_squares(), WeightMapConfig(class_balance=True))  # the paper's w_c
    s = math.sqrt(2) + math.sqrt(5)
    assert w[19, 29] == pytest.approx(WC_BG + 10 * math.exp(-s * s / 50), rel=1e-5)


def test_ignore_gives_zero_and_is_not_counted():
    lab = two_squares()
    ignore = np.zeros(lab.shape, dtype=bool)
    ignore[:, 60:] = True  # 60 x 20 = 1200 background pixels ignored
    w = weight_map(lab, PAPER, ignore=ignore)
    assert np.all(w[ignore] == 0)
    n, n_bg = 4800 - 1200, 4040 - 1200
    assert w[0, 0] == pytest.approx(n / (2 * n_bg), rel=1e-6)
    assert w[30, 20] == pytest.approx(n / (2 * 760), rel=1e-6)


def test_single_instance_has_no_border_term():
    lab = np.zeros((40, 40), dtype=np.int32)
    lab[10:20, 10:20] = 5
    w = weight_map(lab, PAPER)
    wc_bg, wc_fg = 1600 / (2 * 1500), 1600 / (2 * 100)
    np.testing.assert_allclose(w[lab == 0], wc_bg, rtol=1e-6)  # even right next to the cell
    np.testing.assert_allclose(w[lab > 0], wc_fg, rtol=1e-6)


def test_class_balance_off():
    w = weight_map(two_squares(), WeightMapConfig(class_balance=False))
    assert w[0, 79] == pytest.approx(1.0)
    assert w[30, 20] == pytest.approx(1.0)
    assert w[30, 29] == pytest.approx(1.0 + BORDER_GAP, rel=1e-5)


def test_empty_image_and_all_ignored():
    lab = np.zeros((8, 9), dtype=np.uint16)
    np.testing.assert_array_equal(weight_map(lab), np.ones((8, 9), np.float32))
    np.testing.assert_allclose(weight_map(lab, FALK), 0.1)
    assert not weight_map(lab, ignore=np.ones((8, 9), bool)).any()


def test_classes_and_no_separation():
    lab = two_squares()
    classes = np.where(lab == 2, 2, np.where(lab == 1, 1, 0)).astype(np.uint8)
    # without separation: 3 classes present, 400 / 400 / 4000 pixels; no gap, so no border term
    w = weight_map(lab, PAPER, classes=classes, separate=False)
    assert w[30, 29] == pytest.approx(4800 / (3 * 400))
    assert w[0, 0] == pytest.approx(4800 / (3 * 4000))
    # with separation the gap pixels become class 0 even though classes says 1 / 2
    w = weight_map(lab, PAPER, classes=classes)
    assert w[30, 29] == pytest.approx(4800 / (3 * 4040) + BORDER_GAP, rel=1e-5)
    assert w[30, 20] == pytest.approx(4800 / (3 * 380), rel=1e-6)


# ---------------------------------------------------------------- falk variant


def test_falk_values():
    w = weight_map(two_squares(), FALK)
    assert w[30, 20] == 1.0  # foreground
    # corner (0, 79): d1 = |(0, 79) - (20, 49)| = sqrt(400 + 900), d2 > 50 -> only the d1 term
    assert w[0, 79] == pytest.approx(0.1 + 0.9 * math.exp(-1300 / 200), rel=1e-5)
    assert w[0, 79] == pytest.approx(0.101353, abs=1e-6)
    # really far background (100 px from the cells): v_bal
    big = np.zeros((200, 200), np.int32)
    big[:60, :80] = two_squares()
    assert weight_map(big, FALK)[199, 199] == pytest.approx(0.1, abs=1e-9)
    # gap: d1 = 1, d2 = 2
    gap = 0.1 + 0.9 * math.exp(-1 / 200) + 50 * math.exp(-9 / 72)
    assert gap == pytest.approx(45.12036, abs=1e-4)
    np.testing.assert_allclose(w[20:40, 29:31], gap, rtol=1e-5)


# ---------------------------------------------------------------- distances and agreement


def test_border_distances_local_and_cutoff():
    lab = separate_touching(two_squares())
    d1, d2 = border_distances(lab, cutoff=12.0)
    assert d1.dtype == np.float32
    assert d1[30, 29] == 1 and d2[30, 29] == 2
    assert d1[30, 20] == 0 and d2[30, 20] == 11  # (30, 20) -> (30, 31)
    assert d2[30, 15] == np.inf  # 16 px > cutoff
    assert d1[0, 0] == np.inf and d1[8, 20] == 12.0 and d1[7, 20] == np.inf


@pytest.mark.parametrize("config", [WeightMapConfig(), FALK, WeightMapConfig(sigma=2.0, w0=3.0)])
def test_matches_reference_on_many_touching_instances(config):
    lab = random_instances((160, 160), 55, 12, seed=1)
    assert len(np.unique(lab)) - 1 >= 50
    ignore = np.zeros(lab.shape, bool)
    ignore[:20] = True
    fast = weight_map(lab, config, ignore=ignore)
    ref = weight_map_reference(lab, config, ignore=ignore)
    np.testing.assert_allclose(fast, ref, atol=1e-4, rtol=0)
    assert fast.max() > ref[lab == 0].min() + 1.5  # the border term is really there


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 48),
    w=st.integers(1, 48),
    n=st.integers(0, 12),
    grow=st.integers(0, 8),
    seed=st.integers(0, 2**16),
    variant=st.sampled_from(["paper", "falk"]),
    separate=st.booleans(),
    sigma=st.floats(0.5, 8.0),
)
def test_property_matches_reference(h, w, n, grow, seed, variant, separate, sigma):
    lab = random_instances((h, w), n, grow, seed) if n else np.zeros((h, w), np.int32)
    ignore = np.random.default_rng(seed).random((h, w)) < 0.1
    config = WeightMapConfig(variant=variant, sigma=sigma, sigma_sep=sigma)
    fast = weight_map(lab, config, ignore=ignore, separate=separate)
    ref = weight_map_reference(lab, config, ignore=ignore, separate=separate)
    np.testing.assert_allclose(fast, ref, atol=1e-4, rtol=0)


def test_sparse_large_ids_and_all_foreground():
    lab = np.full((12, 12), 10**9, dtype=np.int64)
    lab[:, 6:] = 7
    for config in (WeightMapConfig(), FALK):
        fast, ref = weight_map(lab, config), weight_map_reference(lab, config)
        np.testing.assert_allclose(fast, ref, atol=1e-4)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "instances, match",
    [
        (np.zeros((4, 4), np.float32), "integer"),
        (np.zeros((4, 4), bool), "integer"),
        (-np.ones((4, 4), np.int32), "negative"),
        (np.zeros((2, 4, 4), np.int32), "one plane at a time"),
        (np.zeros(4, np.int32), "one plane at a time"),
    ],
)
def test_bad_instances(instances, match):
    with pytest.raises(InputError, match=match):
        weight_map(instances)
    with pytest.raises(InputError, match=match):
        separate_touching(instances)


def test_bad_masks_and_options():
    lab = two_squares()
    with pytest.raises(InputError, match="shape"):
        weight_map(lab, ignore=np.zeros((3, 3), bool))
    with pytest.raises(InputError, match="shape"):
        weight_map(lab, classes=np.zeros((3, 3), np.int32))
    with pytest.raises(InputError, match="classes"):
        weight_map(lab, classes=np.zeros(lab.shape, np.float64))
    with pytest.raises(InputError, match="cutoff"):
        border_distances(lab, cutoff=-1)
    for kwargs in (
        {"variant": "unet"},
        {"sigma": 0},
        {"sigma_bal": -1},
        {"w0": -1.0},
        {"lam": float("nan")},
        {"v_bal": 1.5},
        {"sigma_sep": "6"},
    ):
        with pytest.raises(InputError):
            WeightMapConfig(**kwargs)
    with pytest.raises(AttributeError):
        WeightMapConfig().w0 = 3  # frozen


def test_cutoff_makes_terms_negligible():
    c = WeightMapConfig().cutoff
    assert c == pytest.approx(5 * math.sqrt(2 * math.log(1e6)))
    assert math.exp(-c * c / 50) == pytest.approx(1e-6)
    assert FALK.cutoff == pytest.approx(6 * math.sqrt(2 * math.log(1e6)))


def test_weight_map_worker_and_its_status_line():
    labels = np.zeros((2, 32, 32), np.uint16)
    labels[0, 8:16, 8:16], labels[0, 8:16, 16:24] = 1, 2  # touching
    labels[1, 4:8, 4:8] = 1  # alone
    config = AnnotationConfig(weight_map=WeightMapConfig(w0=10.0, sigma=5.0))
    messages = list(weight_planes(labels, [(0,), (1,)], config))
    assert [m[:2] for m in messages] == [("plane", (0,)), ("plane", (1,))]
    summary = WeightSummary([(0,), (1,)])
    for _, index, weight, base in messages:
        low, high = summary.add(index, weight, base)
        assert low == summary.floor and high > low
    assert summary.flat == [(1,)] and summary.high > summary.floor + 1
    text = summary.text((1,))
    assert text.startswith("plane 0, 1: weights ")
    assert text.endswith("no touching objects on plane 1: every weight is the class-balance weight")
    assert list(weight_planes(labels, [(5,)], config))[0][0] == "error"

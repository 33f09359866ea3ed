"""Segmentation quality measures of the U-Net paper's benchmarks.

Inputs are integer label images of equal shape (any dimension, 0 = background); outputs are plain
Python numbers (JSON-able). :func:`iou` is the foreground Jaccard index, :func:`seg_score` the Cell
Tracking Challenge SEG, :func:`matching` object detection scores, :func:`pixel_error` and
:func:`adapted_rand_error` the ISBI 2012 errors, and :func:`evaluate` collects them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment
from skimage.metrics import adapted_rand_error as _skimage_adapted_rand_error
from skimage.segmentation import relabel_sequential

from napari_unet.errors import InputError

METRIC_NAMES: tuple[str, ...] = ("iou", "seg", "ap50", "rand", "pixel")
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2).tolist())


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(labels)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name} must be an integer label image, got dtype {a.dtype}.")
    if a.size == 0:
        raise InputError(f"{name} is empty (shape {a.shape}).")
    if np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise InputError(f"{name} contains negative labels; labels must be >= 0.")
    # skimage's relabel_sequential refuses read-only input (memory-mapped .npy, napari data)
    return a if a.flags.writeable else a.copy()


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = _check_labels(pred, "pred"), _check_labels(gt, "gt")
    if p.shape != g.shape:
        raise InputError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}.")
    return p, g


def _ratio(num: float, den: float) -> float:
    """``num / den``, with 1.0 when there is nothing to count (``den == 0``)."""
    return float(num) / float(den) if den else 1.0


@dataclass(frozen=True)
class _Overlap:
    """Sparse contingency table between reference (gt) and predicted objects (ids 1..n)."""

    gt_id: np.ndarray  # per non-zero (gt object, pred object) pair
    pred_id: np.ndarray
    intersection: np.ndarray
    iou: np.ndarray
    gt_sizes: np.ndarray  # indexed by gt id (0 = background)
    n_gt: int
    n_pred: int


def _overlap(pred: np.ndarray, gt: np.ndarray) -> _Overlap:
    g = relabel_sequential(gt)[0].ravel().astype(np.int64)
    p = relabel_sequential(pred)[0].ravel().astype(np.int64)
    n_gt, n_pred = int(g.max()), int(p.max())
    table = (
        sparse.coo_matrix((np.ones(g.size, dtype=np.int64), (g, p)), shape=(n_gt + 1, n_pred + 1))
        .tocsr()
        .tocoo()
    )  # csr conversion sums the duplicate entries
    keep = (table.row > 0) & (table.col > 0)
    i, j, c = table.row[keep], table.col[keep], table.data[keep].astype(np.float64)
    gt_sizes = np.bincount(g, minlength=n_gt + 1)
    pred_sizes = np.bincount(p, minlength=n_pred + 1)
    iou_ = c / (gt_sizes[i] + pred_sizes[j] - c)
    return _Overlap(i, j, c, iou_, gt_sizes, n_gt, n_pred)


def unique_per_plane(labels: np.ndarray) -> np.ndarray:
    """Relabel a stack so that each (plane, id) pair along axis 0 becomes its own object.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label stack, at least 2D; planes along axis 0. Ids may repeat across planes.

    Returns
    -------
    numpy.ndarray
        int64 labels, 0 kept as background, ids 1..n consecutive and unique over the stack.
    """
    a = _check_labels(labels, "labels")
    if a.ndim < 2:
        raise InputError(f"A stack of planes needs at least 2 dimensions, got {a.ndim}.")
    rel = relabel_sequential(a)[0].astype(np.int64)
    plane = np.arange(a.shape[0], dtype=np.int64).reshape((-1,) + (1,) * (a.ndim - 1))
    key = np.where(rel > 0, plane * (int(rel.max()) + 1) + rel, 0)
    return relabel_sequential(key)[0].astype(np.int64)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Foreground Jaccard index ``|P & G| / |P | G|`` of ``pred > 0`` and ``gt > 0``.

    Returns 1.0 when both foregrounds are empty.
    """
    p, g = _check_pair(pred, gt)
    p, g = p > 0, g > 0
    return _ratio(np.count_nonzero(p & g), np.count_nonzero(p | g))


def seg_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Cell Tracking Challenge SEG score of one label image (2D or 3D objects).

    Each reference object is matched with the predicted object that covers more than half of its
    pixels (at most one can; exactly half is no match) and scores that pair's Jaccard index;
    unmatched reference objects score 0. The result is the mean over reference objects, so false
    positive predictions do not lower it. With no reference object the score is 1.0 if the
    prediction is empty too and 0.0 otherwise.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Integer label images of equal shape, 0 = background.

    Returns
    -------
    float
        SEG in [0, 1].
    """
    ov = _overlap(*_check_pair(pred, gt))
    if ov.n_gt == 0:
        return 1.0 if ov.n_pred == 0 else 0.0
    matched = 2 * ov.intersection > ov.gt_sizes[ov.gt_id]
    return float(ov.iou[matched].sum() / ov.n_gt)


def seg_score_planes(pred: np.ndarray, gt: np.ndarray) -> float:
    """SEG of a stack, pooling the reference objects of all planes (axis 0), as the CTC does.

    Ids are taken per plane (the same id in two planes is two objects); each plane is matched on
    its own and the Jaccard indices of all reference objects of all planes are averaged.
    """
    p, g = _check_pair(pred, gt)
    return seg_score(unique_per_plane(p), unique_per_plane(g))


def _n_matches(ov: _Overlap, thresh: float) -> int:
    """Size of the optimal one-to-one matching using pairs with IoU > thresh."""
    candidate = ov.iou > thresh
    if thresh >= 0.5:  # IoU > 0.5 pairs never share an object: the matching is unique
        return int(np.count_nonzero(candidate))
    i, j, s = ov.gt_id[candidate], ov.pred_id[candidate], ov.iou[candidate]
    if i.size == 0:
        return 0
    ui, ii = np.unique(i, return_inverse=True)
    uj, jj = np.unique(j, return_inverse=True)
    score = np.zeros((ui.size, uj.size))
    score[ii, jj] = s
    # most matches first, then the largest total IoU (the IoU term sums to less than 1)
    cost = -(score > thresh).astype(float) - score / (2 * min(ui.size, uj.size))
    rows, cols = linear_sum_assignment(cost)
    return int(np.count_nonzero(score[rows, cols] > thresh))


def _stats(tp: int, n_gt: int, n_pred: int, thresh: float) -> dict:
    fp, fn = n_pred - tp, n_gt - tp
    return {
        "thresh": float(thresh),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_true": n_gt,
        "n_pred": n_pred,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "ap": _ratio(tp, tp + fp + fn),
    }


def _check_thresh(thresh: float) -> float:
    t = float(thresh)
    if not 0.0 <= t < 1.0:
        raise InputError(f"IoU thresholds must lie in [0, 1), got {thresh}.")
    return t


def matching(pred: np.ndarray, gt: np.ndarray, thresh: float = 0.5) -> dict:
    """Match predicted to reference objects one-to-one by IoU and count hits.

    A pair can match when its IoU is strictly greater than ``thresh``. For ``thresh >= 0.5`` such
    pairs are unique, so the matching is exact without search; below 0.5 the matching with the
    most pairs (then the highest total IoU) is found with ``linear_sum_assignment``.
    ``ap`` is ``tp / (tp + fp + fn)``, the "average precision" of the Data Science Bowl 2018 and
    StarDist (not the area under a precision-recall curve). Ratios whose denominator is 0 are 1.0.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Integer label images of equal shape, 0 = background.
    thresh : float
        IoU threshold in [0, 1).

    Returns
    -------
    dict
        ``thresh, tp, fp, fn, n_true, n_pred, precision, recall, f1, ap``.
    """
    t = _check_thresh(thresh)
    ov = _overlap(*_check_pair(pred, gt))
    return _stats(_n_matches(ov, t), ov.n_gt, ov.n_pred, t)


def matching_curve(
    pred: np.ndarray, gt: np.ndarray, thresholds: Iterable[float] = DEFAULT_THRESHOLDS
) -> list[dict]:
    """:func:`matching` at several IoU thresholds (default 0.5, 0.55, ..., 0.95)."""
    ts = [_check_thresh(t) for t in thresholds]
    ov = _overlap(*_check_pair(pred, gt))
    return [_stats(_n_matches(ov, t), ov.n_gt, ov.n_pred, t) for t in ts]


def mean_ap(
    pred: np.ndarray, gt: np.ndarray, thresholds: Iterable[float] = DEFAULT_THRESHOLDS
) -> float:
    """Mean of the ``ap`` of :func:`matching_curve` over the thresholds."""
    curve = matching_curve(pred, gt, thresholds)
    if not curve:
        raise InputError("mean_ap needs at least one IoU threshold.")
    return float(np.mean([m["ap"] for m in curve]))


def pixel_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of pixels whose binary class (``label > 0``) differs: 1 - accuracy.

    This is the simple ISBI 2012 pixel error on binarised maps; the challenge's later definition
    (1 - maximal F-score over thresholds of a probability map) is not computed here.
    """
    p, g = _check_pair(pred, gt)
    return float(np.count_nonzero((p > 0) != (g > 0)) / p.size)


def instances_from_binary(mask: np.ndarray, *, per_plane: bool = False) -> np.ndarray:
    """Connected components (4-connectivity; 6 in 3D) of ``mask > 0`` as int32 labels.

    Use it to turn ISBI 2012 membrane maps (255 = cell, 0 = membrane) into the instance
    segmentations that :func:`adapted_rand_error` expects. With ``per_plane`` the planes along
    axis 0 are labelled separately (ids stay unique over the stack).
    """
    m = np.asarray(mask)
    if m.size == 0 or not (m.dtype == bool or np.issubdtype(m.dtype, np.number)):
        raise InputError(f"mask must be a non-empty numeric or boolean array, got {m.dtype}.")
    if np.iscomplexobj(m):
        raise InputError("mask must be real-valued, got a complex array.")
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    if per_plane and m.ndim >= 3:
        structure[0] = False  # no neighbours in the previous plane ...
        structure[-1] = False  # ... nor in the next one
    labels, _ = ndimage.label(m > 0, structure=structure)
    return labels.astype(np.int32)


def adapted_rand_error(
    pred: np.ndarray, gt: np.ndarray, *, pred_background: str = "singletons"
) -> float:
    """ISBI 2012 / SNEMI3D adapted Rand error: 1 - F-score of the foreground-restricted Rand index.

    Both inputs must be *instance* segmentations (for binary membrane maps use
    :func:`instances_from_binary`). Pixels that are background (0) in ``gt`` are not scored
    (``skimage.metrics.adapted_rand_error`` with ``ignore_labels=(0,)``). Predicted background
    pixels inside the scored region are, as in the challenge's Fiji / SNEMI3D scripts, each their
    own singleton segment (``pred_background="singletons"``); ``"segment"`` treats them as one
    segment like plain scikit-image. Pairs are counted as n(n - 1) (scikit-image) rather than the
    scripts' n^2, a negligible difference for images. Returns 0.0 when ``gt`` has no foreground
    (nothing is scored) or when every scored segment is a single pixel in both.
    """
    p, g = _check_pair(pred, gt)
    if pred_background not in ("singletons", "segment"):
        raise InputError(
            f"pred_background must be 'singletons' or 'segment', got {pred_background!r}."
        )
    if not np.any(g):
        return 0.0
    p = relabel_sequential(p)[0].astype(np.int64)
    if pred_background == "singletons":
        zero = p == 0
        p[zero] = p.max() + 1 + np.arange(np.count_nonzero(zero), dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = float(_skimage_adapted_rand_error(g, p, ignore_labels=(0,))[0])
    return 0.0 if np.isnan(error) else error


def evaluate(
    pred: np.ndarray,
    gt: np.ndarray,
    metrics: Sequence[str] = METRIC_NAMES,
    *,
    per_plane: bool = True,
) -> dict[str, float]:
    """Compute several metrics at once as a JSON-able dict.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Integer label images of equal shape, 0 = background.
    metrics : sequence of str
        Any of ``iou`` (:func:`iou`), ``seg`` (:func:`seg_score`), ``ap50`` (:func:`matching` at
        0.5; adds ``f1_50``), ``rand`` (:func:`adapted_rand_error`), ``pixel``
        (:func:`pixel_error`).
    per_plane : bool
        For inputs with 3 or more dimensions, treat axis 0 as a stack of planes: ids are per
        plane, objects are matched plane by plane and seg, ap50 and rand pool all planes. Set it
        to False for true 3D objects.

    Returns
    -------
    dict[str, float]
        One entry per requested metric (plus ``f1_50`` with ``ap50``).
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown:
        raise InputError(f"Unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}.")
    p, g = _check_pair(pred, gt)
    if per_plane and p.ndim >= 3 and any(m in names for m in ("seg", "ap50", "rand")):
        p_obj, g_obj = unique_per_plane(p), unique_per_plane(g)
    else:
        p_obj, g_obj = p, g
    out: dict[str, float] = {}
    for name in names:
        if name == "iou":
            out["iou"] = iou(p, g)
        elif name == "seg":
            out["seg"] = seg_score(p_obj, g_obj)
        elif name == "ap50":
            m = matching(p_obj, g_obj, 0.5)
            out["ap50"], out["f1_50"] = m["ap"], m["f1"]
        elif name == "rand":
            out["rand"] = adapted_rand_error(p_obj, g_obj)
        else:
            out["pixel"] = pixel_error(p, g)
    return out

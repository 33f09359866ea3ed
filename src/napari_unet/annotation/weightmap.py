"""Per-pixel loss weights of the U-Net (Ronneberger et al. 2015, Sect. 3; Falk et al. 2019).

Inputs (one 2D plane at a time, numpy in, numpy out):

* ``instances`` -- integer image, 0 = background, each positive id one object (cell). An id may
  be missing; an object need not be connected.
* ``classes`` (optional, same shape, non-negative int) -- per-pixel target class of the loss
  (0 = background). If omitted the target is 1 where the (separated) instances are > 0, else 0.
* ``ignore`` (optional, same shape, bool) -- pixels that are not annotated: weight 0, and they are
  left out of the class-frequency counts. They still count as instances for the distances.

Steps of :func:`weight_map`:

1. If ``separate``, touching instances are split by :func:`separate_touching`: every foreground
   pixel with a neighbour in the 8-neighbourhood (3 x 3 square) that belongs to a *different*
   non-zero instance becomes background. A straight contact thus becomes a 2 px wide gap (one
   pixel taken from each side); afterwards no two instances are even diagonally adjacent, so
   connected-component labelling with either connectivity recovers them. Gap pixels are target
   class 0 (also when ``classes`` is given) and get the border weight.
2. ``d1``/``d2`` are the Euclidean distances to the nearest and second-nearest (separated)
   instance; a pixel of an instance has distance 0 to it, its neighbour distance 1. So a gap pixel
   of a straight 2 px gap has d1 = 1, d2 = 2.
3. "Background" below means target class 0 (gaps included).

``variant="paper"``: w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)), the border term on background
pixels only; foreground pixels get w_c only. w_c(c) = n_total / (n_present_classes * n_c) over the
non-ignored pixels (a perfectly balanced image gives 1 everywhere); ``class_balance=False`` gives
w_c = 1. With fewer than 2 instances there is no d2 and the border term is 0.

``variant="falk"``: foreground weight 1; background
v_bal + (1 - v_bal) * exp(-d1^2 / (2 sigma_bal^2)) + lam * exp(-(d1 + d2)^2 / (2 sigma_sep^2)).
``class_balance`` is not used (the v_bal terms are Falk's balancing).

Speed: the exponential terms are negligible (< 1e-6 of their amplitude) once the distance in them
exceeds ``sigma * sqrt(2 ln 1e6)``, so d1, d2 for the separation term are computed locally, one
small distance transform per instance on its bounding box grown by that cutoff. Falk's d1 term is
one full-image distance transform of the background (exact). :func:`weight_map_reference` is the
naive method (one full-image distance transform per instance) kept for checks and benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from napari_unet.defaults import form_field
from napari_unet.errors import InputError

__all__ = [
    "WeightMapConfig",
    "separate_touching",
    "border_distances",
    "weight_map",
    "weight_map_reference",
]

#: Relative size below which an exponential term is treated as zero by the local computation.
NEGLIGIBLE = 1e-6
_CUTOFF_FACTOR = math.sqrt(2.0 * math.log(1.0 / NEGLIGIBLE))  # exp(-x^2/2) < 1e-6 for x > this
_MAX_CLASS = 65535


@dataclass(frozen=True)
class WeightMapConfig:
    """Parameters of the loss weight map.

    Parameters
    ----------
    variant : {"paper", "falk"}
        ``"paper"``: class balance + border term (Ronneberger et al. 2015). ``"falk"``: the released
        U-Net tooling's form (Falk et al. 2019).
    w0, sigma : float
        Paper: amplitude and width (px) of the border term.
    class_balance : bool
        Paper: use inverse class frequencies for w_c (else w_c = 1, the default). Off by default:
        measured on PhC-U373 and ISBI 2012 (docs/benchmarks.md), balancing a rare foreground made
        the network draw every object several pixels too large (SEG 0.65 against 0.75 without),
        and sampling tiles centred on objects already balances what the network sees.
    v_bal, sigma_bal, lam, sigma_sep : float
        Falk: background base weight (0..1), width (px) of the near-cell background term,
        amplitude and width (px) of the separation term.
    """

    # field metadata: label, limits and tooltip of the widget form (napari_unet._widgets._forms)
    variant: Literal["paper", "falk"] = form_field(
        "paper",
        "variant",
        "paper: Ronneberger et al. 2015, class balance + border term "
        "w0 exp(-(d1+d2)^2/2 sigma^2); falk: Falk et al. 2019 (the Fiji plugin), a "
        "smooth balance v_bal/sigma_bal and a separation term lambda/sigma_sep",
        choices=["paper", "falk"],
    )
    w0: float = form_field(
        10.0,
        "w0",
        "weight of the border term between touching objects (paper: 10)",
        min=0.0,
        max=1000.0,
        step=1.0,
    )
    sigma: float = form_field(
        5.0,
        "sigma (px)",
        "width of the border term in pixels (paper: about 5 px)",
        min=0.1,
        max=100.0,
        step=0.5,
    )
    class_balance: bool = form_field(
        False,
        "class balance",
        "multiply by the inverse frequency of each class (w_c); off by default: "
        "measured, it made objects too large on phase contrast",
    )
    v_bal: float = form_field(
        0.1,
        "v_bal",
        "falk: weight of background pixels relative to foreground (0.1)",
        min=0.0,
        max=1.0,
        step=0.05,
    )
    sigma_bal: float = form_field(
        10.0,
        "sigma_bal (px)",
        "falk: pixels over which the background weight rises near objects (10 px)",
        min=0.1,
        max=100.0,
        step=0.5,
    )
    lam: float = form_field(
        50.0,
        "lambda",
        "falk: weight of the separation term between objects (50)",
        min=0.0,
        max=1000.0,
        step=1.0,
    )
    sigma_sep: float = form_field(
        6.0,
        "sigma_sep (px)",
        "falk: width of the separation term in pixels (6 px)",
        min=0.1,
        max=100.0,
        step=0.5,
    )

    def __post_init__(self) -> None:
        if self.variant not in ("paper", "falk"):
            raise InputError(f"Unknown weight map variant {self.variant!r}; use 'paper' or 'falk'.")
        if not isinstance(self.class_balance, (bool, np.bool_)):
            raise InputError("Weight map option class_balance must be True or False.")
        for name in ("w0", "sigma", "v_bal", "sigma_bal", "lam", "sigma_sep"):
            value = getattr(self, name)
            number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            if not number or not math.isfinite(float(value)):
                raise InputError(f"Weight map option {name} must be a finite number: {value!r}.")
            if name.startswith("sigma") and value <= 0:
                raise InputError(f"Weight map option {name} must be positive, got {value!r}.")
            if value < 0:
                raise InputError(f"Weight map option {name} must not be negative, got {value!r}.")
        if self.v_bal > 1:
            raise InputError(f"Weight map option v_bal must be at most 1, got {self.v_bal!r}.")

    @property
    def cutoff(self) -> float:
        """Largest d1 + d2 (px) at which the separation/border term is not yet negligible."""
        sigma = self.sigma if self.variant == "paper" else self.sigma_sep
        return float(sigma) * _CUTOFF_FACTOR


def _as_labels(array: np.ndarray, name: str) -> np.ndarray:
    """Validate a 2D non-negative integer image (instances or classes)."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise InputError(
            f"{name} must be a 2D image (got {array.ndim} dimensions); weight maps are computed "
            "one plane at a time."
        )
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} must be an integer label image, got dtype {array.dtype}.")
    if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise InputError(f"{name} must not contain negative values.")
    return array


def _as_mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise InputError(f"{name} has shape {mask.shape} but the instances have shape {shape}.")
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"{name} must be a boolean mask, got dtype {mask.dtype}.")
    return mask.astype(bool, copy=False)


def separate_touching(instances: np.ndarray) -> np.ndarray:
    """Cut a background gap between touching instances.

    Parameters
    ----------
    instances : np.ndarray
        2D non-negative integer label image, 0 = background.

    Returns
    -------
    np.ndarray
        Copy of ``instances`` in which every foreground pixel that has an 8-neighbour (3 x 3
        square) belonging to a different non-zero instance is set to 0.
    """
    labels = _as_labels(instances, "instances")
    out = labels.copy()
    foreground = labels > 0
    cut = np.zeros(labels.shape, dtype=bool)
    # Compare every pixel with its right, lower, lower-right and lower-left neighbour (shifted
    # views); a pair of different non-zero ids cuts both pixels. That covers all 8 neighbours.
    head, tail, every = slice(None, -1), slice(1, None), slice(None)
    for first, second in (
        ((every, head), (every, tail)),
        ((head, every), (tail, every)),
        ((head, head), (tail, tail)),
        ((head, tail), (tail, head)),
    ):
        differ = (labels[first] != labels[second]) & foreground[first] & foreground[second]
        cut[first] |= differ
        cut[second] |= differ
    out[cut] = 0
    return out


def _local_distances(labels: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2 (float32) from one distance transform per instance on its grown bounding box."""
    d1 = np.full(labels.shape, np.inf, dtype=np.float32)
    d2 = np.full(labels.shape, np.inf, dtype=np.float32)
    if labels.size == 0 or not labels.any():
        return d1, d2
    if int(labels.max()) > labels.size:  # very sparse ids: keep find_objects' list short
        ids, inverse = np.unique(labels, return_inverse=True)
        labels = inverse.reshape(labels.shape) + (1 if ids[0] != 0 else 0)
    grow = int(math.ceil(cutoff))
    height, width = labels.shape
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        rows = slice(max(box[0].start - grow, 0), min(box[0].stop + grow, height))
        cols = slice(max(box[1].start - grow, 0), min(box[1].stop + grow, width))
        dist = ndi.distance_transform_edt(labels[rows, cols] != index).astype(np.float32)
        near, second = d1[rows, cols], d2[rows, cols]  # views: updated in place
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    return d1, d2


def border_distances(instances: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest instance, computed locally.

    Parameters
    ----------
    instances : np.ndarray
        2D non-negative integer label image, 0 = background (not separated here).
    cutoff : float
        Each instance only influences pixels within ``cutoff`` px of it: its distance transform is
        computed on its bounding box grown by ``cutoff``.

    Returns
    -------
    d1, d2 : np.ndarray
        float32 images: Euclidean distance to the nearest / second-nearest instance (0 on the
        instance's own pixels); values larger than ``cutoff`` are reported as ``+inf``.
    """
    labels = _as_labels(instances, "instances")
    try:
        cutoff = float(cutoff)
    except (TypeError, ValueError):
        raise InputError(f"cutoff must be a number, got {cutoff!r}.") from None
    if not cutoff >= 0 or math.isinf(cutoff):
        raise InputError(f"cutoff must be a finite non-negative number, got {cutoff!r}.")
    d1, d2 = _local_distances(labels, cutoff)
    d1[d1 > cutoff] = np.inf
    d2[d2 > cutoff] = np.inf
    return d1, d2


def _prepare(
    instances: np.ndarray,
    config: WeightMapConfig | None,
    ignore: np.ndarray | None,
    classes: np.ndarray | None,
    separate: bool,
) -> tuple[WeightMapConfig, np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate inputs; return config, separated labels, target classes, ignore mask (or None)."""
    config = WeightMapConfig() if config is None else config
    if not isinstance(config, WeightMapConfig):
        raise InputError("config must be a WeightMapConfig.")
    labels = _as_labels(instances, "instances")
    ignore = _as_mask(ignore, labels.shape, "ignore")
    separated = separate_touching(labels) if separate else labels
    if classes is None:
        target = (separated > 0).astype(np.uint8)
    else:
        classes = _as_labels(classes, "classes")
        if classes.shape != labels.shape:
            raise InputError(
                f"classes has shape {classes.shape} but the instances have shape {labels.shape}."
            )
        if classes.size and int(classes.max()) > _MAX_CLASS:
            raise InputError(f"classes must be class ids up to {_MAX_CLASS}, got {classes.max()}.")
        target = classes.copy()
        if separate:
            target[(labels > 0) & (separated == 0)] = 0  # gaps are background for the loss
    return config, separated, target, ignore


def class_balance_weights(target: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """The paper's w_c per pixel: n_total / (n_present_classes * n_c), counted over the pixels
    that are not ignored (ignored pixels get their class's weight too; callers zero them)."""
    counted = target if ignore is None else target[~ignore]
    counts = np.bincount(counted.ravel(), minlength=int(target.max(initial=0)) + 1)
    present = counts > 0
    lut = np.zeros(counts.shape, dtype=np.float64)
    if present.any():
        lut[present] = counted.size / (present.sum() * counts[present])
    return lut.astype(np.float32)[target]


def _combine(
    config: WeightMapConfig,
    target: np.ndarray,
    ignore: np.ndarray | None,
    d1: np.ndarray,
    d2: np.ndarray,
    d1_exact: np.ndarray | None,
) -> np.ndarray:
    """The weight formula, shared by the fast and the reference path."""
    background = target == 0
    if config.variant == "paper":
        if config.class_balance:
            weights = class_balance_weights(target, ignore)
        else:
            weights = np.ones(target.shape, dtype=np.float32)
        if config.w0 > 0:
            s = (d1[background] + d2[background]) / np.float32(config.sigma)
            weights[background] += np.float32(config.w0) * np.exp(np.float32(-0.5) * s * s)
    else:
        weights = np.ones(target.shape, dtype=np.float32)
        near = d1_exact[background] / np.float32(config.sigma_bal)
        value = config.v_bal + (1.0 - config.v_bal) * np.exp(np.float32(-0.5) * near * near)
        if config.lam > 0:
            s = (d1[background] + d2[background]) / np.float32(config.sigma_sep)
            value += np.float32(config.lam) * np.exp(np.float32(-0.5) * s * s)
        weights[background] = value
    if ignore is not None:
        weights[ignore] = 0.0
    return weights.astype(np.float32, copy=False)


def weight_map(
    instances: np.ndarray,
    config: WeightMapConfig | None = None,
    ignore: np.ndarray | None = None,
    classes: np.ndarray | None = None,
    separate: bool = True,
) -> np.ndarray:
    """Per-pixel loss weights (see the module docstring for the exact semantics).

    Parameters
    ----------
    instances : np.ndarray
        2D non-negative integer instance image, 0 = background.
    config : WeightMapConfig, optional
        Variant and parameters; defaults to the paper's values.
    ignore : np.ndarray, optional
        Boolean mask of unannotated pixels: weight 0, not counted for class balance.
    classes : np.ndarray, optional
        Per-pixel target class (0 = background); default: 1 on (separated) instances, else 0.
    separate : bool
        Cut background gaps between touching instances first (:func:`separate_touching`).

    Returns
    -------
    np.ndarray
        float32 weights, same shape as ``instances``.
    """
    config, separated, target, ignore = _prepare(instances, config, ignore, classes, separate)
    amplitude = config.w0 if config.variant == "paper" else config.lam
    if amplitude > 0:
        d1, d2 = _local_distances(separated, config.cutoff)
    else:
        d1 = d2 = np.full(separated.shape, np.inf, dtype=np.float32)
    d1_exact = None
    if config.variant == "falk":
        if separated.any():
            d1_exact = ndi.distance_transform_edt(separated == 0).astype(np.float32)
        else:
            d1_exact = np.full(separated.shape, np.inf, dtype=np.float32)
    return _combine(config, target, ignore, d1, d2, d1_exact)


def weight_map_reference(
    instances: np.ndarray,
    config: WeightMapConfig | None = None,
    ignore: np.ndarray | None = None,
    classes: np.ndarray | None = None,
    separate: bool = True,
) -> np.ndarray:
    """Naive :func:`weight_map`: one full-image distance transform per instance, no cutoff.

    Slow (cost ~ number of instances x image size); meant only for checking and benchmarking
    :func:`weight_map`, which it matches within ~1e-4. Parameters and return value as there.
    """
    config, separated, target, ignore = _prepare(instances, config, ignore, classes, separate)
    d1 = np.full(separated.shape, np.inf, dtype=np.float64)
    d2 = np.full(separated.shape, np.inf, dtype=np.float64)
    for index in np.unique(separated):
        if index == 0:
            continue
        dist = ndi.distance_transform_edt(separated != index)
        d2 = np.minimum(d2, np.maximum(d1, dist))
        d1 = np.minimum(d1, dist)
    d1, d2 = d1.astype(np.float32), d2.astype(np.float32)
    return _combine(config, target, ignore, d1, d2, d1)

"""From an image and an annotation label array to training examples.

The label-value schema (the one definition used by library, CLI and GUI; see docs/annotations.md):

``instances`` (default; also what importing a ground-truth instance mask gives)
    A plane is annotated when it holds any non-zero label (or is listed explicitly). In an
    annotated plane 0 = background and every other id = one object; a plane painted with a single
    value (a binary mask) has one object per connected region. Touching objects are kept
    apart by the U-Net weight map (gaps + border term).
``scribbles``
    Sparse strokes: 0 = not painted (ignored by the loss), 1 = background, 2 = object
    (2, 3, ... = class 1, 2, ... when several classes are painted).
``classes``
    Dense semantic classes: in an annotated plane 0 = background and c = class c.

In every mode the value :data:`IGNORE_LABEL` (65535) marks pixels the loss must ignore.

Images may be 2D (Y, X), stacks or time series (..., Y, X), with an optional channel axis
(``channel_axis``; RGB(A) in the last axis is detected). Every plane is normalised on its own with
robust percentiles; the recipe is stored in the model file so prediction does the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from napari_unet.annotation.weightmap import (
    WeightMapConfig,
    class_balance_weights,
    separate_touching,
    weight_map,
)
from napari_unet.defaults import form_field
from napari_unet.errors import AnnotationError, InputError
from napari_unet.io.planes import guess_channel_axis, split_channels
from napari_unet.normalization import Normalization, normalize_plane

IGNORE_LABEL = 65535
MAX_OBJECTS = IGNORE_LABEL - 1  # ids an annotation plane can hold (65535 = ignore)
Mode = Literal["instances", "scribbles", "classes"]
MODES: tuple[str, ...] = ("instances", "scribbles", "classes")
InstanceTargets = Literal["interiors", "paper"]
INSTANCE_TARGETS: tuple[str, ...] = ("interiors", "paper")
#: Class names of the two instance representations (a model file's class names tell which).
INTERIOR_CLASSES = ["background", "interior", "border"]
PAPER_CLASSES = ["background", "object"]


@dataclass(frozen=True)
class AnnotationConfig:
    """How annotation values are read and turned into targets and loss weights."""

    mode: Mode = form_field(
        "instances",
        "schema",
        "how label values are read: instances (one id per object, the paper's setting), "
        "scribbles (1 = background stroke, 2+ = object strokes, the rest ignored) or classes "
        "(one value per class)",
        choices=list(MODES),
    )
    weight_map: WeightMapConfig = field(default_factory=WeightMapConfig)
    normalization: Normalization = field(default_factory=Normalization)
    partial: bool = form_field(
        False,
        "partial: only some objects are painted per plane",
        "partial annotations: unpainted pixels count as background only within one object "
        "diameter of a painted object, so unpainted cells are not taught as background",
    )
    """Instances mode: the planes are *partially* annotated (only some objects painted). Then
    unpainted pixels count as background only within one object diameter (the median of the
    plane's painted objects) of a painted object; farther pixels are ignored, so unpainted cells
    are not taught as background. Off by default: a plane with annotations is taken as fully
    annotated, which also teaches the debris and halos far from any cell. Paint the ignore value
    (65535) over single unannotated objects either way."""

    instance_targets: InstanceTargets = form_field(
        "paper",
        "network learns",
        "instances: paper = the U-Net paper's two classes with separation gaps and border "
        "weight maps (the default); interiors = background, object interior and border band",
        choices=list(INSTANCE_TARGETS),
    )
    """Instances mode: what the network learns from the painted objects. ``paper`` (the
    default): the paper's two classes, touching objects cut apart by background gaps, the
    border weight map. ``interiors``: three classes -- background, object interior and a border
    band just inside every object (:func:`border_targets`; its width follows the object size);
    the object is interior plus band. Either way instances are the foreground split at relative
    cores (:mod:`napari_unet.inference.postprocess`). The three classes read that way scored
    higher on the six shared sets in 400-step screening but merged the demo's touching
    synthetic cells (SEG 0.19 against 0.85), so they are not the default (docs/benchmarks.md,
    "Instances")."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(
                f"unknown annotation mode {self.mode!r}; use one of {', '.join(MODES)}"
            )
        if self.instance_targets not in INSTANCE_TARGETS:
            raise InputError(
                f"unknown instance targets {self.instance_targets!r}; use one of "
                f"{', '.join(INSTANCE_TARGETS)}"
            )

    def class_names(self) -> list[str] | None:
        """The output classes this schema trains (None: numbered by the trainer)."""
        if self.mode != "instances":
            return None
        return list(INTERIOR_CLASSES if self.instance_targets == "interiors" else PAPER_CLASSES)


@dataclass
class TrainingPlane:
    """One annotated plane, ready for the trainer."""

    image: np.ndarray  # float32 (C, Y, X), normalised
    target: np.ndarray  # int64 (Y, X), class index per pixel (0 where ignored)
    weight: np.ndarray  # float32 (Y, X), loss weight; 0 = ignored
    index: tuple[int, ...]  # position of the plane in the leading axes of the source
    instances: np.ndarray | None = None  # int32 (Y, X) painted objects (instances mode), else None


def check_labels(labels: np.ndarray) -> np.ndarray:
    """Refuse float, negative or oversized label values; return an int64 view-safe array."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        if (
            np.issubdtype(labels.dtype, np.floating)
            and np.all(np.isfinite(labels))
            and np.all(labels == np.round(labels))
        ):
            labels = labels.astype(np.int64)
        else:
            raise AnnotationError(
                f"labels must hold whole numbers (integer ids), got {labels.dtype} values"
            )
    if labels.size and labels.min() < 0:
        raise AnnotationError("labels must not be negative (0 = background, 1, 2, ... = objects)")
    if labels.size and labels.max() > IGNORE_LABEL:
        raise AnnotationError(f"label values above {IGNORE_LABEL} are not supported")
    return labels.astype(np.int64, copy=False)


def annotated_planes(labels: np.ndarray) -> list[tuple[int, ...]]:
    """Indices (over the leading axes) of the planes that hold any non-zero label."""
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise InputError("labels need at least two (Y, X) axes")
    lead = labels.shape[:-2]
    flat = labels.reshape((-1,) + labels.shape[-2:])
    hits = np.flatnonzero(flat.reshape(flat.shape[0], -1).any(axis=1))
    return [tuple(int(i) for i in np.unravel_index(h, lead)) if lead else () for h in hits]


def plane_targets(
    plane_labels: np.ndarray, config: AnnotationConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """Targets, loss weights and the number of classes for one (Y, X) annotation plane."""
    labels = check_labels(plane_labels)
    ignore = labels == IGNORE_LABEL
    if config.mode == "instances":
        instances = painted_objects(labels)
        if config.partial:
            ignore = ignore | _far_from_objects(instances)
        if config.instance_targets == "interiors":
            target = border_targets(instances)
            weight = weight_map(
                instances, config.weight_map, ignore=ignore, classes=target, separate=False
            )
            return target, weight.astype(np.float32), 3
        separated = separate_touching(instances)
        target = (separated > 0).astype(np.int64)
        weight = weight_map(instances, config.weight_map, ignore=ignore)
        return target, weight.astype(np.float32), 2
    if config.mode == "classes":
        target = np.where(ignore, 0, labels)
        classes = np.where(ignore, -1, labels)
        weight = _balanced_weights(classes, config.weight_map.class_balance)
        return target, weight, int(target.max()) + 1
    # scribbles: 0 = unpainted, 1 = background, k >= 2 = class k - 1
    painted = (labels > 0) & ~ignore
    target = np.where(painted, labels - 1, 0)
    classes = np.where(painted, target, -1)
    weight = _balanced_weights(classes, config.weight_map.class_balance)
    return target, weight, int(target.max()) + 1


def border_band_width(instances: np.ndarray) -> int:
    """Width in pixels of the border band of :func:`border_targets`: a tenth of the median
    object diameter (equivalent circle), between 1 and 8 px."""
    ids, areas = np.unique(instances[instances > 0], return_counts=True)
    if not len(ids):
        return 1
    diameter = float(np.sqrt(4 * np.median(areas) / np.pi))
    return int(np.clip(round(diameter / 10), 1, 8))


def border_targets(instances: np.ndarray, width: int | None = None) -> np.ndarray:
    """Three-class targets of instance annotations: 0 background, 1 interior, 2 border band.

    The band is every object pixel within ``width`` - 1 px of the object's outline (a pixel next
    to background or to another object; the image edge is not an outline), so two touching
    objects are parted by a band of 2 x ``width`` px. An object thinner than its band keeps its
    innermost pixels as interior: every object has a seed. ``width`` defaults to
    :func:`border_band_width`.
    """
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    instances = np.asarray(instances)
    target = np.zeros(instances.shape, np.int64)
    objects = instances > 0
    if not objects.any():
        return target
    width = border_band_width(instances) if width is None else int(width)
    outline = find_boundaries(instances, mode="inner") & objects
    depth = ndimage.distance_transform_edt(~outline)
    ids = np.unique(instances[objects])
    deepest = np.zeros(int(ids.max()) + 1, np.float64)
    deepest[ids] = ndimage.maximum(depth, instances, ids)
    limit = np.minimum(width - 1, deepest * 0.5)  # thin objects keep a core
    band = objects & (depth <= limit[instances])
    target[objects] = 1
    target[band] = 2
    return target


def _far_from_objects(instances: np.ndarray) -> np.ndarray:
    """Pixels farther than one median object diameter from every object (partial annotations)."""
    from scipy import ndimage

    ids, areas = np.unique(instances[instances > 0], return_counts=True)
    if not len(ids):
        return np.zeros(instances.shape, bool)
    diameter = float(np.sqrt(4 * np.median(areas) / np.pi))
    return ndimage.distance_transform_edt(instances == 0) > diameter


def _balanced_weights(classes: np.ndarray, balance: bool) -> np.ndarray:
    """Loss weights for dense classes (``-1`` = ignored, weight 0): w_c when ``balance``."""
    ignore = classes < 0
    target = np.where(ignore, 0, classes)
    weight = (
        class_balance_weights(target, ignore) if balance else np.ones(classes.shape, np.float32)
    )
    weight[ignore] = 0
    return weight.astype(np.float32)


def training_planes(
    image: np.ndarray,
    labels: np.ndarray,
    config: AnnotationConfig | None = None,
    planes: list[tuple[int, ...]] | None = None,
    channel_axis: int | None = None,
) -> tuple[list[TrainingPlane], int]:
    """Turn an image and its annotations into training planes.

    Parameters
    ----------
    image : (..., Y, X) array, optionally with a channel axis.
    labels : (..., Y, X) integer annotations in the schema of ``config.mode``.
    config : annotation mode, weight-map and normalisation settings.
    planes : leading-axis indices of the planes to use (default: every plane with annotations;
        list a plane explicitly to train on it even if it is empty, e.g. all background).
    channel_axis : image axis holding channels (default: guessed from the shapes).

    Returns
    -------
    The planes and the number of classes found (at least 2).
    """
    config = config or AnnotationConfig()
    labels = np.asarray(labels)
    if channel_axis is None:
        channel_axis = guess_channel_axis(np.shape(image), labels.shape)
    image_c = split_channels(image, channel_axis)  # planes are read one at a time below
    if image_c.shape[:-3] + image_c.shape[-2:] != labels.shape:
        raise InputError(
            f"image shape {np.shape(image)} and labels shape {labels.shape} do not match"
        )
    if planes is None:
        planes = annotated_planes(labels)
    if not planes:
        raise AnnotationError(
            "no annotated plane: paint at least one object and some background first"
        )
    result: list[TrainingPlane] = []
    num_classes = 2
    for index in planes:
        index = tuple(int(i) for i in np.atleast_1d(index)) if labels.ndim > 2 else ()
        try:
            target, weight, k = plane_targets(labels[index], config)
        except IndexError:
            raise InputError(
                f"plane {index} is outside the labels of shape {labels.shape}"
            ) from None
        num_classes = max(num_classes, k)
        result.append(
            TrainingPlane(
                image=normalize_plane(np.asarray(image_c[index]), config.normalization),
                target=target,
                weight=weight,
                index=index,
                instances=painted_objects(labels[index]) if config.mode == "instances" else None,
            )
        )
    _check_classes_present(result, config.mode)
    return result, num_classes


def painted_objects(plane_labels: np.ndarray) -> np.ndarray:
    """The painted objects of an instances-mode plane as int32 ids, ignored pixels as 0; a
    binary mask (one value for every object) gives one object per connected region."""
    labels = check_labels(plane_labels)
    instances = np.where(labels == IGNORE_LABEL, 0, labels)
    if len(np.unique(instances)) == 2:
        from scipy import ndimage

        instances = ndimage.label(instances > 0)[0]
    return instances.astype(np.int32)


def _check_classes_present(planes: list[TrainingPlane], mode: str) -> None:
    has_bg = any(((p.target == 0) & (p.weight > 0)).any() for p in planes)
    has_fg = any(((p.target > 0) & (p.weight > 0)).any() for p in planes)
    if not has_fg:
        what = "no object is painted" if mode != "scribbles" else "no object stroke (label 2)"
        raise AnnotationError(f"the annotations hold no foreground: {what}")
    if not has_bg:
        what = (
            "label 1 strokes"
            if mode == "scribbles"
            else "unpainted (0) pixels in an annotated plane"
        )
        raise AnnotationError(f"the annotations hold no background: paint some ({what})")


def brush_value(mode: str, what: str, plane: np.ndarray) -> int:
    """The label a brush paints in ``mode``: ``what="background"`` (scribbles 1, else 0) or
    ``"object"``: a new id in ``plane`` (instances), 2 (scribbles) or the first class."""
    if what == "background":
        return 1 if mode == "scribbles" else 0
    if mode != "instances":
        return 2 if mode == "scribbles" else 1
    plane = np.asarray(plane)
    largest = int(np.max(plane, where=plane != IGNORE_LABEL, initial=0))
    return min(largest + 1, IGNORE_LABEL - 1)


def plane_as_annotation(
    plane: np.ndarray, mode: str, instances: bool, name: str = ""
) -> tuple[np.ndarray, int]:
    """A segmented (Y, X) plane as annotation values of ``mode``, and its number of objects.

    ``instances``: the plane numbers objects (ids may be large and unique over a stack); else
    it holds classes. Instances mode renumbers objects 1..n (a class plane: its connected
    foreground parts); scribbles: background 1, objects 2 (class c: c + 1); classes: objects
    become class 1 (a class plane is kept). Pixels at :data:`IGNORE_LABEL` stay ignored.
    """
    from scipy import ndimage
    from skimage.segmentation import relabel_sequential

    plane = np.asarray(plane)
    ignore = plane == IGNORE_LABEL
    objects = np.where(ignore, 0, plane).astype(np.int64)
    if mode == "instances":
        if instances:
            out = relabel_sequential(objects)[0]
        else:
            out = ndimage.label(objects > 0)[0]
        count = int(out.max()) if out.size else 0
        if count > MAX_OBJECTS:
            raise AnnotationError(
                f"plane {name} holds {count} objects but an annotation plane holds at most "
                f"{MAX_OBJECTS}: remove objects (or tile the image) before using it"
            )
    elif mode == "scribbles":
        out = np.where(objects > 0, 2 if instances else objects + 1, 1)
        count = int(len(np.unique(objects[objects > 0])))
    else:
        out = (objects > 0).astype(np.int64) if instances else objects
        count = int(len(np.unique(objects[objects > 0])))
    if out.size and out.max() > MAX_OBJECTS:
        raise AnnotationError(
            f"plane {name} holds label {int(out.max())}; annotations hold at most {MAX_OBJECTS}"
        )
    out = np.asarray(out, np.int64)
    out[ignore] = IGNORE_LABEL
    return out, count

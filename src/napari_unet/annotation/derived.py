"""Settings derived from the user's annotations, recorded in the model file.

The annotations say how large the objects are. From them :func:`derive_settings` sets what a
biologist would otherwise tune by hand, so that prediction without options gives clean objects:

* ``min_size`` -- objects smaller than a quarter of the smallest annotated object are specks and
  are dropped. "Smallest" is robust: the 5th percentile of the areas of annotated objects that
  are not cut by the plane's edge (all objects when every one touches an edge).
* ``fill_holes`` -- on when no annotated object has a hole (cells rarely do); off when the
  annotations contain holes on purpose (e.g. a ring-shaped object).
* ``object_diameter`` -- median equivalent diameter in pixels, for the record and the GUI.

These go to :class:`~napari_unet.inference.postprocess.PostprocessConfig` through
:func:`postprocess_config`; an explicit option always wins.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_unet.annotation.schema import AnnotationConfig, TrainingPlane
from napari_unet.inference.postprocess import PostprocessConfig

MIN_SIZE_FRACTION = 0.25


def _object_stats(plane: TrainingPlane) -> list[tuple[int, bool, bool]]:
    """(area, touches the plane's edge, has a hole) of each annotated object of one plane.

    Objects are the connected foreground regions; each is examined in its bounding box only
    (``ndimage.find_objects``), so planes with thousands of objects stay cheap.
    """
    foreground = (plane.target > 0) & (plane.weight > 0)
    labels, n = ndimage.label(foreground)
    if not n:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    height, width = labels.shape
    stats = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = box
        edge = rows.start == 0 or cols.start == 0 or rows.stop == height or cols.stop == width
        mask = labels[box] == i
        hole = bool((ndimage.binary_fill_holes(mask) & ~mask).any())
        stats.append((int(areas[i]), edge, hole))
    return stats


def derive_settings(planes: list[TrainingPlane], annotation: AnnotationConfig) -> dict:
    """Post-processing settings implied by the annotated objects (see the module docstring)."""
    none = {"min_size": 0, "fill_holes": False, "object_diameter": None}
    if annotation.mode != "instances":
        return none
    stats = [s for plane in planes for s in _object_stats(plane)]
    if not stats:
        return none
    inner = [(area, hole) for area, edge, hole in stats if not edge]
    pool = np.array([a for a, _ in inner] or [a for a, _, _ in stats], float)
    smallest = float(np.percentile(pool, 5)) if len(pool) >= 20 else float(pool.min())
    diameter = float(np.sqrt(4 * np.median(pool) / np.pi))
    return {
        "min_size": int(MIN_SIZE_FRACTION * smallest),
        "fill_holes": not any(hole for _, hole in inner),
        "object_diameter": round(diameter, 1),
    }


def postprocess_config(derived: dict | None, **overrides) -> PostprocessConfig:
    """The post-processing a model file recommends, with explicit options taking precedence."""
    derived = derived or {}
    settings = {
        "min_size": int(derived.get("min_size", 0) or 0),
        "fill_holes": bool(derived.get("fill_holes", False)),
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return PostprocessConfig(**settings)

"""Settings derived from the user's annotations, recorded in the model file.

The annotations say how large the objects are. From them :func:`derive_settings` sets what a
biologist would otherwise tune by hand, so that prediction without options gives clean objects:

* ``min_size`` -- objects smaller than a quarter of the smallest annotated object are specks and
  are dropped. "Smallest" is robust: the 5th percentile of the areas of annotated objects that
  are not cut by the plane's edge (all objects when every one touches an edge).
* ``fill_holes`` -- on when no annotated object has a hole (cells rarely do); off when the
  annotations contain holes on purpose (e.g. a ring-shaped object).
* ``object_diameter`` -- median equivalent diameter in pixels, for the record and the GUI.

These go to :class:`~napari_unet.postprocess.PostprocessConfig` through
:func:`postprocess_config`; an explicit option always wins.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .annotations import AnnotationConfig, TrainingPlane
from .postprocess import PostprocessConfig

MIN_SIZE_FRACTION = 0.25


def _objects(plane: TrainingPlane) -> list[np.ndarray]:
    """Boolean masks of the annotated objects of one plane (connected foreground regions)."""
    foreground = (plane.target > 0) & (plane.weight > 0)
    labels, n = ndimage.label(foreground)
    return [labels == i for i in range(1, n + 1)] if n else []


def _touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def derive_settings(planes: list[TrainingPlane], annotation: AnnotationConfig) -> dict:
    """Post-processing settings implied by the annotated objects (see the module docstring)."""
    if annotation.mode != "instances":
        return {"min_size": 0, "fill_holes": False, "object_diameter": None}
    areas, inner_areas, holes = [], [], False
    for plane in planes:
        for mask in _objects(plane):
            area = int(mask.sum())
            areas.append(area)
            if not _touches_edge(mask):
                inner_areas.append(area)
                holes = holes or bool((ndimage.binary_fill_holes(mask) & ~mask).any())
    if not areas:
        return {"min_size": 0, "fill_holes": False, "object_diameter": None}
    pool = np.array(inner_areas or areas, float)
    smallest = float(np.percentile(pool, 5)) if len(pool) >= 20 else float(pool.min())
    diameter = float(np.sqrt(4 * np.median(pool) / np.pi))
    return {
        "min_size": int(MIN_SIZE_FRACTION * smallest),
        "fill_holes": not holes,
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

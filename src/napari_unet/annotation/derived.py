"""Settings derived from the user's annotations, recorded in the model file.

The annotations say how large the objects are and how the network was taught to part them.
From them :func:`derive_settings` sets what a biologist would otherwise tune by hand, so that
prediction without options gives clean objects:

* ``method`` / ``foreground_classes`` / ``core_ratio`` -- how instances are formed:
  ``relative-cores`` at ``CORE_RATIO`` (cores relative to each object's own confidence, no
  probability threshold) over the foreground (class 1 of the paper's two classes, classes 1
  and 2 of a three-class network). Files written before it record ``cores`` (or nothing) and
  keep segmenting as before.
* ``join_wide`` / ``join_shallow`` -- parts of one component that touch along at least
  ``JOIN_WIDE`` x the width of the smaller part, across a valley of the log-odds no deeper than
  down to ``JOIN_SHALLOW`` x their cores' level, are one object cut between two confident
  patches, and are joined again (a less confident network, e.g. one fine-tuned on new data, has
  several cores per cell); two cells parted at a faint membrane meet along a short stretch of
  it or across a deep valley. Files written before it record neither and are read without
  joining.
* ``min_size`` -- objects smaller than a quarter of the smallest annotated object are specks and
  are dropped. "Smallest" is robust to what real annotation layers hold: stray pieces (under
  2 % of the typical, area-weighted median area -- a few pixels left by a brush or by the
  model's own output in a corrected plane) and objects cut by the plane's edge do not count
  (all objects count when every one touches an edge); of the rest, the 5th percentile when
  there are 20 or more, else the smallest.
* ``fill_holes`` -- on when no annotated object has a hole (cells rarely do); off when the
  annotations contain holes on purpose (e.g. a ring-shaped object). Stray pieces do not count.
* ``object_diameter`` -- median equivalent diameter in pixels, for the record and the GUI.
* ``derived_from`` -- one sentence saying from what (shown by the CLI and the Segment widget).

These go to :class:`~napari_unet.inference.postprocess.PostprocessConfig` through
:func:`postprocess_config`, the one place a run's post-processing is assembled; an explicit
option always wins.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_unet.annotation.schema import AnnotationConfig, TrainingPlane
from napari_unet.inference.postprocess import PostprocessConfig

MIN_SIZE_FRACTION = 0.25
CORE_RATIO = PostprocessConfig().core_ratio
# chosen on the six shared sets and a fine-tuned network (docs/benchmarks.md, "Instances")
JOIN_WIDE = 0.8
JOIN_SHALLOW = 0.3


STRAY_FRACTION = 0.02


def _object_stats(plane: TrainingPlane) -> list[tuple[int, bool, bool]]:
    """(area, touches the plane's edge, has a hole) of each annotated object of one plane.

    Objects are the painted instances (or, for planes without them, the connected foreground);
    each is examined in its bounding box only (``ndimage.find_objects``), so planes with
    thousands of objects stay cheap.
    """
    valid = plane.weight > 0
    if plane.instances is not None:
        labels = np.where(valid, plane.instances, 0)
    else:
        labels = ndimage.label((plane.target > 0) & valid)[0]
    if not labels.any():
        return []
    areas = np.bincount(labels.ravel())
    height, width = labels.shape
    stats = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rows, cols = box
        edge = rows.start == 0 or cols.start == 0 or rows.stop == height or cols.stop == width
        mask = labels[box] == i
        hole = bool((ndimage.binary_fill_holes(mask) & ~mask).any())
        stats.append((int(areas[i]), edge, hole))
    return stats


def _typical_area(stats: list[tuple[int, bool, bool]]) -> float:
    """The area of the object a painted pixel typically lies in (the area-weighted median): a
    crowd of one-pixel pieces cannot pull it down, as it would the plain median."""
    areas = np.sort(np.array([a for a, _, _ in stats], float))
    cumulative = np.cumsum(areas)
    return float(areas[np.searchsorted(cumulative, cumulative[-1] / 2)])


def derive_settings(planes: list[TrainingPlane], annotation: AnnotationConfig) -> dict:
    """Post-processing settings implied by the annotated objects (see the module docstring)."""
    none = {"min_size": 0, "fill_holes": False, "object_diameter": None}
    if annotation.mode != "instances":
        return none
    classes = [1, 2] if annotation.instance_targets == "interiors" else [1]
    method = {
        "method": "relative-cores",
        "foreground_classes": classes,
        "core_ratio": CORE_RATIO,
        "join_wide": JOIN_WIDE,
        "join_shallow": JOIN_SHALLOW,
    }
    stats = [s for plane in planes for s in _object_stats(plane)]
    if not stats:
        return {**none, **method}
    kept = [s for s in stats if s[0] >= STRAY_FRACTION * _typical_area(stats)]
    strays = len(stats) - len(kept)
    inner = [(area, hole) for area, edge, hole in kept if not edge]
    pool = np.array([a for a, _ in inner] or [a for a, _, _ in kept], float)
    many = len(pool) >= 20
    smallest = float(np.percentile(pool, 5)) if many else float(pool.min())
    diameter = float(np.sqrt(4 * np.median(pool) / np.pi))
    what = "the 5th percentile of" if many else "the smallest of"
    source = f"{what} {len(pool)} annotated objects" + (
        " not cut by the edge" if inner else " (all cut by the edge)"
    )
    if strays:
        source += f"; {strays} stray piece(s) under 2 % of the typical area ignored"
    return {
        "min_size": int(MIN_SIZE_FRACTION * smallest),
        "fill_holes": not any(hole for _, hole in inner),
        "object_diameter": round(diameter, 1),
        **method,
        "derived_from": f"min size = a quarter of {source}",
    }


def postprocess_config(derived: dict | None, **overrides) -> PostprocessConfig:
    """The post-processing a model file recommends, with explicit options taking precedence.

    Files written before ``method`` was recorded part objects at confident cores, as before."""
    derived = derived or {}
    settings = {
        "min_size": int(derived.get("min_size", 0) or 0),
        "fill_holes": bool(derived.get("fill_holes", False)),
        "method": str(derived.get("method", "cores")),
        "foreground_classes": tuple(int(c) for c in derived.get("foreground_classes", (1,))),
    }
    if derived.get("object_diameter"):
        settings["object_diameter"] = float(derived["object_diameter"])
    for key in ("neck_depth", "core_ratio", "join_wide", "join_shallow"):
        if derived.get(key):
            settings[key] = float(derived[key])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return PostprocessConfig(**settings)


def join_text(wide: float | None, shallow: float | None) -> str:
    """How parts are joined again, in words (empty when they are not)."""
    if not wide:
        return ""
    valley = f", valley at least {shallow:g}x the core level" if shallow else ""
    return f", cut cells joined (contact at least {wide:g}x the width{valley})"


def _method_text(derived: dict) -> str:
    method = str(derived.get("method", "cores"))
    if method == "relative-cores":
        text = f"relative cores at {derived.get('core_ratio', CORE_RATIO)}"
        return text + join_text(derived.get("join_wide"), derived.get("join_shallow"))
    return method


def describe(derived: dict | None) -> str:
    """One line for the user: what was derived from the annotations, and from what."""
    derived = derived or {}
    if not derived.get("object_diameter"):
        return "no settings derived (no annotated objects)"
    parts = [
        f"instances: {_method_text(derived)}",
        f"min size {derived.get('min_size', 0)} px",
        f"fill holes {'on' if derived.get('fill_holes') else 'off'}",
        f"object diameter {derived['object_diameter']} px",
    ]
    line = ", ".join(parts)
    if derived.get("derived_from"):
        line += f" ({derived['derived_from']})"
    return line

"""Labels from elsewhere as annotation planes: a labels layer (e.g. ground truth) or per-plane
mask files (:mod:`napari_unet.io.mask_files`), checked, put into the annotation schema and
summed up in one sentence. What 1 Annotate's Import buttons do, without the viewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_unet.annotation.schema import IGNORE_LABEL, annotated_planes
from napari_unet.defaults import form_field
from napari_unet.errors import InputError
from napari_unet.io.mask_files import MATCHING, check_labels, count_objects
from napari_unet.io.plane_lists import plane_names

Planes = dict[tuple[int, ...], np.ndarray]


@dataclass
class ImportRequest:
    """The form rows of 1 Annotate's import: which planes of a labels layer, how files match."""

    planes: str = form_field(
        "",
        "planes",
        "planes to copy (e.g. 0, 2, 5-7); empty: every plane that holds labels. A 2D labels "
        "layer goes into the one plane named here (empty: the plane on screen)",
        placeholder="all planes with labels, or e.g. 0, 2",
    )
    match: str = form_field(
        "auto",
        "match by",
        "auto: the image's own file names when known, else the number in the name; number: "
        "the number in the name; order: the files in name order fill planes 0, 1, ...",
        choices=MATCHING,
    )


def plane_inside(index: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``index`` names a plane of an array of ``shape`` (all leading axes)."""
    n_lead = len(shape) - 2
    return len(index) == n_lead and all(
        0 <= i < n for i, n in zip(index, shape[:n_lead], strict=True)
    )


def _check_inside(planes, shape: tuple[int, ...], what: str) -> None:
    for index in planes:
        if not plane_inside(index, shape):
            raise InputError(f"plane {plane_names([index])} is outside the {what} {shape}")


def planes_from_labels(
    data: np.ndarray,
    shape: tuple[int, ...],
    planes: list | None = None,
    current: tuple[int, ...] = (),
    name: str = "labels",
) -> Planes:
    """The planes of the labels ``data`` to copy into annotations of ``shape``: ``{index: plane}``.

    ``data`` of ``shape`` gives the ``planes`` listed (None: every plane holding labels); a 2D
    ``data`` into a stack goes into the one plane listed (None: ``current``, the plane on
    screen). Labels and planes are checked (:class:`InputError` naming ``name``).
    """
    data, shape = np.asarray(data), tuple(shape)
    n_lead = len(shape) - 2
    listed = None if planes is None else [tuple(int(i) for i in np.atleast_1d(p)) for p in planes]
    if data.ndim == 2 and n_lead and data.shape == shape[-2:]:
        chosen = [current] if listed is None else listed
        if len(chosen) != 1:
            raise InputError(f"'{name}' is one 2D plane: name one plane to put it in")
        _check_inside(chosen, shape, "annotations")
        return {chosen[0]: check_labels(data, name, IGNORE_LABEL)}
    if data.shape != shape:
        raise InputError(f"labels {data.shape} do not fit the annotations {shape}")
    check_labels(data, name, IGNORE_LABEL)
    chosen = annotated_planes(data) if listed is None else [p[:n_lead] for p in listed]
    _check_inside(chosen, shape, "labels")
    return {index: data[index] for index in chosen}


def schema_plane(plane: np.ndarray, mode: str) -> np.ndarray:
    """Imported labels in the schema ``mode``: scribbles get background 1 and objects 2."""
    if mode == "scribbles":
        return np.where(plane == IGNORE_LABEL, plane, np.where(plane > 0, 2, 1))
    return plane


def as_annotations(planes: Planes, dtype, mode: str) -> Planes:
    """``planes`` in the schema ``mode`` and the annotations' ``dtype``; every plane is checked
    (its largest label fits ``dtype``) before any is converted."""
    dtype = np.dtype(dtype)
    highest = np.iinfo(dtype).max if dtype.kind in "iu" else IGNORE_LABEL
    for index, plane in planes.items():
        if plane.size and int(plane.max()) > highest:
            raise InputError(
                f"plane {plane_names([index])}: label {int(plane.max())} does not fit the "
                f"annotations ({dtype}, at most {highest})"
            )
    return {index: schema_plane(plane, mode).astype(dtype) for index, plane in planes.items()}


def object_counts(planes: Planes) -> dict[tuple[int, ...], int]:
    """Objects (distinct labels other than 0 and the ignore label) per plane."""
    return {index: count_objects(plane, IGNORE_LABEL) for index, plane in planes.items()}


def and_join(items) -> str:
    """``1, 2 and 3``."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def import_summary(what: str, planes: Planes, mode: str) -> str:
    """``imported 'gt' into planes 0, 2: 23 and 19 objects`` (label values, unless instances).

    ``what``: the source as the sentence names it (``'gt'``, ``2 mask files``).
    """
    if not planes:
        return f"{what} holds no labels: nothing imported"
    counts = and_join(object_counts(planes).values())
    unit = "objects" if mode == "instances" else "label values"
    s = "s" * (len(planes) != 1)
    return f"imported {what} into plane{s} {plane_names(planes)}: {counts} {unit}"

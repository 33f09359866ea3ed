"""The annotation file: a label stack and what makes it annotations, in one TIFF.

A napari-unet annotation file (``*.unet-annotations.tif`` by convention) is a plain,
zlib-compressed TIFF written by tifffile, readable by any TIFF reader (Fiji opens it as a
stack). The label array keeps its shape and dtype; the plugin's metadata is JSON in the first
page's ImageDescription, tifffile's "shaped" description::

    {"shape": [10, 520, 696],
     "napari_unet": {"format": "napari-unet annotations", "version": 1,
                     "mode": "instances", "planes": [[1], [4]], "image": "cells",
                     "ignore_label": 65535, "class_names": null,
                     "scale": [1.0, 0.5, 0.5], "translate": [0.0, 0.0, 0.0]}}

``planes`` are the planes marked annotated explicitly (including empty, all-background ones);
planes that hold labels are annotated anyway. Nothing is pickled. The napari reader and
writer contributions (:mod:`napari_unet.io.annotation_layer`) and the 1 Annotate widget call
:func:`save_annotations` and :func:`load_annotations`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_unet.errors import InputError

FORMAT = "napari-unet annotations"
VERSION = 1
SUFFIX = ".unet-annotations.tif"
KEY = "napari_unet"  # the key of the plugin's metadata in the TIFF's JSON description
IGNORE_LABEL = 65535  # napari_unet.annotation.schema.IGNORE_LABEL (checked by the tests)
MODES = ("instances", "scribbles", "classes")


@dataclass
class AnnotationMetadata:
    """What an annotation array needs besides its values (see the module docstring)."""

    mode: str = "instances"
    planes: list[list[int]] = field(default_factory=list)
    image: str | None = None
    ignore_label: int = IGNORE_LABEL
    class_names: list[str] | None = None
    scale: list[float] | None = None
    translate: list[float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown annotation mode {self.mode!r}; use one of {MODES}")
        self.planes = sorted([int(i) for i in p] for p in self.planes)
        if self.ignore_label != IGNORE_LABEL:
            raise InputError(f"ignore label {self.ignore_label}: this version reads only 65535")
        for name in ("scale", "translate"):
            value = getattr(self, name)
            setattr(self, name, None if value is None else [float(v) for v in value])
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]

    def to_json(self) -> dict:
        """The JSON object stored in the file."""
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, obj: dict, name: str = "the file") -> AnnotationMetadata:
        """Read :meth:`to_json`'s object back; :class:`InputError` for foreign or newer files."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise InputError(f"{name}: not a napari-unet annotation file")
        if int(obj.get("version", 0)) > VERSION:
            raise InputError(f"{name}: written by a newer napari-unet (format {obj['version']})")
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        try:
            return cls(**known)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: damaged annotation metadata ({exc})") from None


def check_annotation_array(data, planes: list[list[int]], name: str = "annotations") -> np.ndarray:
    """``data`` as an integer numpy array whose marked ``planes`` lie inside it."""
    data = np.asarray(data)
    if data.dtype.kind not in "iu":
        raise InputError(f"{name}: annotations must be integer labels, not {data.dtype}")
    if data.ndim < 2:
        raise InputError(f"{name}: annotations need at least two (Y, X) axes")
    n_lead = data.ndim - 2
    for plane in planes:
        inside = all(0 <= i < s for i, s in zip(plane, data.shape[:n_lead], strict=False))
        if len(plane) != n_lead or not inside:
            raise InputError(f"{name}: marked plane {plane} is outside the shape {data.shape}")
    return data


def save_annotations(path: str | os.PathLike, data, metadata: AnnotationMetadata | dict) -> Path:
    """Write ``data`` (integer labels) and ``metadata`` to the TIFF ``path``, atomically.

    The values, dtype and shape come back exactly from :func:`load_annotations`.
    """
    import tifffile

    from napari_unet.io.files import atomic_path

    if isinstance(metadata, dict):
        metadata = AnnotationMetadata(**metadata)
    dest = Path(path)
    if dest.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"{dest.name}: save annotations as .tif (e.g. name{SUFFIX})")
    data = check_annotation_array(data, metadata.planes, dest.name)
    try:
        with atomic_path(dest) as tmp:
            tifffile.imwrite(tmp, data, metadata={KEY: metadata.to_json()}, compression="zlib")
    except OSError as exc:
        raise InputError(f"{dest.name}: cannot be written ({exc.strerror or exc})") from None
    return dest


def read_metadata(path: str | os.PathLike) -> AnnotationMetadata | None:
    """The annotation metadata of a TIFF, or None when it is not an annotation file."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shaped = tif.shaped_metadata or ()
    except Exception:  # noqa: BLE001 - not a TIFF at all: not ours either
        return None
    obj = shaped[0].get(KEY) if shaped else None
    return None if obj is None else AnnotationMetadata.from_json(obj, Path(path).name)


def load_annotations(path: str | os.PathLike) -> tuple[np.ndarray, AnnotationMetadata]:
    """Read an annotation file written by :func:`save_annotations`: ``(data, metadata)``."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path.name}: no such file")
    metadata = read_metadata(path)
    if metadata is None:
        raise InputError(
            f"{path.name}: not a napari-unet annotation file (import plain masks instead)"
        )
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].asarray()
    except Exception as exc:  # noqa: BLE001 - truncated or damaged pixel data
        raise InputError(f"{path.name}: cannot be read ({type(exc).__name__})") from None
    return check_annotation_array(data, metadata.planes, path.name), metadata

"""napari's reader and writer contributions for annotation files (see ``napari.yaml``).

Between a Labels layer's state (``layer.as_layer_data_tuple()``: data, a dict of layer
attributes) and :mod:`napari_unet.io.annotation_file`. No napari or Qt import: napari hands
these functions plain arrays and dicts and takes back ``(data, kwargs, "labels")`` tuples.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_unet.io.annotation_file import (
    AnnotationMetadata,
    load_annotations,
    read_metadata,
    save_annotations,
)

#: Layer-metadata keys of an annotation layer (the same as ``napari_unet._widgets._common``).
LAYER_IMAGE = "napari_unet_image"
LAYER_MODE = "napari_unet_mode"
LAYER_PLANES = "napari_unet_planes"
LAYER_CLASS_NAMES = "napari_unet_class_names"


def metadata_from_layer(layer_meta: dict) -> AnnotationMetadata:
    """The file metadata of a layer, from its attribute dict (``metadata``, ``scale``, ...)."""
    own = layer_meta.get("metadata") or {}
    return AnnotationMetadata(
        mode=own.get(LAYER_MODE, "instances"),
        planes=[list(p) for p in own.get(LAYER_PLANES, [])],
        image=own.get(LAYER_IMAGE),
        class_names=own.get(LAYER_CLASS_NAMES),
        scale=_floats(layer_meta.get("scale")),
        translate=_floats(layer_meta.get("translate")),
    )


def layer_kwargs(metadata: AnnotationMetadata, fallback_name: str) -> dict:
    """Keyword arguments of ``viewer.add_labels`` that restore an annotation layer."""
    layer_meta = {
        LAYER_IMAGE: metadata.image,
        LAYER_MODE: metadata.mode,
        LAYER_PLANES: [list(p) for p in metadata.planes],
    }
    if metadata.class_names is not None:
        layer_meta[LAYER_CLASS_NAMES] = list(metadata.class_names)
    name = f"{metadata.image} annotations" if metadata.image else fallback_name
    kwargs: dict = {"name": name, "metadata": layer_meta}
    if metadata.scale is not None:
        kwargs["scale"] = tuple(metadata.scale)
    if metadata.translate is not None:
        kwargs["translate"] = tuple(metadata.translate)
    return kwargs


def read_annotation_layer(path: str | os.PathLike) -> list[tuple]:
    """An annotation file as one napari layer-data tuple ``(data, kwargs, "labels")``."""
    data, metadata = load_annotations(path)
    stem = Path(path).name.split(".")[0]
    return [(data, layer_kwargs(metadata, stem), "labels")]


def get_annotation_reader(path: str | os.PathLike | list):
    """napari reader hook: :func:`read_annotation_layer` for an annotation TIFF, else None."""
    if isinstance(path, (list, tuple)):
        return None
    if not str(path).lower().endswith((".tif", ".tiff")) or not os.path.isfile(path):
        return None
    try:
        found = read_metadata(path)
    except Exception:  # noqa: BLE001 - a foreign or newer file: let other readers try
        return None
    return None if found is None else read_annotation_layer


def write_annotation_layer(path: str, data, meta: dict) -> list[str]:
    """napari writer hook for one Labels layer: its labels and annotation metadata."""
    data = data[0] if isinstance(data, list) else data  # multiscale: the full resolution
    return [str(save_annotations(path, data, metadata_from_layer(meta)))]


def _floats(values) -> list[float] | None:
    return None if values is None else [float(v) for v in values]

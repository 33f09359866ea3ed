"""The Train widget's "Preview augmentation": a row of augmented samples next to the image."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from napari_unet._widgets._common import channel_axis, layer_data
from napari_unet.annotation.schema import AnnotationConfig, plane_targets
from napari_unet.io.planes import read_plane
from napari_unet.normalization import normalize_plane
from napari_unet.training.augment import AugmentConfig, augment_preview

PREVIEW_EDGE = 256  # samples are cut around the annotated pixels to at most this size
GAP = 8  # pixels between samples


def _crop(weight: np.ndarray, edge: int) -> tuple[slice, slice]:
    """A window of at most ``edge`` pixels centred on the annotated (weight > 0) pixels."""
    ys, xs = np.nonzero(weight > 0)
    cy, cx = (ys.mean(), xs.mean()) if ys.size else (weight.shape[0] / 2, weight.shape[1] / 2)
    spans = []
    for centre, size in ((cy, weight.shape[0]), (cx, weight.shape[1])):
        length = min(edge, size)
        start = int(np.clip(round(centre - length / 2), 0, size - length))
        spans.append(slice(start, start + length))
    return spans[0], spans[1]


def _montage(samples: np.ndarray, fill: float) -> np.ndarray:
    """Put (n, [C,] H, W) samples side by side: ([C,] H, n * (W + GAP) - GAP)."""
    parts = []
    for i, sample in enumerate(samples):
        if i:
            gap_shape = sample.shape[:-1] + (GAP,)
            parts.append(np.full(gap_shape, fill, sample.dtype))
        parts.append(sample)
    return np.concatenate(parts, axis=-1)


def _put(viewer, name: str, kind: str, data: np.ndarray, **kwargs):
    layer = viewer.layers[name] if name in viewer.layers else None
    cls = Image if kind == "image" else Labels
    if isinstance(layer, cls) and layer.data.ndim == data.ndim:
        layer.data = data
        for key in ("translate", "scale"):
            setattr(layer, key, kwargs[key])
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    add = viewer.add_image if kind == "image" else viewer.add_labels
    return add(data, name=name, **kwargs)


def show_augmentation_preview(
    viewer,
    image: Image,
    labels: Labels,
    plane: tuple[int, ...],
    annotation: AnnotationConfig,
    augment: AugmentConfig,
    n: int = 4,
    seed: int | None = None,
) -> tuple[Image, Labels]:
    """Augment ``plane`` ``n`` times; show images and targets in a row right of the image."""
    raw = read_plane(layer_data(image), plane, channel_axis(image))
    target, weight, _ = plane_targets(np.asarray(labels.data[plane]), annotation)
    rows, cols = _crop(weight, PREVIEW_EDGE)
    norm = normalize_plane(raw[:, rows, cols], annotation.normalization)
    seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
    images, targets, weights = augment_preview(
        norm[0] if norm.shape[0] == 1 else norm,
        target[rows, cols],
        weight[rows, cols],
        augment,
        n=n,
        seed=seed,
    )
    if images.ndim == 4:  # several channels: show the first
        images = images[:, 0]
    targets = np.where(weights > 0, targets, 0).astype(np.uint8)
    scale = tuple(labels.scale[-2:])
    width = labels.data.shape[-1]
    translate = (
        float(labels.translate[-2]),
        float(labels.translate[-1]) + (width + 2 * GAP) * scale[-1],
    )
    kwargs = {"scale": scale, "translate": translate}
    image_layer = _put(
        viewer, "augmentation preview", "image", _montage(images, 0.0), colormap="gray", **kwargs
    )
    label_layer = _put(
        viewer, "augmentation preview labels", "labels", _montage(targets, 0), opacity=0.4, **kwargs
    )
    return image_layer, label_layer

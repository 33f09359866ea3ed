"""Helpers shared by the dock widgets: layer geometry, plane indices, messages (the layer
pickers and forms are magicgui: :mod:`napari_unet._widgets._forms`)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QLabel, QWidget

from napari_unet.errors import NapariUnetError
from napari_unet.io.plane_lists import parse_plane_list

log = logging.getLogger("napari_unet")

#: Layer-metadata keys written by the widgets (all start with ``napari_unet_``).
META_IMAGE = "napari_unet_image"  # name of the image an annotation layer belongs to
META_PLANES = "napari_unet_planes"  # planes marked "annotated" explicitly (lists of ints)
META_MODE = "napari_unet_mode"  # label schema: instances / scribbles / classes
META_WEIGHTMAP = "napari_unet_weightmap"  # WeightMapConfig fields chosen in the weight-map widget
META_CHANNEL_AXIS = "napari_unet_channel_axis"  # image axis holding channels (None: none / RGB)
META_INSTANCES = "napari_unet_instances"  # a segmentation result numbers objects (else classes)


# ----------------------------------------------------------------------------- messages
def error_message(exc: BaseException) -> str:
    """The sentence to show for an exception: user errors as they are, bugs with their type."""
    if isinstance(exc, NapariUnetError):
        return str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "out of memory: use a smaller batch size, smaller tiles or the CPU"
    return f"unexpected error ({type(exc).__name__}): {exc}"


def report_error(exc: BaseException) -> None:
    """Show ``exc`` as a napari error notification (never a traceback dialog); log bugs."""
    if not isinstance(exc, NapariUnetError):
        log.error("napari-unet: %s", "".join(traceback.format_exception(exc)))
    show_error(error_message(exc))


def guarded(func: Callable[[], Any]) -> Callable[..., Any]:
    """A button slot calling ``func()`` (Qt arguments ignored); errors become notifications."""

    def slot(*_qt_args: Any) -> Any:
        try:
            return func()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            report_error(exc)
            return None

    slot.__name__ = getattr(func, "__name__", "slot")
    slot.__doc__ = func.__doc__
    return slot


def set_tooltips(tips: dict[QWidget, str]) -> None:
    """Give each widget its tooltip."""
    for widget, tip in tips.items():
        widget.setToolTip(tip)


def plane_names(planes: Iterable[tuple[int, ...]]) -> str:
    """Plane indices as a user types them: "0, 2, 3" ("1,4" for a t, z plane; "the image" in 2D)."""
    return ", ".join(",".join(map(str, p)) or "the image" for p in planes)


def hint(text: str) -> QLabel:
    """A small word-wrapped explanatory label."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: palette(mid); font-size: 11px;")
    return label


# ----------------------------------------------------------------------------- geometry
def layer_data(layer: Layer):
    """The layer's full-resolution array (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def channel_axis(image: Image) -> int | None:
    """The image axis holding channels: the last one for RGB(A), the recorded one, or None."""
    data = layer_data(image)
    if getattr(image, "rgb", False):
        return data.ndim - 1
    return image.metadata.get(META_CHANNEL_AXIS)


def spatial_shape(image: Image, axis: int | None = None) -> tuple[int, ...]:
    """Shape of the matching annotation array: the image shape without its channel axis."""
    shape = tuple(layer_data(image).shape)
    axis = channel_axis(image) if axis is None else axis
    return shape if axis is None else shape[:axis] + shape[axis + 1 :]


def spatial_transform(image: Image, axis: int | None = None) -> dict[str, tuple[float, ...]]:
    """``scale`` and ``translate`` for a layer of :func:`spatial_shape` aligned with ``image``."""
    scale, translate = tuple(image.scale), tuple(image.translate)
    axis = channel_axis(image) if axis is None else axis
    rgb = getattr(image, "rgb", False)
    if axis is not None and not rgb and len(scale) == layer_data(image).ndim:
        scale = scale[:axis] + scale[axis + 1 :]
        translate = translate[:axis] + translate[axis + 1 :]
    return {"scale": scale, "translate": translate}


def current_plane(viewer, layer: Layer, n_lead: int) -> tuple[int, ...]:
    """Index over the first ``n_lead`` axes of ``layer`` of the plane the viewer shows."""
    if n_lead == 0:
        return ()
    position = layer.world_to_data(viewer.dims.point)
    shape = layer_data(layer).shape
    return tuple(int(np.clip(np.round(position[i]), 0, shape[i] - 1)) for i in range(n_lead))


def go_to_plane(viewer, layer: Layer, index: tuple[int, ...]) -> None:
    """Move the viewer's sliders to the plane ``index`` of ``layer``."""
    if not index:
        return
    position = list(np.zeros(layer.ndim))
    position[: len(index)] = index
    world = layer.data_to_world(position)
    offset = viewer.dims.ndim - layer.ndim
    for i in range(len(index)):
        viewer.dims.set_point(offset + i, float(world[i]))


def parse_planes(text: str, n_lead: int) -> list[tuple[int, ...]]:
    """Plane indices typed into a widget (:func:`napari_unet.io.plane_lists.parse_plane_list`)."""
    return parse_plane_list(text, n_lead)


def is_annotation_layer(layer: Layer) -> bool:
    """Whether ``layer`` was made by the Annotate widget (it records its image)."""
    return isinstance(layer, Labels) and META_IMAGE in layer.metadata

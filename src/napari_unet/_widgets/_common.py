"""Helpers shared by the dock widgets: layer geometry, plane indices, messages (the layer
pickers and forms are magicgui: :mod:`napari_unet._widgets._forms`)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_unet.annotation.schema import IGNORE_LABEL
from napari_unet.errors import NapariUnetError
from napari_unet.io.annotation_file import SUFFIX

log = logging.getLogger("napari_unet")

#: Layer-metadata keys written by the widgets (all start with ``napari_unet_``).
META_IMAGE = "napari_unet_image"  # name of the image an annotation layer belongs to
META_PLANES = "napari_unet_planes"  # planes marked "annotated" explicitly (lists of ints)
META_MODE = "napari_unet_mode"  # label schema: instances / scribbles / classes
META_WEIGHTMAP = "napari_unet_weightmap"  # WeightMapConfig fields chosen in the weight-map widget
META_CHANNEL_AXIS = "napari_unet_channel_axis"  # image axis holding channels (None: none / RGB)
META_INSTANCES = "napari_unet_instances"  # a segmentation result numbers objects (else classes)


HINT_STYLE = "color: palette(mid); font-size: 11px;"  # small grey explanatory text

#: The tooltips of the widgets' buttons and status parts, by widget and attribute name.
TIPS: dict[str, dict[str, str]] = {
    "annotate": {
        "new_button": "add an empty annotation layer for the image, with the schema's colours",
        "background_button": "paint background (instances/classes: the eraser, value 0; "
        "scribbles: value 1)",
        "object_button": "paint an object: instances get a new id on this plane, so touching "
        "objects stay apart",
        "ignore_button": f"paint value {IGNORE_LABEL}: pixels the loss skips (unsure regions, "
        "cells cut by the edge)",
        "plane_list": "the annotated planes; click one to go there",
        "mark_button": "count the plane on screen as annotated even with nothing painted: all "
        "of it is background (a plane without objects)",
        "unmark_button": "stop counting the plane on screen as an empty annotated plane",
        "import_button": "copy those planes into the annotation layer; they count as annotated",
        "channel_combo": "the image axis that holds channels (none for a plain stack); the "
        "other leading axes are planes (z or time)",
        "mask_files": "one label file per plane (TIFF/PNG), or a folder of them; the plane is "
        "the number in the file name (man_seg001.tif: plane 1), or the image file it names",
        "masks_button": "read one mask file per plane (TIFF/PNG; e.g. man_seg001.tif, "
        "img_0003_cp_masks.png) into the matching planes; they count as annotated",
        "save_button": f"write the annotation layer with its schema and marked planes (also "
        f"empty ones) to a TIFF ({SUFFIX}); napari's File > Save does the same with that ending",
        "open_button": "open an annotation file saved before: the layer comes back with its "
        "schema and marked planes",
    },
    "weightmap": {
        "compute_button": "compute the weights into the layer '<annotations> weight map' (drawn "
        "under the annotations: cells keep their colours, the gaps glow)",
        "status": "the planes computed and their weight range",
    },
    "train": {
        "preview_button": "show four augmented versions of the annotated plane on screen, as "
        "training sees them (tiles and targets)",
        "train_button": "start a new run on every annotated plane except those held out",
        "cancel_button": "stop after the current step; a checkpoint is written, so the run can "
        "be resumed",
        "resume_button": "continue the cancelled run from its checkpoint, up to 'steps'",
        "save_button": "write the trained network (weights + settings) to a .safetensors model "
        "file for 4 Segment, the CLI or sharing",
        "progress": "steps done, last loss and the estimated time left",
        "status": "what the widget is doing, or why it stopped",
        "plot": "training loss (blue, left axis) and validation IoU of the held-out planes "
        "(orange, right axis, 0..1)",
    },
    "segment": {
        "run_button": "segment; results become layers '<image> segmentation' (and probability "
        "/ uncertainty) aligned with the image",
        "cancel_button": "stop after the current tile (or plane, when ranking); no layer is "
        "changed",
        "progress": "planes done",
        "status": "what the widget is doing, or why it stopped",
        "resegment": "when 3 Train finishes a model and the model here is 'model just "
        "trained': segment the last plane or stack again with it (and rank again)",
        "use_plane_button": "copy the plane on screen of '<image> segmentation' (as you "
        "corrected it with napari's label tools) into the annotation layer, objects numbered "
        "1, 2, 3, ...; it counts as annotated for the next training. Replaces what that plane "
        "held there; other planes are untouched; Ctrl+Z on the annotation layer undoes it",
        "rank_after": "after segmenting the whole stack, rank its planes not annotated yet (8 "
        "flipped/rotated predictions per plane)",
        "rank_button": "rank the planes not annotated yet by how unsure the model is (the "
        "disagreement of its 8 flipped/rotated predictions); fills '<image> uncertainty' with "
        "that disagreement per pixel",
        "next_list": "planes not annotated yet, least sure first: plane, score (mean "
        "disagreement of the 8 predictions, higher = less sure), objects found; click one to "
        "go there",
    },
}


# ----------------------------------------------------------------------------- messages
def error_message(exc: BaseException) -> str:
    """The sentence to show for an exception: user errors as they are, bugs with their type."""
    if isinstance(exc, NapariUnetError):
        return str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "out of memory: use a smaller batch size, smaller tiles or the CPU"
    return f"unexpected error ({type(exc).__name__}): {exc}"


def one_line(text: str, limit: int = 100) -> str:
    """``text`` as one short line for a notification (the full text goes to a status line)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def report_error(exc: BaseException, status: Callable[[str], Any] | None = None) -> None:
    """Show ``exc`` as a napari error notification (never a traceback dialog); log bugs.

    With ``status``, it gets the whole sentence and the notification is one short line.
    """
    if not isinstance(exc, NapariUnetError):
        log.error("napari-unet: %s", "".join(traceback.format_exception(exc)))
    text = error_message(exc)
    if status is not None:
        status(text)
    show_error(text if status is None else one_line(text))


def guarded(func: Callable[[], Any], status: Callable[[str], Any] | None = None):
    """A button slot calling ``func()`` (Qt arguments ignored); errors become notifications
    (:func:`report_error`, with ``status``)."""

    def slot(*_qt_args: Any) -> Any:
        try:
            return func()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            report_error(exc, status)
            return None

    slot.__name__ = getattr(func, "__name__", "slot")
    slot.__doc__ = func.__doc__
    return slot


def set_tooltips(owner: QWidget, tips: dict[str, str]) -> None:
    """Give each part of ``owner`` (by attribute name; Qt or magicgui) its tooltip from ``tips``."""
    for name, tip in tips.items():
        part = getattr(owner, name)
        getattr(part, "native", part).setToolTip(tip)


def add_buttons(
    owner: QWidget, status: Callable[[str], Any] | None = None, **buttons: tuple[str, Callable]
) -> None:
    """Push buttons ``owner.<name>`` from ``(text, action)``: a click calls ``action()``, its
    errors become notifications (:func:`guarded`, with ``status``). Tooltips:
    :func:`set_tooltips`."""
    for name, (text, action) in buttons.items():
        button = QPushButton(text, owner)
        button.clicked.connect(guarded(action, status))
        setattr(owner, name, button)


def column(parent: QWidget, *items, stretch: bool = True) -> QVBoxLayout:
    """A vertical layout of ``items`` in ``parent``: Qt or magicgui widgets, tuples (side by
    side) and strings (a :func:`hint`); ``stretch`` pushes them up."""
    layout = QVBoxLayout(parent)
    for item in items:
        if isinstance(item, tuple):
            row = QHBoxLayout()
            for widget in item:
                row.addWidget(getattr(widget, "native", widget))
            layout.addLayout(row)
        else:
            layout.addWidget(hint(item) if isinstance(item, str) else getattr(item, "native", item))
    if stretch:
        layout.addStretch(1)
    return layout


def group(title: str, parent: QWidget, *items) -> QGroupBox:
    """A titled box of ``items`` laid out by :func:`column`."""
    box = QGroupBox(title, parent)
    column(box, *items, stretch=False)
    return box


def beside(layer: Layer | None, stem: str, suffix: str) -> Path:
    """``<stem><suffix>`` in the folder of the file ``layer`` was opened from (else the working
    folder); characters of ``stem`` other than letters, digits, ``-`` and ``_`` become ``_``."""
    source = getattr(getattr(layer, "source", None), "path", None)
    safe = "".join(c if c.isalnum() or c == "-" else "_" for c in stem)
    return (Path(source).parent if source else Path.cwd()) / f"{safe}{suffix}"


def show_long(label, text: str, tip: str = "", longest: int = 36) -> None:
    """Show ``text`` in a magicgui ``Label``, word-wrapped, words longer than ``longest``
    characters (file paths) cut in the middle, so it never widens the dock; the tooltip holds
    ``tip`` and the whole text."""
    cut = (
        w if len(w) <= longest else f"{w[: longest // 2 - 1]}...{w[-longest // 2 + 2 :]}"
        for w in text.split(" ")
    )
    label.value = " ".join(cut)
    label.native.setToolTip(f"{tip}: {text}" if tip else text)


def fill_plane_list(widget: QListWidget, rows: Iterable[tuple[str, tuple[int, ...]]]) -> None:
    """Show ``(text, plane index)`` rows in ``widget``; :func:`clicked_plane` reads one back."""
    widget.clear()
    for text, index in rows:
        item = QListWidgetItem(text)
        item.setData(Qt.ItemDataRole.UserRole, list(index))
        widget.addItem(item)


def clicked_plane(item: QListWidgetItem) -> tuple[int, ...]:
    """The plane index of a row of :func:`fill_plane_list`."""
    return tuple(int(i) for i in item.data(Qt.ItemDataRole.UserRole))


def wrap(label: QLabel) -> QLabel:
    """Word-wrap ``label`` at whatever width the dock has: a long text then adds lines instead of
    asking for width (Qt sizes a wrapped label for about 80 characters, which would widen the
    dock and hide its right edge behind a scroll bar)."""
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


def hint(text: str) -> QLabel:
    """A small word-wrapped explanatory label."""
    label = wrap(QLabel(text))
    label.setStyleSheet(HINT_STYLE)
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


def reusable_layer(viewer, name: str, kind: type[Layer], shape=None) -> Layer | None:
    """The layer ``name`` if it is a ``kind`` (of ``shape``, when given) to write into; else
    None, and a layer of that name that does not fit is removed."""
    layer = viewer.layers[name] if name in viewer.layers else None
    if isinstance(layer, kind) and (shape is None or tuple(layer.data.shape) == tuple(shape)):
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return None


@contextmanager
def keeping_selection(viewer) -> Iterator[None]:
    """Keep the viewer's active layer (a layer added inside would take the selection)."""
    active = viewer.layers.selection.active
    try:
        yield
    finally:
        if active is not None and active in viewer.layers:
            viewer.layers.selection.active = active


def is_annotation_layer(layer: Layer) -> bool:
    """Whether ``layer`` was made by the Annotate widget (it records its image)."""
    return isinstance(layer, Labels) and META_IMAGE in layer.metadata


def annotation_layers(viewer, image: Layer) -> list[Labels]:
    """The annotation layers of ``image`` (made for it in 1 Annotate), in the viewer's order."""
    return [
        layer
        for layer in viewer.layers
        if is_annotation_layer(layer) and layer.metadata.get(META_IMAGE) == image.name
    ]

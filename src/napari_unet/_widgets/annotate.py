"""1 Annotate: an annotation Labels layer bound to an image, its schema and annotated planes."""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit
from napari.layers import Image, Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QListWidget, QListWidgetItem, QWidget

from napari_unet._widgets._common import (
    META_CHANNEL_AXIS,
    META_IMAGE,
    META_MODE,
    META_PLANES,
    TIPS,
    add_buttons,
    channel_axis,
    column,
    current_plane,
    go_to_plane,
    group,
    guarded,
    is_annotation_layer,
    layer_data,
    parse_planes,
    set_tooltips,
    spatial_shape,
    spatial_transform,
)
from napari_unet._widgets._dock import DockWidget
from napari_unet._widgets._forms import Remembered, field_widget, layer_picker
from napari_unet._widgets._schema import (
    background_value,
    object_value,
    schema_colormap,
    schema_html,
)
from napari_unet.annotation.schema import IGNORE_LABEL, MODES, AnnotationConfig, annotated_planes
from napari_unet.errors import AnnotationError, InputError


def explicit_planes(layer: Labels) -> set[tuple[int, ...]]:
    """Planes listed in the layer's ``napari_unet_planes`` metadata."""
    return {tuple(int(i) for i in p) for p in layer.metadata.get(META_PLANES, [])}


def training_plane_list(layer: Labels) -> list[tuple[int, ...]]:
    """Every annotated plane of ``layer``: planes holding labels plus the explicitly marked ones."""
    return sorted(set(annotated_planes(np.asarray(layer.data))) | explicit_planes(layer))


def layer_mode(layer: Labels | None) -> str:
    """The label schema of an annotation layer (``instances`` unless recorded otherwise)."""
    mode = layer.metadata.get(META_MODE, "instances") if layer is not None else "instances"
    return mode if mode in MODES else "instances"


def add_annotation_layer(
    viewer, image: Image, mode: str = "instances", axis: int | None = None
) -> Labels:
    """Add an empty annotation layer "<image> annotations" matching ``image``.

    Its shape is the image's without the channel ``axis`` (default: the recorded one, or RGB),
    with the image's scale and translation, the schema's colours and no annotated plane yet.
    """
    axis = channel_axis(image) if axis is None else axis
    layer = viewer.add_labels(
        np.zeros(spatial_shape(image, axis), np.uint16),
        name=f"{image.name} annotations",
        metadata={META_IMAGE: image.name, META_MODE: mode, META_PLANES: []},
        **spatial_transform(image, axis),
    )
    layer.colormap = schema_colormap(mode)
    layer.brush_size = 6
    return layer


class AnnotateWidget(DockWidget):
    """Create and inspect annotation layers; see the user guide for the click-by-click flow."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self._watched: Labels | None = None
        self._timer = QTimer(self, singleShot=True, interval=200)
        self._timer.timeout.connect(self.refresh_planes)

        self.image_combo = layer_picker(
            viewer,
            Image,
            "image",
            "the image to annotate; the annotation layer gets its shape (without the channel "
            "axis), scale and translation",
        )
        self.channel_combo = ComboBox(label="channel axis", choices=[("none", -1)])
        self.channel_combo.tooltip = (
            "the image axis that holds channels (none for a plain stack); the other leading "
            "axes are planes (z or time)"
        )
        self.mode_combo = field_widget(AnnotationConfig, "mode")
        self.settings = Remembered("annotate", [self.mode_combo], {"mode": "instances"})
        self.schema_label = Label(tooltip="which value means what in this schema")
        self.schema_label.native.setWordWrap(True)
        self.schema_label.native.setTextFormat(Qt.RichText)
        self.labels_combo = layer_picker(
            viewer,
            Labels,
            "annotations",
            "the annotation layer to paint and to train on",
            accept=is_annotation_layer,
        )
        self.source_combo = layer_picker(
            viewer,
            Labels,
            "labels",
            "a labels layer to copy from, e.g. ground truth opened from file",
            prefer=lambda layer: not is_annotation_layer(layer),
        )
        self.import_planes = LineEdit(label="planes")
        self.import_planes.tooltip = (
            "planes to copy (e.g. 0, 2, 5-7); empty: every plane that holds labels"
        )
        self.import_planes.native.setPlaceholderText("all planes with labels, or e.g. 0, 2")
        add_buttons(
            self,
            new_button="New annotation layer",
            background_button="Background",
            object_button="Object",
            ignore_button="Use ignore label",
            mark_button="Mark current plane as annotated (empty)",
            unmark_button="Unmark",
            import_button="Import labels layer as annotations",
        )
        self.plane_list = QListWidget(self)
        self.plane_list.setMaximumHeight(120)
        set_tooltips(self, TIPS["annotate"])
        fields = (self.image_combo, self.channel_combo, self.mode_combo)
        column(
            self.body,
            group(
                "Annotation layer",
                self,
                Container(widgets=[*fields, self.schema_label]),
                self.new_button,
                Container(widgets=[self.labels_combo]),
                (self.background_button, self.object_button, self.ignore_button),
                self.settings.button,
            ),
            group(
                "Annotated planes (click to go there)",
                self,
                self.plane_list,
                (self.mark_button, self.unmark_button),
            ),
            group(
                "Import (e.g. ground truth)",
                self,
                Container(widgets=[self.source_combo, self.import_planes]),
                self.import_button,
                "Copies the labels of those planes into the annotation layer "
                "(scribbles: background becomes 1, objects 2).",
            ),
            stretch=True,
        )

        self.image_combo.changed.connect(self._on_image_changed)
        self.mode_combo.changed.connect(self._on_mode_changed)
        self.labels_combo.changed.connect(self._on_labels_changed)
        self.new_button.clicked.connect(guarded(lambda: self.new_annotation_layer()))
        self.background_button.clicked.connect(guarded(lambda: self.use_brush("background")))
        self.object_button.clicked.connect(guarded(lambda: self.use_brush("object")))
        self.ignore_button.clicked.connect(guarded(lambda: self.use_ignore_label()))
        self.mark_button.clicked.connect(guarded(lambda: self.mark_current_plane()))
        self.unmark_button.clicked.connect(guarded(lambda: self.mark_current_plane(False)))
        self.import_button.clicked.connect(guarded(self._on_import_clicked))
        self.plane_list.itemClicked.connect(self._on_plane_clicked)
        self._on_image_changed()
        self._on_labels_changed()

    # ------------------------------------------------------------------ layers
    def annotation_layer(self) -> Labels | None:
        """The annotation layer chosen in the widget."""
        return self.labels_combo.value

    def _on_image_changed(self, *_args) -> None:
        image = self.image_combo.value
        if image is None:
            self.channel_combo.choices = [("none", -1)]
            return
        data = layer_data(image)
        if getattr(image, "rgb", False):
            self.channel_combo.choices = [("RGB (last axis)", data.ndim - 1)]
            return
        axes = [(f"axis {a} ({data.shape[a]})", a) for a in range(max(data.ndim - 2, 0))]
        self.channel_combo.native.clear()
        self.channel_combo.choices = [("none", -1), *axes]
        recorded = image.metadata.get(META_CHANNEL_AXIS)
        self.channel_combo.value = -1 if recorded is None else recorded

    def new_annotation_layer(self, image: Image | None = None, mode: str | None = None) -> Labels:
        """Add an empty annotation layer matching ``image`` (default: the chosen image)."""
        image = image or self.image_combo.value
        if image is None:
            raise InputError("open an image first (File > Open, or File > Open Sample)")
        mode = mode or self.mode_combo.value
        axis = None if image.rgb else self.channel_combo.value
        axis = None if axis == -1 else axis
        if image is self.image_combo.value and not image.rgb:
            image.metadata[META_CHANNEL_AXIS] = axis
        layer = add_annotation_layer(self.viewer, image, mode, axis)
        self.labels_combo.value = layer
        return layer

    def _on_mode_changed(self, mode: str) -> None:
        self.schema_label.value = schema_html(mode)
        layer = self.annotation_layer()
        if layer is not None and layer_mode(layer) != mode:
            layer.metadata[META_MODE] = mode
            layer.colormap = schema_colormap(mode)

    def _on_labels_changed(self, *_args) -> None:
        if self._watched is not None:
            for emitter in (self._watched.events.paint, self._watched.events.data):
                emitter.disconnect(self._schedule_refresh)
        layer = self._watched = self.annotation_layer()
        if layer is not None:
            layer.events.paint.connect(self._schedule_refresh)
            layer.events.data.connect(self._schedule_refresh)
            self.mode_combo.value = layer_mode(layer)
            if layer.metadata.get(META_IMAGE) in self.viewer.layers:
                self.image_combo.value = self.viewer.layers[layer.metadata[META_IMAGE]]
        self.schema_label.value = schema_html(self.mode_combo.value)
        self.refresh_planes()

    def _schedule_refresh(self, *_args) -> None:
        try:
            self._timer.start()
        except RuntimeError:  # the widget is gone; the layer outlived it
            pass

    def _require_layer(self, layer: Labels | None = None) -> Labels:
        layer = layer or self.annotation_layer()
        if layer is None:
            raise AnnotationError("create an annotation layer first (New annotation layer)")
        return layer

    # ------------------------------------------------------------------ brushes
    def use_brush(self, what: str) -> int:
        """Select the paint brush with the schema's background or object label."""
        layer = self._require_layer()
        mode = layer_mode(layer)
        if what == "background":
            value = background_value(mode)
        else:
            plane = current_plane(self.viewer, layer, layer.ndim - 2)
            value = object_value(mode, np.asarray(layer.data[plane]))
        return self._select(layer, value)

    def use_ignore_label(self) -> int:
        """Paint with :data:`IGNORE_LABEL` (pixels the loss skips)."""
        return self._select(self._require_layer(), IGNORE_LABEL)

    def _select(self, layer: Labels, value: int) -> int:
        layer.selected_label = value
        self.viewer.layers.selection.active = layer
        layer.mode = "erase" if value == 0 else "paint"
        return value

    # ------------------------------------------------------------------ planes
    def annotated_planes(self, layer: Labels | None = None) -> list[tuple[int, ...]]:
        """Planes with labels or marked as annotated, as leading-axis indices."""
        layer = layer or self.annotation_layer()
        return [] if layer is None else training_plane_list(layer)

    def refresh_planes(self) -> None:
        """Recompute the list of annotated planes from the layer data."""
        self.plane_list.clear()
        layer = self.annotation_layer()
        if layer is None:
            return
        painted = set(annotated_planes(np.asarray(layer.data)))
        for index in sorted(painted | explicit_planes(layer)):
            where = ", ".join(map(str, index)) if index else "whole image"
            state = "painted" if index in painted else "marked, empty"
            item = QListWidgetItem(f"plane {where}  ({state})")
            item.setData(Qt.UserRole, list(index))
            self.plane_list.addItem(item)

    def _on_plane_clicked(self, item: QListWidgetItem) -> None:
        layer = self.annotation_layer()
        if layer is not None:
            go_to_plane(self.viewer, layer, tuple(item.data(Qt.UserRole)))

    def mark_current_plane(self, annotated: bool = True) -> tuple[int, ...]:
        """Record the plane on screen as annotated even if empty (all background), or unmark it."""
        layer = self._require_layer()
        index = current_plane(self.viewer, layer, layer.ndim - 2)
        planes = explicit_planes(layer)
        planes = planes | {index} if annotated else planes - {index}
        layer.metadata[META_PLANES] = [list(p) for p in sorted(planes)]
        self.refresh_planes()
        return index

    # ------------------------------------------------------------------ import
    def _on_import_clicked(self) -> None:
        source = self.source_combo.value
        if source is None:
            raise InputError("choose a labels layer to import")
        layer = self.annotation_layer()
        n_lead = (layer.ndim if layer is not None else source.ndim) - 2
        self.import_labels(source, parse_planes(self.import_planes.value, n_lead) or None)

    def import_labels(
        self, source: Labels, planes: list | None = None, target: Labels | None = None
    ) -> list[tuple[int, ...]]:
        """Copy planes of ``source`` (default: all planes holding labels) into the annotations.

        Creates the annotation layer for the chosen image when there is none yet. Returns the
        planes copied; they count as annotated even when empty.
        """
        target = target or self.annotation_layer() or self.new_annotation_layer()
        if target is source:
            raise InputError("choose labels to import other than the annotation layer itself")
        data = np.asarray(layer_data(source))
        if data.shape != target.data.shape:
            raise InputError(
                f"the labels to import have shape {data.shape} but the annotations "
                f"have shape {target.data.shape}"
            )
        if data.size and (data.min() < 0 or data.max() > IGNORE_LABEL):
            raise AnnotationError(f"labels to import must be 0..{IGNORE_LABEL}")
        n_lead = data.ndim - 2
        chosen = (
            annotated_planes(data)
            if planes is None
            else [tuple(int(i) for i in np.atleast_1d(p))[:n_lead] for p in planes]
        )
        mode = layer_mode(target)
        for index in chosen:
            try:
                plane = data[index]
            except IndexError:
                raise InputError(f"plane {index} is outside the labels {data.shape}") from None
            if mode == "scribbles":
                plane = np.where(plane == IGNORE_LABEL, plane, np.where(plane > 0, 2, 1))
            target.data[index] = plane.astype(target.data.dtype)
        marked = explicit_planes(target) | set(chosen)
        target.metadata[META_PLANES] = [list(p) for p in sorted(marked)]
        target.refresh()
        self.refresh_planes()
        return chosen

"""1 Annotate: an annotation Labels layer bound to an image, its schema and annotated planes."""

from __future__ import annotations

import os
from contextlib import suppress
from functools import partial
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QFileDialog, QListWidget, QWidget

from napari_unet._widgets import _common, _forms
from napari_unet._widgets._dock import DockWidget
from napari_unet._widgets._schema import schema_colormap, schema_html
from napari_unet.annotation import imported, schema
from napari_unet.errors import AnnotationError, InputError
from napari_unet.io.annotation_file import SUFFIX, load_annotations, save_annotations
from napari_unet.io.annotation_layer import layer_kwargs, metadata_from_layer
from napari_unet.io.mask_files import folder_plane_names, mask_paths, match_mask_files, read_mask
from napari_unet.io.plane_lists import parse_plane_list

MASK_FILTER = "Masks (*.tif *.tiff *.png)"
FILE_FILTER = f"napari-unet annotations (*{SUFFIX});;TIFF (*.tif *.tiff)"


def explicit_planes(layer: Labels) -> set[tuple[int, ...]]:
    """Planes listed in the layer's ``napari_unet_planes`` metadata."""
    return {tuple(int(i) for i in p) for p in layer.metadata.get(_common.META_PLANES, [])}


def training_plane_list(layer: Labels) -> list[tuple[int, ...]]:
    """Every annotated plane of ``layer``: planes holding labels plus the explicitly marked ones."""
    return sorted(set(schema.annotated_planes(np.asarray(layer.data))) | explicit_planes(layer))


def mark_planes(layer: Labels, planes, annotated: bool = True) -> None:
    """Record ``planes`` as annotated even when empty (all background), or unmark them."""
    marked = explicit_planes(layer)
    marked = marked | set(planes) if annotated else marked - set(planes)
    layer.metadata[_common.META_PLANES] = [list(p) for p in sorted(marked)]


def layer_mode(layer: Labels | None) -> str:
    """The label schema of an annotation layer (``instances`` unless recorded otherwise)."""
    mode = layer.metadata.get(_common.META_MODE, "instances") if layer is not None else "instances"
    return mode if mode in schema.MODES else "instances"


def add_annotation_layer(
    viewer, image: Image, mode: str = "instances", axis: int | None = None
) -> Labels:
    """Add an empty annotation layer "<image> annotations" matching ``image``.

    Its shape is the image's without the channel ``axis`` (default: the recorded one, or RGB),
    with the image's scale and translation, the schema's colours and no annotated plane yet.
    """
    axis = _common.channel_axis(image) if axis is None else axis
    layer = viewer.add_labels(
        np.zeros(_common.spatial_shape(image, axis), np.uint16),
        name=f"{image.name} annotations",
        metadata={_common.META_IMAGE: image.name, _common.META_MODE: mode, _common.META_PLANES: []},
        **_common.spatial_transform(image, axis),
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

        self.image_combo = _forms.layer_picker(
            viewer,
            Image,
            "image",
            "the image to annotate; the annotation layer gets its shape (without the channel "
            "axis), scale and translation",
        )
        self.channel_combo = ComboBox(label="channel axis", choices=[("none", -1)])
        self.mode_combo = _forms.field_widget(schema.AnnotationConfig, "mode")
        self.settings = _forms.Remembered("annotate", [self.mode_combo], {"mode": "instances"})
        self.schema_label = Label(tooltip="which value means what in this schema")
        _common.wrap(self.schema_label.native)
        self.schema_label.native.setTextFormat(Qt.RichText)
        self.labels_combo = _forms.annotation_picker(
            viewer, "the annotation layer to paint and to train on", placeholder=""
        )
        self.source_combo = _forms.layer_picker(
            viewer,
            Labels,
            "labels",
            "a labels layer to copy from, e.g. ground truth opened from file (annotation "
            "layers are not offered: open a saved one with Open annotations)",
            accept=lambda layer: not _common.is_annotation_layer(layer),
        )
        self.import_planes, self.match_combo = _forms.config_form(imported.ImportRequest)
        _common.add_buttons(
            self,
            new_button=("New annotation layer", self.new_annotation_layer),
            background_button=("Background", partial(self.use_brush, "background")),
            object_button=("Object", partial(self.use_brush, "object")),
            ignore_button=("Use ignore label", self.use_ignore_label),
            mark_button=("Mark current plane as annotated (empty)", self.mark_current_plane),
            unmark_button=("Unmark", partial(self.mark_current_plane, False)),
        )
        _common.add_buttons(  # these say what went wrong on the import status line too
            self,
            self._set_status,
            import_button=("Import labels layer as annotations", self._on_import_clicked),
            masks_button=("Import mask files", self._on_masks_clicked),
            save_button=("Save annotations…", self._on_save_clicked),
            open_button=("Open annotations…", self._on_open_clicked),
        )
        self.mask_files = FileEdit(label="mask files", mode="rm", filter=MASK_FILTER)
        self.import_status = Label(value="", tooltip="the last import, save or open")
        _common.wrap(self.import_status.native)
        self.plane_list = QListWidget(self)
        self.plane_list.setMaximumHeight(120)
        _common.set_tooltips(self, _common.TIPS["annotate"])
        fields = (self.image_combo, self.channel_combo, self.mode_combo)
        _common.column(
            self.body,
            _common.group(
                "Annotation layer",
                self,
                Container(widgets=[*fields, self.schema_label]),
                self.new_button,
                Container(widgets=[self.labels_combo]),
                (self.background_button, self.object_button, self.ignore_button),
                self.settings.button,
            ),
            _common.group(
                "Annotated planes (click to go there)",
                self,
                self.plane_list,
                (self.mark_button, self.unmark_button),
            ),
            _common.group(
                "Import (e.g. ground truth)",
                self,
                Container(widgets=[self.source_combo, self.import_planes]),
                self.import_button,
                Container(widgets=[self.mask_files, self.match_combo]),
                self.masks_button,
                "Copies the labels of those planes into the annotation layer "
                "(scribbles: background becomes 1, objects 2).",
                self.import_status,
            ),
            _common.group("Annotation file", self, (self.save_button, self.open_button)),
        )

        self.image_combo.changed.connect(self._on_image_changed)
        self.mode_combo.changed.connect(self._on_mode_changed)
        self.labels_combo.changed.connect(self._on_labels_changed)
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
        data = _common.layer_data(image)
        if getattr(image, "rgb", False):
            self.channel_combo.choices = [("RGB (last axis)", data.ndim - 1)]
            return
        axes = [(f"axis {a} ({data.shape[a]})", a) for a in range(max(data.ndim - 2, 0))]
        self.channel_combo.native.clear()
        self.channel_combo.choices = [("none", -1), *axes]
        recorded = image.metadata.get(_common.META_CHANNEL_AXIS)
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
            image.metadata[_common.META_CHANNEL_AXIS] = axis
        layer = add_annotation_layer(self.viewer, image, mode, axis)
        self.labels_combo.value = layer
        return layer

    def _on_mode_changed(self, mode: str) -> None:
        self.schema_label.value = schema_html(mode)
        layer = self.annotation_layer()
        if layer is not None and layer_mode(layer) != mode:
            layer.metadata[_common.META_MODE] = mode
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
            if not isinstance(layer.colormap, DirectLabelColormap):  # e.g. opened from a file
                layer.colormap = schema_colormap(layer_mode(layer))
            if layer.metadata.get(_common.META_IMAGE) in self.viewer.layers:
                self.image_combo.value = self.viewer.layers[layer.metadata[_common.META_IMAGE]]
        self.schema_label.value = schema_html(self.mode_combo.value)
        self.refresh_planes()

    def _schedule_refresh(self, *_args) -> None:
        with suppress(RuntimeError):  # the widget is gone; the layer outlived it
            self._timer.start()

    def _require_layer(self, layer: Labels | None = None) -> Labels:
        layer = layer or self.annotation_layer()
        if layer is None:
            raise AnnotationError("create an annotation layer first (New annotation layer)")
        return layer

    # ------------------------------------------------------------------ brushes
    def use_brush(self, what: str) -> int:
        """Select the paint brush with the schema's background or object label."""
        layer = self._require_layer()
        plane = np.asarray(layer.data[_common.current_plane(self.viewer, layer, layer.ndim - 2)])
        return self._select(layer, schema.brush_value(layer_mode(layer), what, plane))

    def use_ignore_label(self) -> int:
        """Paint with :data:`IGNORE_LABEL` (pixels the loss skips)."""
        return self._select(self._require_layer(), schema.IGNORE_LABEL)

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
        layer = self.annotation_layer()
        painted = set() if layer is None else set(schema.annotated_planes(np.asarray(layer.data)))
        rows = []
        for index in [] if layer is None else sorted(painted | explicit_planes(layer)):
            where = ", ".join(map(str, index)) if index else "whole image"
            state = "painted" if index in painted else "marked, empty"
            rows.append((f"plane {where}  ({state})", index))
        _common.fill_plane_list(self.plane_list, rows)

    def _on_plane_clicked(self, item) -> None:
        layer = self.annotation_layer()
        if layer is not None:
            _common.go_to_plane(self.viewer, layer, _common.clicked_plane(item))

    def mark_current_plane(self, annotated: bool = True) -> tuple[int, ...]:
        """Record the plane on screen as annotated even if empty (all background), or unmark it."""
        layer = self._require_layer()
        index = _common.current_plane(self.viewer, layer, layer.ndim - 2)
        mark_planes(layer, [index], annotated)
        self.refresh_planes()
        return index

    # ------------------------------------------------------------------ import
    def _set_status(self, text: str) -> None:
        self.import_status.value = text
        self.import_status.tooltip = text

    def _confirm(self, text: str) -> str:
        self._set_status(text)
        show_info(_common.one_line(text, 160))
        return text

    def _on_import_clicked(self) -> None:
        source = self.source_combo.value
        if source is None:
            raise InputError("choose a labels layer to import")
        layer = self.annotation_layer()
        n_lead = (layer.ndim if layer is not None else source.ndim) - 2
        self.import_labels(source, parse_plane_list(self.import_planes.value, n_lead) or None)

    def import_labels(
        self, source: Labels, planes: list | None = None, target: Labels | None = None
    ) -> list[tuple[int, ...]]:
        """Copy planes of ``source`` (default: all planes holding labels) into the annotations.

        A 2D ``source`` into a stack goes into the one plane given (default: the plane on
        screen). Creates the annotation layer for the chosen image when there is none yet.
        Returns the planes copied; they count as annotated even when empty.
        """
        target = target or self.annotation_layer() or self.new_annotation_layer()
        if target is source:
            raise InputError("choose labels to import other than the annotation layer itself")
        current = _common.current_plane(self.viewer, target, target.ndim - 2)
        data, shape = _common.layer_data(source), tuple(target.data.shape)
        chosen = imported.planes_from_labels(data, shape, planes, current, source.name)
        self._write_planes(target, chosen)
        self._confirm(imported.import_summary(f"'{source.name}'", chosen, layer_mode(target)))
        return list(chosen)

    def _write_planes(self, target: Labels, planes: dict[tuple[int, ...], np.ndarray]) -> None:
        """Put label planes into ``target`` in its schema and mark them annotated."""
        mode = layer_mode(target)
        for index, plane in imported.as_annotations(planes, target.data.dtype, mode).items():
            target.data[index] = plane
        mark_planes(target, planes)
        target.refresh()
        self.refresh_planes()

    def _on_masks_clicked(self) -> None:
        paths = list(self.mask_files.value or ())
        if not paths:
            raise InputError("choose mask files (or a folder of them) under 'mask files' first")
        self.import_mask_files(paths, by=self.match_combo.value)

    def import_mask_files(
        self, paths, target: Labels | None = None, by: str = "auto"
    ) -> dict[int, int]:
        """Read per-plane mask files (or folders of them) into the matching planes.

        Files are matched to planes by :func:`napari_unet.io.mask_files.match_mask_files`
        (the image's own file names, the number in the name, or ``by="order"``). Every file is
        checked before anything is written. Returns ``{plane: objects}``; the planes count as
        annotated.
        """
        target = target or self.annotation_layer() or self.new_annotation_layer()
        shape = tuple(target.data.shape)
        if len(shape) != 3:
            raise InputError(f"mask files fill the planes of a stack (Z/T, Y, X), not {shape}")
        name = target.metadata.get(_common.META_IMAGE)
        image = self.viewer.layers[name] if name in self.viewer.layers else None
        names = folder_plane_names(getattr(getattr(image, "source", None), "path", None), shape[0])
        matched = match_mask_files(mask_paths(paths), shape[0], names, by)
        planes = {(i,): read_mask(path, shape[1:]) for i, path in matched.items()}
        self._write_planes(target, planes)
        n = len(planes)
        files = f"{n} mask file{'s' * (n != 1)}"
        self._confirm(imported.import_summary(files, planes, layer_mode(target)))
        return {i: count for (i,), count in imported.object_counts(planes).items()}

    # ------------------------------------------------------------------ annotation files
    def _on_save_clicked(self) -> None:
        layer = self._require_layer()
        start = f"{layer.metadata.get(_common.META_IMAGE) or layer.name}{SUFFIX}"
        path, _ = QFileDialog.getSaveFileName(self, "Save annotations", start, FILE_FILTER)
        if path:
            self.save_annotations(path, layer)

    def _on_open_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open annotations", "", FILE_FILTER)
        if path:
            self.open_annotations(path)

    def save_annotations(self, path: str | os.PathLike, layer: Labels | None = None) -> Path:
        """Write the annotation layer (values, schema, marked planes) to an annotation file.

        A name without a TIFF ending gets ``.unet-annotations.tif``.
        """
        layer = self._require_layer(layer)
        path = Path(path)
        if path.suffix.lower() not in (".tif", ".tiff"):
            path = path.with_name(path.name + SUFFIX)
        state = {"metadata": layer.metadata, "scale": layer.scale, "translate": layer.translate}
        written = save_annotations(path, _common.layer_data(layer), metadata_from_layer(state))
        self._confirm(f"saved '{layer.name}' ({plane_count(layer)}) to {written.name}")
        return written

    def open_annotations(self, path: str | os.PathLike) -> Labels:
        """Add the annotation layer stored in ``path`` and choose it."""
        data, metadata = load_annotations(path)
        kwargs = layer_kwargs(metadata, Path(path).name.split(".")[0])
        layer = self.viewer.add_labels(data, **kwargs)
        layer.colormap = schema_colormap(metadata.mode)
        layer.brush_size = 6  # as a new annotation layer
        self.labels_combo.value = layer
        self._on_labels_changed()
        self._confirm(f"opened '{layer.name}' ({plane_count(layer)}) from {Path(path).name}")
        return layer


def plane_count(layer: Labels) -> str:
    """``3 annotated planes`` of an annotation layer."""
    n = len(training_plane_list(layer))
    return f"{n} annotated plane{'s' * (n != 1)}"

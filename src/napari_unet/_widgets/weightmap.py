"""2 Weight map: show the U-Net loss weights (class balance + border term) of the annotations."""

from __future__ import annotations

from dataclasses import asdict

import napari
import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtWidgets import QLabel, QWidget

from napari_unet._widgets._common import (
    META_WEIGHTMAP,
    TIPS,
    add_buttons,
    column,
    current_plane,
    guarded,
    is_annotation_layer,
    plane_names,
    report_error,
    set_tooltips,
)
from napari_unet._widgets._dock import DockWidget
from napari_unet._widgets._forms import (
    Remembered,
    config_form,
    layer_picker,
    read_config,
)
from napari_unet._widgets.annotate import layer_mode, training_plane_list
from napari_unet.annotation.schema import AnnotationConfig, plane_targets
from napari_unet.annotation.weightmap import WeightMapConfig
from napari_unet.errors import AnnotationError

PAPER_FIELDS = ("w0", "sigma", "class_balance")
FALK_FIELDS = ("v_bal", "sigma_bal", "lam", "sigma_sep")
FIELDS = ("variant", *PAPER_FIELDS, *FALK_FIELDS)


def _weights_job(labels, planes, config: AnnotationConfig):
    """Worker: yield ("plane", index, weights) per plane, or ("error", exception)."""
    try:
        for index in planes:
            _, weight, _ = plane_targets(np.asarray(labels[index]), config)
            yield ("plane", index, weight)
    except Exception as exc:  # noqa: BLE001 - reported on the main thread
        yield ("error", exc)


class WeightMapWidget(DockWidget):
    """Compute and display the loss weight map of an annotation layer."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self.worker = None
        self._planes: list[tuple[int, ...]] = []
        self._range = (np.inf, -np.inf)
        self.labels_combo = layer_picker(
            viewer,
            Labels,
            "annotations",
            "the annotation layer (from 1 Annotate) whose loss weights to show; training uses "
            "the settings chosen here for it",
            accept=is_annotation_layer,
            placeholder="none: create one in 1 Annotate",
        )
        self.form = config_form(WeightMapConfig, FIELDS)
        self.scope = ComboBox(
            name="scope",
            label="planes",
            choices=["current plane", "all annotated planes"],
            tooltip="current plane: the plane on screen; all annotated planes: every plane "
            "listed in 1 Annotate",
        )
        add_buttons(self, compute_button="Compute weight map")
        self.settings = Remembered("weightmap", self.form)
        self.form.insert(0, self.labels_combo)
        self.form.extend([self.scope, self.settings.button])
        for name in FIELDS:
            setattr(self, name, self.form[name])
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        set_tooltips(self, TIPS["weightmap"])
        column(
            self.body,
            self.form,
            self.compute_button,
            self.status,
            "paper: w = w_c + w0 exp(-(d1 + d2)^2 / 2 sigma^2) on background, d1, d2 the "
            "distances to the nearest and second-nearest object; falk: Falk et al. 2019. "
            "Bright = high weight: the gaps between touching objects. Training uses these "
            "settings for this annotation layer.",
            stretch=True,
        )
        self.variant.changed.connect(self._show_variant_rows)
        self.compute_button.clicked.connect(guarded(lambda: self.compute()))
        self._show_variant_rows(self.variant.value)

    def _show_variant_rows(self, variant: str) -> None:
        for name in FIELDS[1:]:
            self.form[name].visible = (name in PAPER_FIELDS) == (variant == "paper")

    def config(self) -> WeightMapConfig:
        """The weight-map settings shown in the widget."""
        return read_config(self.form, WeightMapConfig)

    def compute(self, scope: str | None = None, layer: Labels | None = None):
        """Start computing; ``scope`` is "current plane" or "all annotated planes".

        Returns the thread worker (``self.worker`` until it finishes).
        """
        if self.worker is not None:
            return self.worker
        layer = layer or self.labels_combo.value
        if layer is None:
            raise AnnotationError("choose an annotation layer (create one in 1 Annotate)")
        scope = scope or self.scope.value
        config = self.config()
        layer.metadata[META_WEIGHTMAP] = asdict(config)
        annotated = training_plane_list(layer)
        if scope.startswith("current"):
            planes = [current_plane(self.viewer, layer, layer.ndim - 2)]
            if planes[0] not in annotated:
                where = plane_names(planes)
                raise AnnotationError(
                    f"plane {where} is not annotated: its weights would all be 1; paint or "
                    "import annotations there, or choose 'all annotated planes'"
                )
        else:
            planes = annotated
            if not planes:
                raise AnnotationError("no annotated plane yet: paint or import annotations first")
        output = self._output_layer(layer)
        annotation = AnnotationConfig(mode=layer_mode(layer), weight_map=config)
        self.worker = create_worker(
            _weights_job, layer.data, planes, annotation, _start_thread=False
        )
        self.worker.yielded.connect(lambda message: self._on_message(output, message))
        self.worker.finished.connect(self._on_finished)
        self.background.set(self.worker.quit)  # closing: stop after the plane being computed
        self.compute_button.setEnabled(False)
        self._planes, self._range = planes, (np.inf, -np.inf)
        self.status.setText(f"computing plane {plane_names(planes)} ...")
        self.worker.start()
        return self.worker

    def _output_layer(self, labels: Labels) -> Image:
        name = f"{labels.name} weight map"
        shape = tuple(labels.data.shape)
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(existing, Image) and tuple(existing.data.shape) == shape:
            return existing
        if existing is not None:
            self.viewer.layers.remove(existing)
        output = self.viewer.add_image(
            np.zeros(shape, np.float32),
            name=name,
            colormap="magma",
            blending="translucent",
            opacity=1.0,
            scale=labels.scale,
            translate=labels.translate,
            contrast_limits=(0, 1),
        )
        # under the annotations: objects keep their label colours, the background between
        # them (where the border weights live) shows the weights, unmixed
        layers = self.viewer.layers
        layers.move(layers.index(output), layers.index(labels))
        return output

    def _on_message(self, output: Image, message: tuple) -> None:
        if message[0] == "error":
            report_error(message[1])
            return
        _, index, weight = message
        output.data[index] = weight
        high = max(float(output.contrast_limits[1]), float(weight.max()), 1e-3)
        output.contrast_limits = (0.0, high)
        output.refresh()
        low, high = self._range
        self._range = (min(low, float(weight.min())), max(high, float(weight.max())))
        done = self._planes[: self._planes.index(index) + 1] if index in self._planes else []
        self.status.setText(
            f"plane {plane_names(done)}: weights {self._range[0]:.2f} .. {self._range[1]:.2f}"
        )

    def _on_finished(self) -> None:
        self.worker = None
        self.background.set(None)
        self.compute_button.setEnabled(True)

"""2 Weight map: show the U-Net loss weights (class balance + border term) of the annotations."""

from __future__ import annotations

from dataclasses import asdict

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widgets._common import (
    META_WEIGHTMAP,
    LayerCombo,
    current_plane,
    form,
    guarded,
    hint,
    is_annotation_layer,
    plane_names,
    report_error,
    set_tooltips,
)
from napari_unet._widgets._dock import DockWidget
from napari_unet._widgets.annotate import layer_mode, training_plane_list
from napari_unet.annotation.schema import AnnotationConfig, plane_targets
from napari_unet.annotation.weightmap import WeightMapConfig
from napari_unet.errors import AnnotationError


def _spin(value: float, low: float, high: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setDecimals(decimals)
    spin.setValue(value)
    return spin


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
        defaults = WeightMapConfig()
        self.labels_combo = LayerCombo(viewer, Labels, self, accept=is_annotation_layer)
        self.labels_combo.setPlaceholderText("none: create one in 1 Annotate")
        self.variant = QComboBox(self)
        self.variant.addItems(["paper", "falk"])
        self.w0 = _spin(defaults.w0, 0, 1000, 1)
        self.sigma = _spin(defaults.sigma, 0.1, 100, 0.5)
        self.class_balance = QCheckBox("inverse class frequency", self)
        self.class_balance.setChecked(defaults.class_balance)
        self.v_bal = _spin(defaults.v_bal, 0, 1, 0.05)
        self.sigma_bal = _spin(defaults.sigma_bal, 0.1, 100, 0.5)
        self.lam = _spin(defaults.lam, 0, 1000, 1)
        self.sigma_sep = _spin(defaults.sigma_sep, 0.1, 100, 0.5)
        self.scope = QComboBox(self)
        self.scope.addItems(["current plane", "all annotated planes"])
        self.compute_button = QPushButton("Compute weight map", self)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self._set_tooltips()
        layout = QVBoxLayout(self.body)
        rows = form(
            self.body,
            [
                ("annotations", self.labels_combo),
                ("variant", self.variant),
                ("w0", self.w0),
                ("sigma (px)", self.sigma),
                ("class balance", self.class_balance),
                ("v_bal", self.v_bal),
                ("sigma_bal (px)", self.sigma_bal),
                ("lambda", self.lam),
                ("sigma_sep (px)", self.sigma_sep),
                ("planes", self.scope),
            ],
        )
        self._rows = rows
        layout.addLayout(rows)
        layout.addWidget(self.compute_button)
        layout.addWidget(self.status)
        layout.addWidget(
            hint(
                "paper: w = w_c + w0 exp(-(d1 + d2)^2 / 2 sigma^2) on background, d1, d2 the "
                "distances to the nearest and second-nearest object; falk: Falk et al. 2019. "
                "Bright = high weight: the gaps between touching objects. Training uses these "
                "settings for this annotation layer."
            )
        )
        layout.addStretch(1)
        self.variant.currentTextChanged.connect(self._show_variant_rows)
        self.compute_button.clicked.connect(guarded(lambda: self.compute()))
        self._show_variant_rows(self.variant.currentText())

    def _set_tooltips(self) -> None:
        tips = {
            self.labels_combo: "the annotation layer (from 1 Annotate) whose loss weights to "
            "show; training uses the settings chosen here for it",
            self.variant: "paper: Ronneberger et al. 2015, class balance + border term "
            "w0 exp(-(d1+d2)^2/2 sigma^2); falk: Falk et al. 2019 (the Fiji plugin), a "
            "smooth balance v_bal/sigma_bal and a separation term lambda/sigma_sep",
            self.w0: "weight of the border term between touching objects (paper: 10)",
            self.sigma: "width of the border term in pixels (paper: about 5 px)",
            self.class_balance: "multiply by the inverse frequency of each class (w_c); off by "
            "default: measured, it made objects too large on phase contrast",
            self.v_bal: "falk: weight of background pixels relative to foreground (0.1)",
            self.sigma_bal: "falk: pixels over which the background weight rises near objects "
            "(10 px)",
            self.lam: "falk: weight of the separation term between objects (50)",
            self.sigma_sep: "falk: width of the separation term in pixels (6 px)",
            self.scope: "current plane: the plane on screen; all annotated planes: every plane "
            "listed in 1 Annotate",
            self.compute_button: "compute the weights into the layer "
            "'<annotations> weight map' (drawn under the annotations: cells keep their colours, "
            "the gaps glow)",
            self.status: "the planes computed and their weight range",
        }
        set_tooltips(tips)

    def _show_variant_rows(self, variant: str) -> None:
        paper = variant == "paper"
        for field, visible in (
            (self.w0, paper),
            (self.sigma, paper),
            (self.class_balance, paper),
            (self.v_bal, not paper),
            (self.sigma_bal, not paper),
            (self.lam, not paper),
            (self.sigma_sep, not paper),
        ):
            if hasattr(self._rows, "setRowVisible"):  # Qt >= 6.4: no gap where rows hide
                self._rows.setRowVisible(field, visible)
            else:
                field.setVisible(visible)
                self._rows.labelForField(field).setVisible(visible)

    def config(self) -> WeightMapConfig:
        """The weight-map settings shown in the widget."""
        return WeightMapConfig(
            variant=self.variant.currentText(),
            w0=self.w0.value(),
            sigma=self.sigma.value(),
            class_balance=self.class_balance.isChecked(),
            v_bal=self.v_bal.value(),
            sigma_bal=self.sigma_bal.value(),
            lam=self.lam.value(),
            sigma_sep=self.sigma_sep.value(),
        )

    def set_config(self, config: WeightMapConfig) -> None:
        """Show ``config`` in the widget."""
        self.variant.setCurrentText(config.variant)
        for name in ("w0", "sigma", "v_bal", "sigma_bal", "lam", "sigma_sep"):
            getattr(self, name).setValue(getattr(config, name))
        self.class_balance.setChecked(config.class_balance)

    def compute(self, scope: str | None = None, layer: Labels | None = None):
        """Start computing; ``scope`` is "current plane" or "all annotated planes".

        Returns the thread worker (``self.worker`` until it finishes).
        """
        if self.worker is not None:
            return self.worker
        layer = layer or self.labels_combo.layer()
        if layer is None:
            raise AnnotationError("choose an annotation layer (create one in 1 Annotate)")
        scope = scope or self.scope.currentText()
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

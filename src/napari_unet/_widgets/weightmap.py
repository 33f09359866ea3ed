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

from ..annotations import AnnotationConfig, plane_targets
from ..errors import AnnotationError
from ..weightmap import WeightMapConfig
from ._common import (
    META_WEIGHTMAP,
    LayerCombo,
    current_plane,
    form,
    guarded,
    hint,
    is_annotation_layer,
    report_error,
)
from .annotate import layer_mode, training_plane_list


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


class WeightMapWidget(QWidget):
    """Compute and display the loss weight map of an annotation layer."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.worker = None
        defaults = WeightMapConfig()
        self.labels_combo = LayerCombo(viewer, Labels, self, prefer=is_annotation_layer)
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
        layout = QVBoxLayout(self)
        rows = form(
            self,
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
                "paper: w = w_c + w0 exp(-(d1 + d2)^2 / 2 sigma^2) on background, w_c from class "
                "frequencies; falk: Falk et al. 2019. Bright = high weight: the gaps between "
                "touching objects. Training uses these settings for this annotation layer."
            )
        )
        layout.addStretch(1)
        self.variant.currentTextChanged.connect(self._show_variant_rows)
        self.compute_button.clicked.connect(guarded(lambda: self.compute()))
        self._show_variant_rows(self.variant.currentText())

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
        if scope.startswith("current"):
            planes = [current_plane(self.viewer, layer, layer.ndim - 2)]
        else:
            planes = training_plane_list(layer)
            if not planes:
                raise AnnotationError("no annotated plane yet: paint or import annotations first")
        output = self._output_layer(layer)
        annotation = AnnotationConfig(mode=layer_mode(layer), weight_map=config)
        self.worker = create_worker(
            _weights_job, layer.data, planes, annotation, _start_thread=False
        )
        self.worker.yielded.connect(lambda message: self._on_message(output, message))
        self.worker.finished.connect(self._on_finished)
        self.compute_button.setEnabled(False)
        self.status.setText(f"computing {len(planes)} plane(s) ...")
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
        return self.viewer.add_image(
            np.zeros(shape, np.float32),
            name=name,
            colormap="magma",
            blending="additive",
            opacity=0.6,
            scale=labels.scale,
            translate=labels.translate,
            contrast_limits=(0, 1),
        )

    def _on_message(self, output: Image, message: tuple) -> None:
        if message[0] == "error":
            report_error(message[1])
            return
        _, index, weight = message
        output.data[index] = weight
        high = max(float(output.contrast_limits[1]), float(weight.max()), 1e-3)
        output.contrast_limits = (0.0, high)
        output.refresh()
        self.status.setText(f"plane {index}: weights {weight.min():.2f} .. {weight.max():.2f}")

    def _on_finished(self) -> None:
        self.worker = None
        self.compute_button.setEnabled(True)

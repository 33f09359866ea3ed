"""4 Segment: apply the model just trained (or a model file) to a plane or a whole stack."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..batch import SegmentConfig, plane_layout
from ..derived import postprocess_config
from ..devices import available_devices
from ..errors import InputError
from ..predict import PredictConfig
from ..segment_job import ModelSource, segment_current, segment_whole
from ..threads import gui_cpu_threads
from . import _session
from ._common import (
    LayerCombo,
    channel_axis,
    form,
    hint,
    layer_data,
    report_error,
    spatial_transform,
)

SOURCES = ("model just trained", "model file...")
SCOPES = ("current plane", "whole stack")
_KINDS = {"labels": Labels, "image": Image}


class _Progress(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    changed = Signal(int, int)


class SegmentWidget(QWidget):
    """Segment an image layer; results are layers aligned with the image."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.worker = None
        self.last_result: tuple | None = None
        self._cancel = cancel = threading.Event()
        self.destroyed.connect(lambda *_: cancel.set())  # widget closed: stop a running job
        self._progress = _Progress(self)
        self._progress.changed.connect(self._on_progress)
        self.source = QComboBox(self)
        self.source.addItems(SOURCES)
        self.model_path = QLineEdit(self)
        self.model_path.setPlaceholderText("model file (.safetensors)")
        browse = QPushButton("...", self)
        browse.clicked.connect(self._browse)
        self.model_info = QLabel("", self)
        self.model_info.setWordWrap(True)
        self.image_combo = LayerCombo(viewer, Image, self)
        self.scope = QComboBox(self)
        self.scope.addItems(SCOPES)
        self.device = QComboBox(self)
        self.device.addItems(available_devices())
        self.tta = QCheckBox("average 8 flips/rotations (slower)", self)
        self.instances = QCheckBox("number the objects", self)
        self.instances.setChecked(True)
        self.watershed = QCheckBox("split touching objects (watershed)", self)
        self.seed_distance = QSpinBox(self, minimum=1, maximum=1000, value=5, suffix=" px")
        self.seed_distance.setToolTip(
            "smallest distance between two watershed seeds: about the radius of the smallest object"
        )
        self.min_size = QSpinBox(self, minimum=-1, maximum=1_000_000, value=-1, suffix=" px")
        self.min_size.setSpecialValueText("auto (from the annotations)")
        self.min_size.setToolTip(
            "objects smaller than this many pixels are removed; auto: a quarter of the smallest "
            "object annotated for training (recorded in the model file); 0 keeps every object"
        )
        self.probability = QCheckBox("foreground probability layer", self)
        self.uncertainty = QCheckBox("uncertainty layer (8 passes)", self)
        self.run_button = QPushButton("Segment", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.progress = QProgressBar(self)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        path_row = QHBoxLayout()
        path_row.addWidget(self.model_path)
        path_row.addWidget(browse)
        rows = form(self, [("model", self.source)])
        rows.addRow("model file", path_row)
        for label, field in (
            ("", self.model_info),
            ("image", self.image_combo),
            ("planes", self.scope),
            ("device", self.device),
            ("TTA", self.tta),
            ("instances", self.instances),
            ("", self.watershed),
            ("seed distance", self.seed_distance),
            ("min size (px)", self.min_size),
            ("extra", self.probability),
            ("", self.uncertainty),
        ):
            rows.addRow(label, field)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(rows)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(
            hint(
                "Probability and uncertainty maps are computed for the current "
                "plane. A whole stack is read one plane at a time."
            )
        )
        layout.addStretch(1)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.source.currentTextChanged.connect(self._update_info)
        self.model_path.editingFinished.connect(self._update_info)
        self.scope.currentTextChanged.connect(self._on_scope)
        _session.changed.connect(self._update_info)
        self._update_info()
        self._on_scope(self.scope.currentText())
        self._set_running(False)

    # ------------------------------------------------------------------ choices
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model file", "", "napari-unet models (*.safetensors)"
        )
        if path:
            self.model_path.setText(path)
            self.source.setCurrentText(SOURCES[1])
            self._update_info()

    def _update_info(self, *_args) -> None:
        try:
            self.model_info.text()
        except RuntimeError:  # widget deleted; the session signal outlived it
            _session.changed.disconnect(self._update_info)
            return
        if self.source.currentText() == SOURCES[0]:
            entry = _session.trained()
            self.model_info.setText(
                entry.description
                if entry
                else "no model trained yet in this session (use 3 Train, or choose a model file)"
            )
        else:
            self.model_info.setText(self.model_path.text() or "choose a model file")

    def _on_scope(self, scope: str) -> None:
        plane = scope == SCOPES[0]
        self.probability.setEnabled(plane)
        self.uncertainty.setEnabled(plane)

    def model_source(self) -> ModelSource:
        """The chosen model (not yet loaded)."""
        if self.source.currentText() == SOURCES[0]:
            entry = _session.trained()
            if entry is None:
                raise InputError(
                    "no model trained yet in this session: train one in 3 Train "
                    "or choose a model file"
                )
            return ModelSource(model=entry.model, metadata=entry.metadata)
        path = self.model_path.text().strip()
        if not path:
            raise InputError("choose a model file")
        return ModelSource(path=path)

    def segment_config(self, metadata=None) -> SegmentConfig:
        """Prediction and post-processing settings shown in the widget.

        "auto" settings come from ``metadata`` (the model's recommendation); without it they are
        resolved by the segmentation itself (:func:`napari_unet.batch.postprocess_for`).
        """
        min_size = self.min_size.value()
        post = None
        if min_size >= 0 or self.watershed.isChecked():
            recommended = postprocess_config(getattr(metadata, "postprocess", None) or {})
            post = replace(
                recommended,
                watershed=self.watershed.isChecked(),
                watershed_min_distance=self.seed_distance.value(),
                **({"min_size": min_size} if min_size >= 0 else {}),
            )
        return SegmentConfig(
            predict=PredictConfig(tta=self.tta.isChecked(), device=self.device.currentText()),
            postprocess=post,
            instances=self.instances.isChecked(),
        )

    # ------------------------------------------------------------------ run
    @property
    def is_running(self) -> bool:
        """Whether a segmentation is in progress."""
        return self.worker is not None

    def run(self, scope: str | None = None):
        """Start segmenting ("current plane" or "whole stack"); errors become notifications."""
        try:
            return self._start(scope or self.scope.currentText())
        except Exception as exc:  # noqa: BLE001 - shown to the user
            report_error(exc)
            return None

    def _start(self, scope: str):
        if self.worker is not None:
            raise InputError("a segmentation is already running")
        image = self.image_combo.layer()
        if image is None:
            raise InputError("choose an image layer to segment")
        source = self.model_source()
        config = self.segment_config(source.read_metadata())
        device = self.device.currentText()
        data, axis = layer_data(image), channel_axis(image)
        config = SegmentConfig(config.predict, config.postprocess, config.instances, axis)
        self._cancel.clear()
        resolved = available_devices()[0] if device == "auto" else device
        threads = gui_cpu_threads() if resolved == "cpu" else None
        if scope == SCOPES[0]:
            index = self._plane_index(image, source, axis)
            self.worker = create_worker(
                segment_current,
                source,
                device,
                data,
                index,
                axis,
                config,
                self.probability.isChecked(),
                self.uncertainty.isChecked(),
                self._cancel.is_set,
                threads,
                _start_thread=False,
            )
            self.progress.setRange(0, 0)
        else:
            self.worker = create_worker(
                segment_whole,
                source,
                device,
                data,
                config,
                self._progress.changed.emit,
                self._cancel.is_set,
                threads,
                _start_thread=False,
            )
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        self.worker.returned.connect(lambda result: self._on_result(image, result))
        self.worker.errored.connect(report_error)
        self.worker.finished.connect(self._on_finished)
        self._started = time.perf_counter()
        self.status.setText(f"segmenting ({scope}) ...")
        self._set_running(True)
        self.worker.start()
        return self.worker

    def _plane_index(self, image: Image, source: ModelSource, axis: int | None) -> tuple:
        shape = tuple(layer_data(image).shape)
        channels = source.model.config.in_channels if source.model is not None else None
        if channels is not None:
            lead, _ = plane_layout(shape, source.model, axis)
        else:
            lead = tuple(s for i, s in enumerate(shape) if i != axis)[:-2]
        position = list(image.world_to_data(self.viewer.dims.point))
        if axis is not None and not image.rgb:
            del position[axis]
        return tuple(int(np.clip(round(position[i]), 0, lead[i] - 1)) for i in range(len(lead)))

    def cancel(self) -> None:
        """Stop after the current tile; no layer is changed."""
        if self.worker is not None:
            self._cancel.set()
            self.status.setText("cancelling ...")

    # ------------------------------------------------------------------ results
    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.status.setText(f"plane {done}/{total}")

    def _on_result(self, image: Image, result: tuple) -> None:
        self.last_result = result
        kind = result[0]
        took = time.perf_counter() - self._started
        if kind == "error":
            report_error(result[1])
            self.status.setText(f"failed: {result[1]}")
        elif kind == "cancelled":
            self.status.setText("cancelled; no layer was changed")
        elif kind == "stack":
            self._put(image, "segmentation", result[1], "labels")
            self.status.setText(
                f"done: {int(np.asarray(result[1]).shape[0])} planes in {took:.1f} s"
            )
        else:
            _, index, labels, prob, unc = result
            self._put_plane(image, "segmentation", index, labels, "labels", np.uint32)
            if prob is not None:
                self._put_plane(image, "probability", index, prob, "image", np.float32)
            if unc is not None:
                self._put_plane(image, "uncertainty", index, unc, "image", np.float32)
            self.status.setText(f"done: plane {index} in {took:.1f} s")

    def result_layer(self, image: Image, what: str = "segmentation"):
        """The layer "<image> <what>", or None."""
        name = f"{image.name} {what}"
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _put(self, image: Image, what: str, data, kind: str):
        layer = self.result_layer(image, what)
        if isinstance(layer, _KINDS[kind]) and layer.data.shape == data.shape:
            layer.data = data
            return layer
        if layer is not None:
            self.viewer.layers.remove(layer)
        transform = spatial_transform(image)
        if kind == "labels":
            return self.viewer.add_labels(data, name=f"{image.name} {what}", **transform)
        cmap = "viridis" if what == "probability" else "inferno"
        return self.viewer.add_image(
            data,
            name=f"{image.name} {what}",
            colormap=cmap,
            blending="additive",
            opacity=0.7,
            contrast_limits=(0, 1),
            **transform,
        )

    def _put_plane(self, image: Image, what: str, index, plane, kind: str, dtype) -> None:
        axis = channel_axis(image)
        shape = tuple(s for i, s in enumerate(layer_data(image).shape) if i != axis)
        layer = self.result_layer(image, what)
        if not isinstance(layer, _KINDS[kind]) or tuple(layer.data.shape) != shape:
            layer = self._put(image, what, np.zeros(shape, dtype), kind)
        layer.data[tuple(index)] = plane
        layer.refresh()

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if not running:
            self.progress.setRange(0, 1)

"""4 Segment: apply the model just trained (or a model file) to a plane or a whole stack.

It also closes the human-in-the-loop round (issue #14): "Use plane as annotation" copies a
corrected plane of the result into the annotation layer (one Ctrl+Z undoes it), "Annotate next"
ranks the planes not annotated yet by how unsure the model is (:mod:`napari_unet.suggest`), and
a new model from 3 Train segments (and ranks) again by itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from functools import partial

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..annotations import IGNORE_LABEL
from ..batch import SegmentConfig, plane_layout
from ..derived import postprocess_config
from ..devices import available_devices
from ..errors import AnnotationError, InputError
from ..predict import PredictConfig
from ..segment_job import ModelSource, rank_whole, segment_current, segment_whole
from ..suggest import PlaneScore, SuggestConfig
from ..threads import gui_cpu_threads
from . import _session
from ._common import (
    META_IMAGE,
    META_INSTANCES,
    META_PLANES,
    LayerCombo,
    channel_axis,
    current_plane,
    error_message,
    form,
    go_to_plane,
    guarded,
    hint,
    is_annotation_layer,
    layer_data,
    log,
    plane_names,
    report_error,
    set_tooltips,
    spatial_shape,
    spatial_transform,
)
from ._dock import DockWidget
from .annotate import add_annotation_layer, explicit_planes, layer_mode, training_plane_list

STOP_WAIT_S = 20.0  # closing the widget waits this long for a segmentation to stop
SOURCES = ("model just trained", "model file...")
SCOPES = ("current plane", "whole stack")
_KINDS = {"labels": Labels, "image": Image}
AUTO_MIN_SIZE = "auto (from the annotations)"
MAX_OBJECTS = IGNORE_LABEL - 1  # ids an annotation plane can hold (65535 = ignore)
NOTHING_TO_RANK = "a single 2D image has one plane: there is nothing to rank"


class _Progress(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    changed = Signal(int, int)


def _tracked(func, ended: threading.Event):
    """``func`` that sets ``ended`` when it returns or raises (so closing can wait for it)."""

    def call(*args):
        try:
            return func(*args)
        finally:
            ended.set()

    return call


@dataclass(frozen=True)
class _Job:
    """What the worker now running does: segment (a scope) or rank, for which image and model."""

    kind: str  # "segment" or "rank"
    scope: str
    image: str
    model: object | None  # the session entry used (None: a model file)
    after_training: bool = False  # started because 3 Train gave a new model


def stop_segmentation(cancel: threading.Event, ended: threading.Event) -> None:
    """Ask a segmentation to stop and wait until its thread is done (the widget is closing)."""
    cancel.set()
    if not ended.wait(STOP_WAIT_S):
        log.warning("napari-unet: the segmentation did not stop within %s s", STOP_WAIT_S)


class SegmentWidget(DockWidget):
    """Segment an image layer; results are layers aligned with the image.

    The human-in-the-loop round: :meth:`use_plane_as_annotation` copies the plane on screen of
    the (corrected) result into the annotation layer; :meth:`rank_planes` lists the planes not
    annotated yet in :attr:`next_list`, least sure first, and fills the "<image> uncertainty"
    layer; a new model from 3 Train re-runs the last segmentation (:attr:`resegment`).
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self.worker = None
        self.last_result: tuple | None = None
        self.ranking: list[PlaneScore] = []  # the last ranking shown, least sure first
        self._ranked_image: str | None = None  # the image that ranking belongs to
        self._job: _Job | None = None  # what the worker now running does
        self._last_run: _Job | None = None  # the last segmentation that gave layers
        self._rank_pending = False  # rank when the running segmentation ends
        self._rerun_pending: _Job | None = None  # segment again when the running work ends
        self._cancel = threading.Event()
        self._ended = threading.Event()
        self._ended.set()
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
        self.min_size.setSpecialValueText(AUTO_MIN_SIZE)
        self.probability = QCheckBox("foreground probability layer", self)
        self.uncertainty = QCheckBox("uncertainty layer (8 passes)", self)
        self.resegment = QCheckBox("segment again when training ends", self)
        self.resegment.setChecked(True)
        self.run_button = QPushButton("Segment", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.progress = QProgressBar(self)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.use_plane_button = QPushButton("Use plane as annotation", self)
        self.rank_after = QCheckBox("rank planes after a whole-stack run", self)
        self.rank_after.setChecked(True)
        self.rank_button = QPushButton("Rank planes", self)
        self.next_list = QListWidget(self)
        self.next_list.setMaximumHeight(140)
        self.next_hint = hint("")
        self.browse_button = browse
        self._set_tooltips()
        path_row = QHBoxLayout()
        path_row.addWidget(self.model_path)
        path_row.addWidget(browse)
        self._path_row = path_row
        rows = self._rows = form(self.body, [("model", self.source)])
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
            ("extra layers", self.probability),
            ("", self.uncertainty),
            ("new model", self.resegment),
        ):
            rows.addRow(label, field)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self.body)
        layout.addLayout(rows)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.use_plane_button)
        layout.addWidget(
            hint(
                "Probability and uncertainty maps are computed for the current "
                "plane. A whole stack is read one plane at a time. Correct a plane of the "
                "segmentation with napari's label tools, then Use plane as annotation."
            )
        )
        layout.addWidget(self._next_group())
        layout.addStretch(1)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.use_plane_button.clicked.connect(guarded(lambda: self.use_plane_as_annotation()))
        self.rank_button.clicked.connect(lambda: self.rank_planes())
        self.next_list.itemClicked.connect(self._on_next_clicked)
        self.source.currentTextChanged.connect(self._update_info)
        self.model_path.editingFinished.connect(self._update_info)
        self.scope.currentTextChanged.connect(self._on_scope)
        self.image_combo.currentTextChanged.connect(self._update_rank_state)
        _session.changed.connect(self._update_info)
        _session.changed.connect(self._on_session_changed)
        self._update_info()
        self._on_scope(self.scope.currentText())
        self._set_running(False)

    def _next_group(self) -> QGroupBox:
        group = QGroupBox("Annotate next", self)
        inner = QVBoxLayout(group)
        row = QHBoxLayout()
        row.addWidget(self.rank_after)
        row.addWidget(self.rank_button)
        inner.addLayout(row)
        inner.addWidget(self.next_list)
        inner.addWidget(self.next_hint)
        return group

    def _set_tooltips(self) -> None:
        tips = {
            self.source: "the network: the one trained last in 3 Train (this session) or a "
            "model file (.safetensors)",
            self.model_path: "the model file to segment with (.safetensors, loaded without "
            "running code)",
            self.browse_button: "choose a model file",
            self.model_info: "which model will be used",
            self.image_combo: "the image layer to segment (numpy or dask, any number of planes)",
            self.scope: "current plane: the plane on screen (seconds); whole stack: every "
            "plane, read one at a time, with progress and Cancel",
            self.device: "where to predict: auto picks CUDA, then Apple MPS, then the CPU",
            self.tta: "test-time augmentation: average the predictions of the 8 flips and "
            "90-degree rotations (8x slower, a little smoother)",
            self.instances: "on: number the objects 1, 2, 3, ... (unique over the stack); "
            "off: the predicted class of each pixel",
            self.watershed: "also split touching objects at the peaks of the distance "
            "transform (objects are already split at the network's confident cores)",
            self.seed_distance: "smallest distance between two watershed seeds: about the "
            "radius of the smallest object",
            self.min_size: "objects smaller than this many pixels are removed; auto: a quarter "
            "of the smallest object annotated for training (recorded in the model file), the "
            "same rule as the command line; 0 keeps every object, specks included",
            self.probability: "also add the foreground probability (0..1) of the current plane "
            "as an image layer",
            self.uncertainty: "also add the disagreement of 8 flipped/rotated predictions of "
            "the current plane (where the model is unsure) as an image layer",
            self.resegment: "when 3 Train finishes a model and the model here is 'model just "
            "trained': segment the last plane or stack again with it (and rank again)",
            self.run_button: "segment; results become layers '<image> segmentation' "
            "(and probability / uncertainty) aligned with the image",
            self.cancel_button: "stop after the current tile (or plane, when ranking); no layer "
            "is changed",
            self.progress: "planes done",
            self.status: "what the widget is doing, or why it stopped",
            self.use_plane_button: "copy the plane on screen of '<image> segmentation' (as you "
            "corrected it with napari's label tools) into the annotation layer, objects "
            "numbered 1, 2, 3, ...; it counts as annotated for the next training. Replaces "
            "what that plane held there; other planes are untouched; Ctrl+Z on the annotation "
            "layer undoes it",
            self.rank_after: "after segmenting the whole stack, rank its planes not annotated "
            "yet (8 flipped/rotated predictions per plane)",
            self.rank_button: "rank the planes not annotated yet by how unsure the model is "
            "(the disagreement of 8 flipped/rotated predictions); fills '<image> uncertainty'",
            self.next_list: "planes not annotated yet, least sure first: plane, score (mean "
            "disagreement of the 8 predictions, higher = less sure), objects found; click one "
            "to go there",
        }
        set_tooltips(tips)

    def stop_workers(self) -> None:
        """The widget is closing: cancel a segmentation and wait until its thread returns."""
        for slot in (self._update_info, self._on_session_changed):
            try:
                _session.changed.disconnect(slot)
            except Exception:  # noqa: BLE001 - already disconnected
                pass
        self._rank_pending = False
        self._rerun_pending = None
        super().stop_workers()

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
        from_file = self.source.currentText() == SOURCES[1]
        path_label = self._rows.labelForField(self._path_row)
        for widget in (self.model_path, self.browse_button, path_label):
            widget.setVisible(from_file)
        metadata = None
        if not from_file:
            entry = _session.trained()
            metadata = entry.metadata if entry else None
            self.model_info.setText(
                entry.description
                if entry
                else "no model trained yet in this session (use 3 Train, or choose a model file)"
            )
        else:
            path = self.model_path.text().strip()
            self.model_info.setText(path or "choose a model file")
            try:
                metadata = ModelSource(path=path).read_metadata() if path else None
            except Exception:  # noqa: BLE001 - a bad path is reported when Segment is pressed
                metadata = None
        min_size = postprocess_config(getattr(metadata, "postprocess", None) or {}).min_size
        self.min_size.setSpecialValueText(
            f"auto: {min_size} px (from the annotations)" if metadata else AUTO_MIN_SIZE
        )

    def _on_scope(self, scope: str) -> None:
        plane = scope == SCOPES[0]
        self.probability.setEnabled(plane)
        self.uncertainty.setEnabled(plane)

    def _rankable(self, image: Image | None = None) -> bool:
        """Whether ``image`` (default: the chosen one) has more than one plane to rank."""
        image = image or self.image_combo.layer()
        return image is not None and int(np.prod(spatial_shape(image)[:-2])) > 1

    def _update_rank_state(self, *_args) -> None:
        image = self.image_combo.layer()
        single = image is not None and not self._rankable(image)
        self.rank_after.setEnabled(not single)
        self.next_list.setEnabled(not single)
        self.rank_button.setEnabled(not single and image is not None and self.worker is None)
        self.next_hint.setText(
            NOTHING_TO_RANK
            if single
            else "Planes not annotated yet, least sure first. Click one to go there, correct "
            "its segmentation and press Use plane as annotation."
        )

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

    def _config_for(self, image: Image, source: ModelSource) -> SegmentConfig:
        config = self.segment_config(source.read_metadata())
        return SegmentConfig(
            config.predict, config.postprocess, config.instances, channel_axis(image)
        )

    # ------------------------------------------------------------------ run
    @property
    def is_running(self) -> bool:
        """Whether a segmentation or a ranking is in progress."""
        return self.worker is not None

    def run(self, scope: str | None = None, image: Image | None = None):
        """Start segmenting ("current plane" or "whole stack"); errors become notifications.

        ``image``: the image layer to segment (default: the one chosen in the widget).
        """
        return self._guarded_start(
            lambda: self._start(scope or self.scope.currentText(), image), quiet=False
        )

    def _guarded_start(self, start, quiet: bool):
        """Call ``start()``; errors become a notification (``quiet``: user errors the status)."""
        try:
            return start()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            if quiet and isinstance(exc, InputError):
                self.status.setText(f"{self.status.text()} (not ranked: {error_message(exc)})")
            else:
                report_error(exc)
                self.status.setText(f"not started: {error_message(exc)}")
            if self.worker is None:
                self._ended.set()
            return None

    def _start(self, scope: str, image: Image | None = None, after_training: bool = False):
        if self.worker is not None:
            raise InputError("a segmentation is already running")
        image = image or self.image_combo.layer()
        if image is None:
            raise InputError("choose an image layer to segment")
        source = self.model_source()
        config = self._config_for(image, source)
        device = self.device.currentText()
        data, axis = layer_data(image), config.channel_axis
        job = _Job("segment", scope, image.name, self._session_entry(source), after_training)
        if scope == SCOPES[0]:
            index = self._plane_index(image, source, axis)
            args = (
                source,
                device,
                data,
                index,
                axis,
                config,
                self.probability.isChecked(),
                self.uncertainty.isChecked(),
            )
            return self._launch(segment_current, args, device, image, job, counted=False)
        args = (source, device, data, config, self._progress.changed.emit)
        return self._launch(segment_whole, args, device, image, job, counted=True)

    @staticmethod
    def _session_entry(source: ModelSource):
        entry = _session.trained()
        return entry if entry is not None and source.model is entry.model else None

    def _launch(self, func, args: tuple, device: str, image: Image, job: _Job, counted: bool):
        """Run ``func(*args, cancelled, threads)`` in a worker; the result goes to _on_result."""
        self._cancel.clear()
        self._ended.clear()
        resolved = available_devices()[0] if device == "auto" else device
        threads = gui_cpu_threads() if resolved == "cpu" else None
        self.worker = create_worker(
            _tracked(func, self._ended), *args, self._cancel.is_set, threads, _start_thread=False
        )
        if counted:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        else:
            self.progress.setRange(0, 0)
        self.worker.returned.connect(lambda result: self._on_result(image, result))
        self.worker.errored.connect(report_error)
        self.worker.finished.connect(self._on_finished)
        self.background.set(partial(stop_segmentation, self._cancel, self._ended))
        self._job = job
        self._started = time.perf_counter()
        what = "ranking the planes" if job.kind == "rank" else f"segmenting ({job.scope})"
        self.status.setText(f"{what} ...")
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
        """Stop after the current tile (ranking: the current plane); no layer is changed."""
        if self.worker is not None:
            self._cancel.set()
            self._rank_pending = False
            self._rerun_pending = None
            self.status.setText("cancelling ...")

    # ------------------------------------------------------------------ annotate next
    def rank_planes(self, auto: bool = False):
        """Rank the chosen image's planes not annotated yet, least sure first, in a worker.

        The result fills :attr:`next_list` and the "<image> uncertainty" layer. Errors become
        notifications; with ``auto`` (after a whole-stack run) a plain reason such as "every
        plane is annotated" only goes to the status line.
        """
        return self._guarded_start(self._start_ranking, quiet=auto)

    def _start_ranking(self):
        if self.worker is not None:
            raise InputError("wait until the segmentation ends (or Cancel it)")
        image = self.image_combo.layer()
        if image is None:
            raise InputError("choose an image layer to rank")
        if not self._rankable(image):
            raise InputError(NOTHING_TO_RANK)
        source = self.model_source()
        config = self._config_for(image, source)
        target = self.annotation_layer(image)
        exclude = set(training_plane_list(target)) if target is not None else set()
        lead = spatial_shape(image)[:-2]
        if all(index in exclude for index in np.ndindex(*lead)):
            raise InputError(f"every plane of '{image.name}' is annotated: nothing left to rank")
        device = self.device.currentText()
        args = (
            source,
            device,
            layer_data(image),
            SuggestConfig(segment=config),
            sorted(exclude),
            self._progress.changed.emit,
        )
        job = _Job("rank", SCOPES[1], image.name, self._session_entry(source))
        return self._launch(rank_whole, args, device, image, job, counted=True)

    def _show_ranking(self, image: Image, scores: list[PlaneScore], maps: np.ndarray) -> None:
        self.ranking = list(scores)
        self._ranked_image = image.name
        active = self.viewer.layers.selection.active  # e.g. the segmentation being corrected
        layer = self._put(image, "uncertainty", maps, "image")
        if active is not None and active is not layer and active in self.viewer.layers:
            self.viewer.layers.selection.active = active  # a new layer would take the selection
        layer.contrast_limits = (0.0, max(float(maps.max()), 1e-3))
        self._fill_next_list()
        took = time.perf_counter() - self._started
        first = plane_names([scores[0].index]) if scores else "-"
        self.status.setText(
            f"ranked {len(scores)} planes in {took:.1f} s; least sure: plane {first}"
        )

    def _fill_next_list(self) -> None:
        self.next_list.clear()
        for entry in self.ranking:
            n = entry.objects
            item = QListWidgetItem(
                f"plane {plane_names([entry.index])}   {entry.score:.3f}   "
                f"({n} object{'' if n == 1 else 's'})"
            )
            item.setData(Qt.ItemDataRole.UserRole, list(entry.index))
            self.next_list.addItem(item)

    def _on_next_clicked(self, item: QListWidgetItem) -> None:
        name = self._ranked_image
        for what in ("uncertainty", "segmentation"):
            layer_name = f"{name} {what}"
            if layer_name in self.viewer.layers:
                index = tuple(int(i) for i in item.data(Qt.ItemDataRole.UserRole))
                go_to_plane(self.viewer, self.viewer.layers[layer_name], index)
                return

    def _drop_from_ranking(self, image: Image, index: tuple[int, ...]) -> None:
        """``index`` of ``image`` is annotated now: it leaves the "Annotate next" list."""
        if image.name == self._ranked_image and any(e.index == index for e in self.ranking):
            self.ranking = [entry for entry in self.ranking if entry.index != index]
            self._fill_next_list()

    # ------------------------------------------------------------------ correct in place
    def annotation_layer(self, image: Image | None = None) -> Labels | None:
        """The annotation layer of ``image`` (default: the chosen one), or None.

        Among several, the selected one, else the top one in the layer list.
        """
        image = image or self.image_combo.layer()
        if image is None:
            return None
        mine = [
            layer
            for layer in self.viewer.layers
            if is_annotation_layer(layer) and layer.metadata.get(META_IMAGE) == image.name
        ]
        active = self.viewer.layers.selection.active
        if active in mine:
            return active
        return mine[-1] if mine else None

    def use_plane_as_annotation(self) -> tuple[int, ...]:
        """Copy the plane on screen of "<image> segmentation" into the image's annotations.

        The plane (as corrected with napari's label tools) replaces that plane of the annotation
        layer, converted to the layer's schema (instances: objects renumbered 1..n); other
        planes are never touched. The write goes through ``Labels.data_setitem``, so one Ctrl+Z
        (``undo()``) on the annotation layer restores the plane. A plane with labels counts as
        annotated by itself; an empty plane (no objects) is also marked as annotated in the
        layer's metadata. Without an annotation layer one is created (instances). Returns the
        plane index.
        """
        image = self.image_combo.layer()
        if image is None:
            raise InputError("choose the image whose segmentation you corrected")
        result = self.result_layer(image)
        if not isinstance(result, Labels):
            raise InputError(
                f"segment '{image.name}' first: there is no labels layer '{image.name} "
                "segmentation' to copy from"
            )
        target = self.annotation_layer(image)
        expected = tuple(target.data.shape) if target is not None else spatial_shape(image)
        if tuple(result.data.shape) != expected:
            where = f"the annotation layer '{target.name}'" if target else f"'{image.name}'"
            raise InputError(
                f"'{result.name}' has planes of shape {tuple(result.data.shape)} but {where} "
                f"has shape {expected}: segment '{image.name}' again, then copy the plane"
            )
        index = current_plane(self.viewer, result, result.ndim - 2)
        name = plane_names([index])
        plane = np.asarray(layer_data(result)[index])
        mode = layer_mode(target)
        new, objects = plane_as_annotation(
            plane, mode, bool(result.metadata.get(META_INSTANCES, True)), name
        )
        created = target is None
        target = target or add_annotation_layer(self.viewer, image)
        dtype = target.data.dtype
        if new.size and np.issubdtype(dtype, np.integer) and new.max() > np.iinfo(dtype).max:
            raise AnnotationError(
                f"the annotation layer '{target.name}' ({dtype}) cannot hold label {new.max()}"
            )
        new = new.astype(dtype)
        old = np.asarray(target.data[index])
        replaced = bool(old.any()) and not np.array_equal(old, new)
        changed = np.nonzero(old != new)
        if changed[0].size:
            where = tuple(np.full(changed[0].size, i, np.intp) for i in index) + changed
            # napari 0.9 gives a hidden labels layer an empty slice, and data_setitem's display
            # update then fails: show the layer for the write (users hide it to correct)
            hidden = not target.visible
            target.visible = True
            try:
                target.data_setitem(where, new[changed])
            finally:
                target.visible = not hidden
        if not new.any():  # an empty plane is annotated only when marked
            target.metadata[META_PLANES] = [
                list(p) for p in sorted(explicit_planes(target) | {index})
            ]
            target.events.paint(value=[])  # the Annotate widget refreshes its plane list
        self._drop_from_ranking(image, index)
        notes = [
            f"plane {name} of '{result.name}' is now an annotated plane of '{target.name}' "
            f"({objects} object{'' if objects == 1 else 's'})"
        ]
        if created:
            notes.append(f"created the annotation layer '{target.name}'")
        if replaced:
            notes.append("it replaced the annotations that plane held")
        notes.append("to undo: select the annotation layer and press Ctrl+Z")
        show_info("; ".join(notes))
        self.status.setText(notes[0])
        return index

    # ------------------------------------------------------------------ after training
    def _on_session_changed(self, *_args) -> None:
        """3 Train finished a model: segment the last plane or stack again with it."""
        entry = _session.trained()
        if entry is None or self._shut_down:
            return
        try:
            wanted = self.resegment.isChecked() and self.source.currentText() == SOURCES[0]
        except RuntimeError:  # widget deleted; the session signal outlived it
            _session.changed.disconnect(self._on_session_changed)
            return
        job = self._job
        again = job if job is not None and job.kind == "segment" else self._last_run
        if not wanted or again is None:
            return
        if job is not None:
            if job.model is entry:
                return  # already running with the new model
            self._rerun_pending = again
            self._rank_pending = False
            self._cancel.set()
            self.status.setText("a new model: stopping, then segmenting again with it ...")
            return
        self._segment_again(again)

    def _segment_again(self, last: _Job) -> None:
        if last.image not in self.viewer.layers:
            return
        image = self.viewer.layers[last.image]
        self._guarded_start(lambda: self._start(last.scope, image, after_training=True), False)

    # ------------------------------------------------------------------ results
    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        what = "ranking: " if self._job is not None and self._job.kind == "rank" else ""
        self.status.setText(f"{what}plane {done}/{total}")

    def _on_result(self, image: Image, result: tuple) -> None:
        job = self._job
        kind = result[0]
        if job is not None and job.kind == "rank":
            if kind == "ranked":
                self._show_ranking(image, result[1], result[2])
            elif kind == "cancelled":
                self.status.setText("ranking cancelled; the list was not changed")
            elif kind == "error":
                report_error(result[1])
                self.status.setText(f"ranking failed: {error_message(result[1])}")
            return
        self.last_result = result
        took = time.perf_counter() - self._started
        if kind == "error":
            report_error(result[1])
            self.status.setText(f"failed: {error_message(result[1])}")
        elif kind == "cancelled":
            self.status.setText("cancelled; no layer was changed")
        elif kind == "stack":
            layer = self._put(image, "segmentation", result[1], "labels")
            layer.metadata[META_INSTANCES] = self.instances.isChecked()
            self.status.setText(
                f"done: {int(np.asarray(result[1]).shape[0])} planes in {took:.1f} s"
            )
            self._after_segmentation(job, image)
        else:
            _, index, labels, prob, unc = result
            layer = self._put_plane(image, "segmentation", index, labels, "labels", np.uint32)
            layer.metadata[META_INSTANCES] = self.instances.isChecked()
            if prob is not None:
                self._put_plane(image, "probability", index, prob, "image", np.float32)
            if unc is not None:
                self._put_plane(image, "uncertainty", index, unc, "image", np.float32)
            self.status.setText(f"done: plane {index} in {took:.1f} s")
            self._after_segmentation(job, image)

    def _after_segmentation(self, job: _Job | None, image: Image) -> None:
        """Remember the run (to repeat it after training) and decide whether to rank next."""
        if job is None:
            return
        self._last_run = job
        ranked_before = bool(self.ranking) and self._ranked_image == image.name
        whole = job.scope == SCOPES[1]
        self._rank_pending = (
            self.rank_after.isChecked()
            and self._rankable(image)
            and (whole or (job.after_training and ranked_before))
        )

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

    def _put_plane(self, image: Image, what: str, index, plane, kind: str, dtype):
        axis = channel_axis(image)
        shape = tuple(s for i, s in enumerate(layer_data(image).shape) if i != axis)
        layer = self.result_layer(image, what)
        if not isinstance(layer, _KINDS[kind]) or tuple(layer.data.shape) != shape:
            layer = self._put(image, what, np.zeros(shape, dtype), kind)
        layer.data[tuple(index)] = plane
        layer.refresh()
        return layer

    def _on_finished(self) -> None:
        self.worker = None
        self._job = None
        self.background.set(None)
        self._set_running(False)
        rerun, self._rerun_pending = self._rerun_pending, None
        rank, self._rank_pending = self._rank_pending, False
        if self._shut_down:
            return
        if rerun is not None:
            self._segment_again(rerun)
        elif rank:
            self.rank_planes(auto=True)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self._update_rank_state()
        if not running:
            self.progress.setRange(0, 1)


def plane_as_annotation(
    plane: np.ndarray, mode: str, instances: bool, name: str = ""
) -> tuple[np.ndarray, int]:
    """A segmented (Y, X) plane as annotation values of ``mode``, and its number of objects.

    ``instances``: the plane numbers objects (ids may be large and unique over a stack); else
    it holds classes. Instances mode renumbers objects 1..n (a class plane: its connected
    foreground parts); scribbles: background 1, objects 2 (class c: c + 1); classes: objects
    become class 1 (a class plane is kept). Pixels at :data:`IGNORE_LABEL` stay ignored.
    """
    from scipy import ndimage
    from skimage.segmentation import relabel_sequential

    plane = np.asarray(plane)
    ignore = plane == IGNORE_LABEL
    objects = np.where(ignore, 0, plane).astype(np.int64)
    if mode == "instances":
        if instances:
            out = relabel_sequential(objects)[0]
        else:
            out = ndimage.label(objects > 0)[0]
        count = int(out.max()) if out.size else 0
        if count > MAX_OBJECTS:
            raise AnnotationError(
                f"plane {name} holds {count} objects but an annotation plane holds at most "
                f"{MAX_OBJECTS}: remove objects (or tile the image) before using it"
            )
    elif mode == "scribbles":
        out = np.where(objects > 0, 2 if instances else objects + 1, 1)
        count = int(len(np.unique(objects[objects > 0])))
    else:
        out = (objects > 0).astype(np.int64) if instances else objects
        count = int(len(np.unique(objects[objects > 0])))
    if out.size and out.max() > MAX_OBJECTS:
        raise AnnotationError(
            f"plane {name} holds label {int(out.max())}; annotations hold at most {MAX_OBJECTS}"
        )
    out = np.asarray(out, np.int64)
    out[ignore] = IGNORE_LABEL
    return out, count

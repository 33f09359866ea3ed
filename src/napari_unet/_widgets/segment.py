"""4 Segment: apply the model just trained (or a model file) to a plane or a whole stack.

Segmenting in a worker and the result layers, then the human-in-the-loop round (issue #14):
"Annotate next" ranks the planes not annotated yet by how unsure the model is
(:mod:`napari_unet.inference.suggest`), least sure first, and fills "<image> uncertainty"; "Use
plane as annotation" copies the corrected plane of "<image> segmentation" into the annotation
layer (one Ctrl+Z undoes it); a new model from 3 Train segments (and ranks) again by itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import napari
import numpy as np
from magicgui.widgets import Container, FileEdit, Label
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QCheckBox, QLabel, QListWidget, QProgressBar, QWidget

from napari_unet._widgets import _common, _session, annotate
from napari_unet._widgets._dock import DockWidget, stopper, unless_deleted
from napari_unet._widgets._forms import Remembered, config_form, field_widget, layer_picker
from napari_unet.annotation.derived import describe, postprocess_config
from napari_unet.annotation.imported import as_annotations
from napari_unet.annotation.schema import plane_as_annotation
from napari_unet.devices import available_devices
from napari_unet.errors import InputError
from napari_unet.inference.batch import SegmentConfig, plane_layout
from napari_unet.inference.cache import CACHE_TIP, OutputCache, live_key, relabel
from napari_unet.inference.job import (
    SCOPES,
    SOURCES,
    ModelSource,
    SegmentRequest,
    rank_whole,
    segment_current,
    segment_whole,
)
from napari_unet.inference.postprocess import PostprocessConfig
from napari_unet.inference.predictor import PredictConfig
from napari_unet.inference.suggest import PlaneScore, SuggestConfig
from napari_unet.io.plane_lists import plane_label, plane_names
from napari_unet.threads import gui_cpu_threads

_KINDS = {"labels": Labels, "image": Image}
STOP_WAIT_S = 20.0  # closing the widget waits this long for a segmentation to stop
AUTO_MIN_SIZE = "auto"
NO_MODEL = "no model trained yet in this session (use 3 Train, or choose a model file)"
POST = (
    "watershed",
    "watershed_min_distance",
    "min_size",
    "fill_holes",
    "core_ratio",
    "join_wide",
    "neck_depth",
)
# the control of each instance method's own parameter, shown for models that use that method
METHOD_PARAMETERS = {"relative-cores": ("core_ratio", "join_wide"), "necks": ("neck_depth",)}
NOTHING_TO_RANK = "a single 2D image has one plane: there is nothing to rank"
RANK_HINT = (
    "Planes not annotated yet, least sure first. Click one to go there, correct its "
    "segmentation and press Use plane as annotation."
)


@dataclass(frozen=True)
class Job:
    """What the worker now running does: segment (a scope), rank or relabel, for which image
    and model.

    The widget keeps the last segmentation's job to run it again when 3 Train gives a new model.
    """

    kind: str  # "segment", "rank" or "relabel"
    scope: str  # the planes segmented ("current plane" or "whole stack"); "" otherwise
    image: str
    model: object | None  # the session entry used (None: a model file)
    after_training: bool = False  # started because 3 Train gave a new model


class _Progress(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    changed = Signal(int, int)


class SegmentWidget(DockWidget):
    """Segment an image layer; results are layers "<image> segmentation" (and probability,
    uncertainty) aligned with the image. Then the human-in-the-loop round (module docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self.last_result: tuple | None = None
        self._job: Job | None = None  # what the worker now running does
        self.ranking: list[PlaneScore] = []  # the last ranking shown, least sure first
        self._ranked_image: str | None = None  # the image that ranking belongs to
        self._last_run: Job | None = None  # the last segmentation that gave layers
        self._rank_pending = False  # rank when the running segmentation ends
        self._rerun_pending: Job | None = None  # segment again when the running work ends
        self._cancel = threading.Event()
        self._progress = _Progress(self)
        self._progress.changed.connect(self._on_progress)
        self.source, self.scope, self.probability, self.uncertainty = config_form(SegmentRequest)
        self.model_path = FileEdit(label="model file", mode="r", filter="*.safetensors")
        self.model_path.tooltip = "the model file to segment with (.safetensors, no code is run)"
        self.model_info = Label(label="", tooltip="which model will be used")
        _common.wrap(self.model_info.native)
        self.image_combo = layer_picker(
            viewer, Image, "image", "the image layer to segment (numpy or dask, any planes)"
        )
        devices = available_devices()  # the first is the default
        device = {"choices": devices, "value": devices[0]}
        self.tta, self.device = config_form(PredictConfig, ("tta", "device"), device=device)
        self.instances = field_widget(SegmentConfig, "instances")
        auto = {"value": -1, "min": -1, "special": AUTO_MIN_SIZE}
        self.post = post = config_form(PostprocessConfig, POST, min_size=auto)
        self.watershed, self.seed_distance, self.min_size, self.fill_holes = post[:4]
        self.core_ratio, self.join_wide, self.neck_depth = post[4:]
        live = (*post, self.instances)  # re-label the kept planes when they change
        self.derived = Label(label="", tooltip="the settings derived from the annotations")
        _common.wrap(self.derived.native)
        self.derived.native.setStyleSheet(_common.HINT_STYLE)
        self.cache = OutputCache()
        self._model_shown = None  # the model whose recorded settings the form shows
        fields = [self.tta, self.device, self.instances, self.watershed, self.seed_distance]
        self.settings = Remembered("segment", [*fields, self.min_size])
        top = [self.source, self.model_path, self.model_info, self.image_combo, self.scope]
        rest = [self.min_size, self.fill_holes, self.core_ratio, self.join_wide, self.neck_depth]
        rest.append(self.derived)
        rest += [self.probability, self.uncertainty]
        self.form = Container(widgets=[*top, *fields, *rest])
        _common.add_buttons(
            self, run_button=("Segment", self.run), cancel_button=("Cancel", self.cancel)
        )
        self.progress, self.status = QProgressBar(self), QLabel("", self)
        _common.wrap(self.status)
        self.resegment = QCheckBox("segment again when training ends", self)
        self.resegment.setChecked(True)
        _common.add_buttons(
            self,
            use_plane_button=("Use plane as annotation", self.use_plane_as_annotation),
            rank_button=("Rank planes", self.rank_planes),
        )
        self.rank_after = QCheckBox("rank after a whole-stack run", self)
        self.rank_after.setChecked(True)
        self.next_list = QListWidget(self)
        self.next_list.setMaximumHeight(140)
        self.next_hint = _common.hint("")
        _common.set_tooltips(self, _common.TIPS["segment"])
        _common.column(
            self.body,
            self.form,
            self.resegment,
            self.settings.button,
            (self.run_button, self.cancel_button),
            self.progress,
            self.status,
            self.use_plane_button,
            "Probability and uncertainty maps are computed for the current plane. A whole "
            "stack is read one plane at a time. Correct a plane of the segmentation with "
            "napari's label tools, then Use plane as annotation.",
            _common.group(
                "Annotate next",
                self,
                (self.rank_after, self.rank_button),
                self.next_list,
                self.next_hint,
            ),
        )
        self.image_combo.changed.connect(lambda i: i is self.cache.image or self.cache.drop())
        self.source.changed.connect(self._update_info)
        self.model_path.changed.connect(self._on_model_path)
        self.scope.changed.connect(self._on_scope)
        self._relabel_timer = QTimer(self, singleShot=True, interval=150)
        self._relabel_timer.timeout.connect(self._relabel)
        for widget in live:
            widget.changed.connect(lambda *_: self._relabel_timer.start())
            widget.tooltip = f"{widget.tooltip}; {CACHE_TIP}"
            widget.native.setToolTip(widget.tooltip)
        self.next_list.itemClicked.connect(self._on_next_clicked)
        self.image_combo.changed.connect(self._update_rank_state)
        self.follow(_session.changed, self._update_info, self._on_session_changed)
        self._update_info()
        self._on_scope(self.scope.value)
        self.set_running(False)

    def stop_workers(self) -> None:
        """The widget is closing: cancel a segmentation and wait until its thread returns."""
        self._drop_pending()
        super().stop_workers()

    # ------------------------------------------------------------------ choices
    def _on_model_path(self, *_args) -> None:
        """A model file chosen (typed or browsed): use it."""
        if self.model_file():
            self.source.value = SOURCES[1]
        self._update_info()

    def model_file(self) -> str:
        """The model file typed or chosen ("" when none)."""
        return self.model_path.line_edit.value.strip()

    @unless_deleted
    def _update_info(self, *_args) -> None:
        from_file = not self._uses_trained_model()
        self.model_path.visible = from_file
        metadata = model = None
        if not from_file:
            entry = _session.trained()
            metadata, model = (entry.metadata, id(entry.model)) if entry else (None, None)
            info = entry.description if entry else NO_MODEL
        else:
            path = self.model_file()
            info = path or "choose a model file"
            try:
                metadata, model = ModelSource(path=path).read_metadata() if path else None, path
            except Exception:  # noqa: BLE001 - a bad path is reported when Segment is pressed
                metadata = None
        _common.show_long(self.model_info, info, "which model will be used")
        recorded = getattr(metadata, "postprocess", None) or {}
        post = postprocess_config(recorded)
        self.min_size.native.setSpecialValueText(
            f"auto: {post.min_size} px" if metadata else AUTO_MIN_SIZE
        )
        self.derived.value = describe(recorded) if metadata else ""
        self.derived.visible = metadata is not None
        if model != self._model_shown:  # another model: start from what it records
            self._model_shown = model
            self.cache.drop()
            for name in ("fill_holes", "core_ratio", "join_wide", "neck_depth"):
                self.post[name].value = getattr(post, name) or 0
        for method, names in METHOD_PARAMETERS.items():
            for name in names:
                control = getattr(self, name)
                control.enabled = control.visible = post.method == method

    def _on_scope(self, scope: str) -> None:
        self.probability.enabled = self.uncertainty.enabled = scope == SCOPES[0]

    def _uses_trained_model(self) -> bool:
        """Whether the model chosen is the session's model just trained (not a model file)."""
        return self.source.value == SOURCES[0]

    def model_source(self) -> ModelSource:
        """The chosen model (not yet loaded)."""
        if self._uses_trained_model():
            entry = _session.trained()
            if entry is None:
                raise InputError(NO_MODEL)
            return ModelSource(model=entry.model, metadata=entry.metadata)
        path = self.model_file()
        if not path:
            raise InputError("choose a model file")
        return ModelSource(path=path)

    def segment_config(self, metadata=None, image: Image | None = None) -> SegmentConfig:
        """Prediction and post-processing settings shown in the widget ("auto" ones from the
        model's ``metadata``), with the channel axis of ``image``."""
        chosen = {w.name: w.value for w in self.post if w.name != "min_size" or w.value >= 0}
        post = replace(postprocess_config(getattr(metadata, "postprocess", None) or {}), **chosen)
        predict = PredictConfig(tta=self.tta.value, device=self.device.value)
        axis = None if image is None else _common.channel_axis(image)
        return SegmentConfig(predict, post, self.instances.value, axis)

    # ------------------------------------------------------------------ run
    def run(self, scope: str | None = None, image: Image | None = None):
        """Start segmenting ("current plane" or "whole stack"); errors become notifications.

        ``image``: the image layer to segment (default: the one chosen in the widget).
        """
        return self._guarded_start(
            lambda: self._start(scope or self.scope.value, image), quiet=False
        )

    def _guarded_start(self, start, quiet: bool):
        """Call ``start()``; errors become a notification (``quiet``: user errors the status)."""
        try:
            return start()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            if quiet and isinstance(exc, InputError):
                self.status.setText(
                    f"{self.status.text()} (not ranked: {_common.error_message(exc)})"
                )
            else:
                _common.report_error(exc)
                self.status.setText(f"not started: {_common.error_message(exc)}")
            return None

    def _start(self, scope: str, image: Image | None = None, after_training: bool = False):
        if self.worker is not None:
            raise InputError("a segmentation is already running")
        image = image or self.image_combo.value
        if image is None:
            raise InputError("choose an image layer to segment")
        source = self.model_source()
        config = self.segment_config(source.read_metadata(), image)
        device = self.device.value
        data, axis = _common.layer_data(image), config.channel_axis
        job = Job("segment", scope, image.name, self._session_entry(source), after_training)
        keep, planes = self.cache.collector()
        model = source.path or id(source.model)
        self._kept = (image, model, source.read_metadata(), live_key(config), planes)
        if scope == SCOPES[0]:
            index = self._plane_index(image, source, axis)
            extra = (self.probability.value, self.uncertainty.value)
            args = (source, device, data, index, axis, config, *extra)
            return self._launch(segment_current, args, device, image, job, False, keep)
        args = (source, device, data, config, self._progress.changed.emit)
        return self._launch(segment_whole, args, device, image, job, True, keep)

    @staticmethod
    def _session_entry(source: ModelSource):
        entry = _session.trained()
        return entry if entry is not None and source.model is entry.model else None

    def _launch(self, func, args, device, image: Image, job: Job, counted: bool, keep=None):
        """Run ``func(*args, cancelled, threads)`` in a worker; the result goes to _on_result.

        ``keep(index, probabilities)``: gets the network output of each plane (``on_plane``).
        """
        self._cancel.clear()
        resolved = available_devices()[0] if device == "auto" else device
        threads = gui_cpu_threads() if resolved == "cpu" else None
        worker = create_worker(
            func,
            *args,
            self._cancel.is_set,
            threads,
            _start_thread=False,
            **({"on_plane": keep} if keep else {}),
        )
        self.progress.setRange(0, 1 if counted else 0)  # 0, 0: busy until progress comes
        self.progress.setValue(0)
        worker.returned.connect(lambda result: self._on_result(image, result))
        worker.errored.connect(_common.report_error)
        self._job = job
        self._started = time.perf_counter()
        what = {"rank": "ranking the planes", "relabel": "re-labelling"}.get(job.kind)
        self.status.setText(f"{what or f'segmenting ({job.scope})'} ...")
        stop = stopper(worker, self._cancel.set, "the segmentation", STOP_WAIT_S)
        return self.start_worker(worker, stop)

    def _plane_index(self, image: Image, source: ModelSource, axis: int | None) -> tuple:
        if source.model is not None:  # a model in memory checks the channels now
            lead, _ = plane_layout(tuple(_common.layer_data(image).shape), source.model, axis)
        else:
            lead = _common.spatial_shape(image, axis)[:-2]
        position = list(image.world_to_data(self.viewer.dims.point))
        if axis is not None and not image.rgb:
            del position[axis]
        return tuple(int(np.clip(round(position[i]), 0, lead[i] - 1)) for i in range(len(lead)))

    def cancel(self) -> None:
        """Stop after the current tile (ranking: the current plane); no layer is changed."""
        if self.worker is not None:
            self._cancel.set()
            self._drop_pending()
            self.status.setText("cancelling ...")

    # ------------------------------------------------------------------ results
    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        what = "ranking: " if self._job is not None and self._job.kind == "rank" else ""
        self.status.setText(f"{what}plane {done}/{total}")

    def _on_result(self, image: Image, result: tuple) -> None:
        job = self._job
        if job is not None and job.kind == "rank":
            self._on_ranked(image, result)
            return
        kind = result[0]
        if kind in ("stack", "plane"):
            image_, model, metadata, config, planes = self._kept
            self.cache.store((id(image_), model), image_, metadata, config, planes, kind == "stack")
        if kind == "relabelled":
            self._show_relabelled(image, result[1])
            return
        self.last_result = result
        took = time.perf_counter() - self._started
        if kind == "error":
            _common.report_error(result[1])
            self.status.setText(f"failed: {_common.error_message(result[1])}")
        elif kind == "cancelled":
            self.status.setText("cancelled; no layer was changed")
        elif kind == "stack":
            layer = self._put(image, "segmentation", result[1], "labels")
            layer.metadata[_common.META_INSTANCES] = self.instances.value
            self.status.setText(
                f"done: {int(np.asarray(result[1]).shape[0])} planes in {took:.1f} s"
            )
            self._after_segmentation(job, image, whole=True)
        else:
            _, index, labels, prob, unc = result
            layer = self._put_plane(image, "segmentation", index, labels, "labels", np.uint32)
            layer.metadata[_common.META_INSTANCES] = self.instances.value
            if prob is not None:
                self._put_plane(image, "probability", index, prob, "image", np.float32)
            if unc is not None:
                self._put_plane(image, "uncertainty", index, unc, "image", np.float32)
            self.status.setText(f"done: {plane_label(index)} in {took:.1f} s")
            self._after_segmentation(job, image, whole=False)

    def result_layer(self, image: Image, what: str = "segmentation"):
        """The layer "<image> <what>", or None."""
        name = f"{image.name} {what}"
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _put(self, image: Image, what: str, data, kind: str):
        """Write ``data`` into the layer "<image> <what>" (made anew if it does not fit)."""
        name = f"{image.name} {what}"
        layer = _common.reusable_layer(self.viewer, name, _KINDS[kind], data.shape)
        if layer is not None:
            layer.data = data
            return layer
        where = _common.spatial_transform(image)
        if kind == "labels":
            return self.viewer.add_labels(data, name=name, **where)
        cmap = "viridis" if what == "probability" else "inferno"
        look = {"colormap": cmap, "blending": "additive", "opacity": 0.7, "contrast_limits": (0, 1)}
        return self.viewer.add_image(data, name=name, **look, **where)

    def _put_plane(self, image: Image, what: str, index, plane, kind: str, dtype):
        shape = _common.spatial_shape(image)
        layer = self.result_layer(image, what)
        if not isinstance(layer, _KINDS[kind]) or tuple(layer.data.shape) != shape:
            layer = self._put(image, what, np.zeros(shape, dtype), kind)
        layer.data[tuple(index)] = plane
        layer.refresh()
        return layer

    def worker_finished(self) -> None:
        """The worker's thread is done: go on with the round, if something is pending."""
        self._job = None
        super().worker_finished()
        self._continue_round()
        self._relabel()  # settings changed while it ran

    # ------------------------------------------------------------------ live settings
    def _relabel(self, *_args):
        """Label the kept planes anew if an instance setting changed (no network; a worker)."""
        cache = self.cache
        if self.worker is not None or not cache.planes or self._shut_down:
            return None  # a run is going on: it checks again when it ends
        config = self.segment_config(cache.metadata)
        if live_key(config) == cache.config:
            return None
        layer = self.result_layer(cache.image)
        if cache.image not in self.viewer.layers or not isinstance(layer, Labels):
            cache.drop()
            return None
        self._relabelled = live_key(config)
        args = (dict(cache.planes), cache.metadata, config, cache.stack)
        job = Job("relabel", "", cache.image.name, None)
        return self._launch(relabel, args, "cpu", cache.image, job, counted=False)

    def _show_relabelled(self, image: Image, planes: dict) -> None:
        layer = self.result_layer(image)
        if not isinstance(layer, Labels):
            return
        for index, labels in planes.items():
            layer.data[index] = labels
        layer.metadata[_common.META_INSTANCES] = self._relabelled[1]
        layer.refresh()
        self.cache.config = self._relabelled
        took = time.perf_counter() - self._started
        self.status.setText(
            f"re-labelled {len(planes)} plane(s) in {took:.2f} s (the network was not run)"
        )

    def set_running(self, running: bool) -> None:
        """Enable the buttons that make sense now."""
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self._update_rank_state()
        if not running:
            self.progress.setRange(0, 1)

    def _drop_pending(self) -> None:
        """Forget the ranking or re-run planned for when the running work ends."""
        self._rank_pending = False
        self._rerun_pending = None

    # ------------------------------------------------------------------ annotate next
    def _rankable(self, image: Image | None = None) -> bool:
        """Whether ``image`` (default: the chosen one) has more than one plane to rank."""
        image = image or self.image_combo.value
        return image is not None and int(np.prod(_common.spatial_shape(image)[:-2])) > 1

    def _update_rank_state(self, *_args) -> None:
        """Grey out ranking for a single plane (or while the worker runs); set the hint."""
        image = self.image_combo.value
        single = image is not None and not self._rankable(image)
        self.rank_after.setEnabled(not single)
        self.next_list.setEnabled(not single)
        self.rank_button.setEnabled(not single and image is not None and self.worker is None)
        self.next_hint.setText(NOTHING_TO_RANK if single else RANK_HINT)

    def rank_planes(self, auto: bool = False):
        """Rank the chosen image's planes not annotated yet, least sure first, in a worker.

        The result fills :attr:`next_list` and the "<image> uncertainty" layer. Errors become
        notifications; with ``auto`` (after a whole-stack run) a plain reason such as "every
        plane is annotated" only goes to the status line.
        """
        return self._guarded_start(self._start_ranking, quiet=auto)

    def _start_ranking(self):
        """Check the chosen image and start ranking its planes not annotated yet."""
        if self.worker is not None:
            raise InputError("wait until the segmentation ends (or Cancel it)")
        image = self.image_combo.value
        if image is None:
            raise InputError("choose an image layer to rank")
        if not self._rankable(image):
            raise InputError(NOTHING_TO_RANK)
        source = self.model_source()
        config = self.segment_config(source.read_metadata(), image)
        target = self.annotation_layer(image)
        exclude = set(annotate.training_plane_list(target)) if target is not None else set()
        lead = _common.spatial_shape(image)[:-2]
        if all(index in exclude for index in np.ndindex(*lead)):
            raise InputError(f"every plane of '{image.name}' is annotated: nothing left to rank")
        device = self.device.value
        args = (source, device, _common.layer_data(image), SuggestConfig(segment=config))
        args += (sorted(exclude), self._progress.changed.emit)
        job = Job("rank", "", image.name, self._session_entry(source))
        return self._launch(rank_whole, args, device, image, job, counted=True)

    def _on_ranked(self, image: Image, result: tuple) -> None:
        """A ranking returned: show it, or say why not (the list is then unchanged)."""
        kind = result[0]
        if kind == "ranked":
            self._show_ranking(image, result[1], result[2])
        elif kind == "cancelled":
            self.status.setText("ranking cancelled; the list was not changed")
        elif kind == "error":
            _common.report_error(result[1])
            self.status.setText(f"ranking failed: {_common.error_message(result[1])}")

    def _show_ranking(self, image: Image, scores: list[PlaneScore], maps: np.ndarray) -> None:
        """Keep the ranking, fill "<image> uncertainty" and the list; the selection stays."""
        self.ranking = list(scores)
        self._ranked_image = image.name
        with _common.keeping_selection(self.viewer):  # e.g. the segmentation being corrected
            layer = self._put(image, "uncertainty", maps, "image")
        layer.contrast_limits = (0.0, max(float(maps.max()), 1e-3))
        self._fill_next_list()
        took = time.perf_counter() - self._started
        first = plane_names([scores[0].index]) if scores else "-"
        self.status.setText(
            f"ranked {len(scores)} planes in {took:.1f} s; least sure: plane {first}"
        )

    def _fill_next_list(self) -> None:
        """One row per plane of :attr:`ranking`: plane, score, objects found."""
        rows = []
        for e in self.ranking:
            objects = f"{e.objects} object{'' if e.objects == 1 else 's'}"
            rows.append((f"plane {plane_names([e.index])}   {e.score:.3f}   ({objects})", e.index))
        _common.fill_plane_list(self.next_list, rows)

    def _on_next_clicked(self, item) -> None:
        """Go to the plane of the row clicked."""
        index = _common.clicked_plane(item)
        for what in ("uncertainty", "segmentation"):
            name = f"{self._ranked_image} {what}"
            if name in self.viewer.layers:
                _common.go_to_plane(self.viewer, self.viewer.layers[name], index)
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
        image = image or self.image_combo.value
        if image is None:
            return None
        mine = _common.annotation_layers(self.viewer, image)
        active = self.viewer.layers.selection.active
        if active in mine:
            return active
        return mine[-1] if mine else None

    def use_plane_as_annotation(self) -> tuple[int, ...]:
        """Copy the plane on screen of "<image> segmentation" into the image's annotations.

        The (corrected) plane replaces that plane of the annotation layer, in the layer's schema
        (:func:`~napari_unet.annotation.schema.plane_as_annotation`); other planes are never
        touched. The write goes through ``Labels.data_setitem``, so one Ctrl+Z on the layer
        undoes it. An empty plane is marked as annotated in the layer's metadata; without an
        annotation layer one is created (instances). Returns the plane index.
        """
        image = self.image_combo.value
        if image is None:
            raise InputError("choose the image whose segmentation you corrected")
        result = self.result_layer(image)
        if not isinstance(result, Labels):
            raise InputError(
                f"segment '{image.name}' first: there is no labels layer '{image.name} "
                "segmentation' to copy from"
            )
        target = self.annotation_layer(image)
        expected = tuple(target.data.shape) if target is not None else _common.spatial_shape(image)
        if tuple(result.data.shape) != expected:
            where = f"the annotation layer '{target.name}'" if target else f"'{image.name}'"
            raise InputError(
                f"'{result.name}' has planes of shape {tuple(result.data.shape)} but {where} "
                f"has shape {expected}: segment '{image.name}' again, then copy the plane"
            )
        index = _common.current_plane(self.viewer, result, result.ndim - 2)
        name = plane_names([index])
        instances = bool(result.metadata.get(_common.META_INSTANCES, True))
        plane = np.asarray(_common.layer_data(result)[index])
        new, objects = plane_as_annotation(plane, annotate.layer_mode(target), instances, name)
        notes = []
        if target is None:
            target = annotate.add_annotation_layer(self.viewer, image)
            notes.append(f"created the annotation layer '{target.name}'")
        new = as_annotations({index: new}, target.data.dtype, "instances")[index]
        old = np.asarray(target.data[index])
        if old.any() and not np.array_equal(old, new):
            notes.append("it replaced the annotations that plane held")
        changed = np.nonzero(old != new)
        if changed[0].size:
            where = tuple(np.full(changed[0].size, i, np.intp) for i in index) + changed
            # napari 0.9 gives a hidden labels layer an empty slice, and data_setitem's display
            # update then fails: show the layer for the write (users hide it to correct)
            hidden, target.visible = not target.visible, True
            try:
                target.data_setitem(where, new[changed])
            finally:
                target.visible = not hidden
        if not new.any():  # an empty plane is annotated only when marked
            annotate.mark_planes(target, [index])
            target.events.paint(value=[])  # the Annotate widget refreshes its plane list
        self._drop_from_ranking(image, index)
        done = f"plane {name} of '{result.name}' is now an annotated plane of '{target.name}'"
        notes.insert(0, f"{done} ({objects} object{'' if objects == 1 else 's'})")
        show_info("; ".join([*notes, "to undo: select the annotation layer and press Ctrl+Z"]))
        self.status.setText(notes[0])
        return index

    # ------------------------------------------------------------------ after training
    @unless_deleted
    def _on_session_changed(self, *_args) -> None:
        """3 Train finished a model: segment the last plane or stack again with it."""
        entry = _session.trained()
        if entry is None or self._shut_down:
            return
        wanted = self.resegment.isChecked() and self._uses_trained_model()
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

    def _segment_again(self, last: Job) -> None:
        """Run ``last`` again with the model now chosen (its image may be gone)."""
        if last.image not in self.viewer.layers:
            return
        image = self.viewer.layers[last.image]
        self._guarded_start(lambda: self._start(last.scope, image, after_training=True), False)

    # ------------------------------------------------------------------ after a run
    def _after_segmentation(self, job: Job | None, image: Image, whole: bool) -> None:
        """Remember the run (to repeat it after training) and decide whether to rank next.

        ``whole``: the run segmented the whole stack (else the current plane).
        """
        if job is None:
            return
        self._last_run = job
        ranked_before = bool(self.ranking) and self._ranked_image == image.name
        self._rank_pending = (
            self.rank_after.isChecked()
            and self._rankable(image)
            and (whole or (job.after_training and ranked_before))
        )

    def _continue_round(self) -> None:
        """The worker has finished: segment again (a new model came) or rank, if pending."""
        rerun, self._rerun_pending = self._rerun_pending, None
        rank, self._rank_pending = self._rank_pending, False
        if self._shut_down:
            return
        if rerun is not None:
            self._segment_again(rerun)
        elif rank:
            self.rank_planes(auto=True)

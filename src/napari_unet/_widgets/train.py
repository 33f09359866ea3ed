"""3 Train: train a U-Net on the annotated planes in a worker thread, with live plot and preview.

The fields are magicgui widgets from the config dataclasses' field metadata; buttons, progress
bar and live plot are Qt.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import suppress
from functools import partial
from pathlib import Path

import napari
from magicgui.types import Separator
from magicgui.widgets import FileEdit, Label
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QLabel, QProgressBar, QWidget
from superqt import QCollapsible

from napari_unet._widgets import _common, _forms, _session
from napari_unet._widgets._dock import DockWidget, stopper, unless_deleted
from napari_unet._widgets._plot import LivePlot
from napari_unet._widgets._preview import LivePreview
from napari_unet._widgets.annotate import layer_mode, training_plane_list
from napari_unet.annotation.schema import AnnotationConfig
from napari_unet.annotation.weightmap import WeightMapConfig
from napari_unet.defaults import default_steps
from napari_unet.devices import available_devices
from napari_unet.errors import AnnotationError, InputError
from napari_unet.io.modelfile import save_model
from napari_unet.io.plane_lists import parse_plane_list, plane_names
from napari_unet.io.planes import read_plane
from napari_unet.model import PRESETS, UNetConfig
from napari_unet.threads import gui_cpu_threads
from napari_unet.training import recipe
from napari_unet.training.augment import AugmentConfig, preview_row
from napari_unet.training.job import TrainJob, is_warm, run_job, warm_up
from napari_unet.training.trainer import TrainConfig, TrainEvent

TRAIN_FIELDS = ("device", "steps", "minutes")
MORE_FIELDS = ("optimizer", "batch_size")
ARCH_FIELDS = ("width", "depth", "padding")
STOP_WAIT_S = 20.0  # closing the widget waits this long for a run to stop (one step + checkpoint)
MODEL_CHOICES = recipe.MODEL_CHOICES
STARTING, CUSTOM, CONTINUE, FINE_TUNE = (MODEL_CHOICES[i] for i in (0, 3, 4, 5))
NO_SESSION_MODEL = (
    "no model trained yet in this session: train one first (a 'new: ...' model), then continue it"
)
ACCURACY_TIP = (
    "how the model segments annotated planes it did not train on (the hold-out), scored as 4 "
    "Segment would segment them: objects matched at IoU > 0.5 (F1, and AP = matched / (matched "
    "+ missed + extra)) and the foreground's IoU"
)
SCHEMA_TIP = (
    "how the annotation values are read (set in 1 Annotate): instances, scribbles or classes; "
    "see docs/annotations.md"
)


class TrainWidget(DockWidget):
    """Train, cancel, resume and save; the result becomes the "model just trained" ("continue:
    model just trained" fine-tunes it further, the plot goes on after the earlier curve).

    The run is a napari worker over :func:`~napari_unet.training.job.run_job`; the GUI thread
    only gets small messages: event batches for the progress bar and the plot and, every few
    seconds, a predicted crop of the plane on screen for "<image> live prediction".
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self._custom = PRESETS["small"]
        self.image_combo = _forms.layer_picker(
            viewer, Image, "image", "the image layer to learn from (chosen with the annotations)"
        )
        # only layers made (or imported) in 1 Annotate: a ground-truth layer opened with the
        # sample data is never trained on without the user saying so
        self.labels_combo = _forms.annotation_picker(
            viewer,
            "the annotation layer made in 1 Annotate; only its annotated planes are used "
            "(import ground truth there to train on it)",
        )
        self.schema = Label(label="schema", tooltip=SCHEMA_TIP)
        choices = [*MODEL_CHOICES[:4], Separator, *MODEL_CHOICES[4:]]
        hold_out = {"placeholder": f"auto ({recipe.AUTO_HOLD_OUT_MIN}+ planes), none, or e.g. 3"}
        self.model_combo, self.hold_out = _forms.config_form(
            recipe.TrainChoices, model={"choices": choices}, hold_out=hold_out
        )
        self.model_path = FileEdit(label="model file", mode="r", filter="*.safetensors")
        self.model_path.tooltip = (
            "the model file (.safetensors) to fine-tune; its architecture, normalisation and "
            "classes are kept"
        )
        devices = available_devices()  # the first is the default
        self.form = _forms.config_form(
            TrainConfig, TRAIN_FIELDS, device={"choices": devices, "value": devices[0]}
        )
        self.partial = _forms.field_widget(AnnotationConfig, "partial")
        self.instance_targets = _forms.field_widget(AnnotationConfig, "instance_targets")
        self.lr = _forms.field_widget(TrainConfig, "lr")
        more = _forms.config_form(TrainConfig, MORE_FIELDS)
        self.augment = _forms.field_widget(AugmentConfig, "strength")
        small = {n: {"value": getattr(PRESETS["small"], n)} for n in ARCH_FIELDS}
        self.advanced = _forms.config_form(UNetConfig, ARCH_FIELDS, **small)
        self.advanced.append(_forms.field_widget(TrainConfig, "tile"))
        self.advanced.extend(_forms.config_form(TrainJob, ("preview_every_s", "cpu_threads")))
        extra = [self.partial, self.instance_targets, self.lr, *more, self.augment]
        self._continuing = False  # see _steps_of
        remembered = [*self.form, *extra, *self.advanced]
        self.settings = _forms.Remembered("train", remembered, skip=self._not_remembered)
        self.form.extend([*extra, self.hold_out])
        for widget in self.form:
            setattr(self, widget.name, widget)
        self.tile, self.preview_every, self.threads = self.advanced[3:6]
        top = (self.image_combo, self.labels_combo, self.schema, self.model_combo, self.model_path)
        for index, widget in enumerate(top):
            self.form.insert(index, widget)
        # the steps each kind of run had last: a new model, or continuing the model just
        # trained (the field shows one; switching kind swaps them, so no typed value is lost)
        self._steps_of = {False: self.steps.value, True: default_steps(True)}
        _common.add_buttons(
            self,
            preview_button=("Preview augmentation", self.preview_augmentation),
            train_button=("Train", self.start_training),
            cancel_button=("Cancel", self.cancel),
            resume_button=("Resume", partial(self.start_training, resume=True)),
            save_button=("Save model...", self._save_clicked),
        )
        self.progress, self.status, self.plot = QProgressBar(self), QLabel("", self), LivePlot(self)
        self.accuracy = QLabel("", self)  # the score on unseen annotated planes after a run
        self.accuracy.setToolTip(ACCURACY_TIP)
        for label in (self.status, self.accuracy):
            _common.wrap(label)
        _common.set_tooltips(self, _common.TIPS["train"])
        advanced = QCollapsible("Advanced", self)
        advanced.setToolTip("network shape of a custom model, tile size, preview and CPU threads")
        advanced.addWidget(self.advanced.native)
        _common.column(
            self.body,
            self.form,
            advanced,
            self.settings.button,
            self.preview_button,
            (self.train_button, self.cancel_button, self.resume_button, self.save_button),
            self.progress,
            self.status,
            self.accuracy,
            self.plot,
            "Training runs in the background. The live prediction layer shows the plane on "
            "screen every few seconds; the plot shows the loss and, with hold-out planes, the "
            "validation IoU.",
        )
        self.labels_combo.changed.connect(self._on_labels_changed)
        self.model_combo.changed.connect(self._on_model_choice)
        self.follow(_session.changed, self._on_session_changed)
        self._on_labels_changed()
        self._on_model_choice(self.model_combo.value)
        self._on_session_changed()
        self._done = True  # no run stopped half-way (see worker_finished)
        self.job: TrainJob | None = None
        self.events: list[TrainEvent] = []
        self.last_checkpoint: Path | None = None
        self.result = None  # (model, metadata) of the last finished or cancelled run
        self._held_how = ""  # how the run's hold-out was chosen, for the accuracy line
        self._seen_before: list[tuple[int, ...]] = []  # planes the continued model trained on
        self._plotted: _session.TrainedModel | None = None  # whose training the plot ends with
        entry = _session.trained()
        if entry is not None and entry.history:  # a Train dock opened anew: the curve stays
            self.plot.show_history(entry.history)
            self._plotted = entry
        self.checkpoint_dir = Path(tempfile.gettempdir()) / "napari-unet"
        self.preview = LivePreview(viewer)
        self._started = time.perf_counter()
        self.speed: float | None = None
        viewer.dims.events.current_step.connect(self._on_dims_changed)
        self.set_running(False)

    def _not_remembered(self) -> set[str]:
        """Steps are remembered for new models only (continuing has its own default)."""
        return {"steps"} if self._continuing else set()

    def _on_labels_changed(self, *_args) -> None:
        layer = self.labels_combo.value
        if layer is None:
            self.schema.value = "(no annotation layer)"
            return
        self.schema.value = layer_mode(layer)
        if layer.metadata.get(_common.META_IMAGE) in self.viewer.layers:
            self.image_combo.value = self.viewer.layers[layer.metadata[_common.META_IMAGE]]

    def _on_model_choice(self, choice: str) -> None:
        self.model_path.visible = choice == FINE_TUNE
        # fine-tuning a model (the session's or a file) gets the short budget, as `train --init`
        continuing = choice in (CONTINUE, FINE_TUNE)
        if continuing != self._continuing:  # default_steps(True) to continue, else (False)
            self._steps_of[self._continuing] = self.steps.value
            self._continuing = continuing
            self.steps.value = self._steps_of[continuing]
        if continuing and _session.trained() is None:
            self.status.setText(f"continue: {NO_SESSION_MODEL}")

    @unless_deleted
    def _on_session_changed(self) -> None:
        """Offer "continue: model just trained" only while the session holds a model."""
        combo = self.model_combo.native
        item = combo.model().item(combo.findText(CONTINUE))
        entry = _session.trained()
        item.setEnabled(entry is not None)
        tip = f"continue training the model just trained ({entry.description})" if entry else ""
        item.setData(tip or NO_SESSION_MODEL, Qt.ItemDataRole.ToolTipRole)
        if entry is None and self.is_continuing():
            self.status.setText(f"continue: {NO_SESSION_MODEL}")

    def is_continuing(self) -> bool:
        """Whether the chosen model is "continue: model just trained"."""
        return self.model_combo.value == CONTINUE

    def model_file(self) -> str:
        """The model file to fine-tune, as typed or chosen ("" when none)."""
        return self.model_path.line_edit.value.strip()

    def set_custom_architecture(self, config: UNetConfig) -> None:
        """Choose "new: custom" with ``config`` (width, depth, padding shown in Advanced)."""
        self._custom = config
        for name in ARCH_FIELDS:
            self.advanced[name].value = getattr(config, name)
        self.model_combo.value = CUSTOM

    def architecture(self) -> UNetConfig | None:
        """The architecture of a new network (None when fine-tuning or continuing a model)."""
        choice = self.model_combo.value
        if choice in (CONTINUE, FINE_TUNE):
            return None
        if choice in MODEL_CHOICES[:2]:
            return PRESETS["small"]
        if choice == MODEL_CHOICES[2]:
            return PRESETS["paper"]
        return self._custom.with_(**{n: self.advanced[n].value for n in ARCH_FIELDS})

    def start(self) -> str:
        """Where a new network starts: ``starting-model`` (the default choice; data it does not
        fit start from scratch and say so) or ``scratch`` (every other new network)."""
        return "starting-model" if self.model_combo.value == STARTING else "scratch"

    def train_config(self) -> TrainConfig:
        """The training settings shown in the widget."""
        tile = _forms.widget_value(self.tile, TrainConfig)
        augment = AugmentConfig(strength=self.augment.value)
        return _forms.read_config(self.form, TrainConfig, tile=tile, augment=augment)

    def cpu_threads(self) -> int | None:
        """PyTorch CPU threads for the run (None on a GPU); auto leaves one core to the viewer."""
        device = self.device.value
        if device == "auto":
            device = available_devices()[0]
        if device != "cpu":
            return None
        return self.threads.value or gui_cpu_threads()

    def _layers(self) -> tuple[Image, Labels]:
        image, labels = self.image_combo.value, self.labels_combo.value
        if image is None or labels is None:
            raise InputError("choose an image and its annotation layer (see 1 Annotate)")
        if _common.spatial_shape(image) != tuple(labels.data.shape):
            raise InputError(
                f"the annotations {tuple(labels.data.shape)} do not match the image "
                f"{tuple(_common.layer_data(image).shape)}; create them in 1 Annotate"
            )
        return image, labels

    def annotation_config(self, labels: Labels) -> AnnotationConfig:
        """Schema and weight-map settings recorded on the annotation layer."""
        weights = WeightMapConfig(**labels.metadata.get(_common.META_WEIGHTMAP, {}))
        return AnnotationConfig(
            mode=layer_mode(labels),
            weight_map=weights,
            partial=self.partial.value,
            instance_targets=self.instance_targets.value,
        )

    # ------------------------------------------------------------------ actions
    def start_training(self, resume: bool = False):
        """Start (or resume) a run in a worker; errors become notifications. Returns the worker."""
        try:
            return self._start(resume)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            _common.report_error(exc)
            if self.worker is None:  # the line under the buttons says the same as the message
                self.status.setText(f"not started: {_common.error_message(exc)}")
                self.progress.setValue(self.progress.minimum())
                self.progress.setFormat("")
            return None

    def continue_training(self, steps: int | None = None):
        """Continue the model just trained: choose "continue: model just trained" and start.

        ``steps``: the run's steps (None: the field's, i.e. ``default_steps(True)`` unless the
        user typed another). Returns the worker, or None when the run did not start (the reason
        is a notification and the status line, e.g. no model trained yet in this session).
        """
        self.model_combo.value = CONTINUE
        if steps is not None:
            self.steps.value = steps
        return self.start_training()

    def stop_workers(self) -> None:
        """The widget is closing: cancel a run and wait until its worker thread has returned."""
        with suppress(Exception):  # already disconnected
            self.viewer.dims.events.current_step.disconnect(self._on_dims_changed)
        super().stop_workers()
        try:
            if not self._done:  # the stopped run's preview is not the model's output
                self.preview.remove()
        except Exception:  # noqa: BLE001 - the viewer may be closing
            _common.log.debug("napari-unet: live preview not removed", exc_info=True)

    def _start(self, resume: bool):
        if self.worker is not None:
            raise InputError("a training run is already in progress")
        if resume:
            if self.job is None or self.last_checkpoint is None:
                raise InputError("nothing to resume: cancel a run first (it saves a checkpoint)")
            job = self.job.resumed(self.last_checkpoint, self.train_config())
        else:
            job = self._new_job()
            self.events.clear()
            self.accuracy.setText("")
            self.last_checkpoint = None  # Resume continues this run, never an older one
        # a continued model's curve goes on from its parent's, if the plot shows that one
        parent_plotted = job.steps_before > 0 and self._plotted is _session.trained()
        self.plot.start(job.config.steps, keep=resume or parent_plotted, offset=job.steps_before)
        if not resume:
            self._plotted = None  # until this run finishes and becomes the model just trained
        self.job = job
        self.preview.layer(self.image_combo.value, self.labels_combo.value)
        self._update_preview_request()
        if not is_warm():  # seconds of imports, once: when asked to train, not when opened
            self.status.setText("loading PyTorch's optimiser (once per session) ...")
            self.status.repaint()
            warm_up()
        worker = create_worker(run_job, job, _start_thread=False)
        worker.yielded.connect(self._on_message)
        worker.errored.connect(_common.report_error)
        self._first_step = None  # this run's first step (a resumed run starts at its checkpoint)
        self._done = False  # the run finished: its last preview is the model's output
        self.progress.setRange(job.steps_before, job.steps_before + job.config.steps)
        self.progress.setValue(job.steps_before)
        self.progress.setFormat(self._step_format())
        self.status.setText("starting ...")
        self._started = time.perf_counter()
        # closing cancels the job; napari may already have aborted the worker (viewer closing):
        # then the generator is never resumed and the thread returns after the current step
        stop = stopper(worker, job.cancel, "the training run", STOP_WAIT_S, lambda: job.ended)
        return self.start_worker(worker, stop)

    def _new_job(self) -> TrainJob:
        image, labels = self._layers()
        n_lead = labels.ndim - 2
        annotated = training_plane_list(labels)
        held = self.held_out_planes(annotated, n_lead)
        planes = [p for p in annotated if p not in held]
        if not annotated:
            raise AnnotationError(
                "no annotated plane: paint at least one object and some "
                "background first (or import labels in 1 Annotate)"
            )
        if not planes:
            raise AnnotationError(
                f"every annotated plane ({plane_names(annotated)}) is held out: leave at least "
                "one for training"
            )
        model_path, steps_before = None, 0
        if self.is_continuing():
            entry = _session.trained()
            if entry is None:
                raise InputError(NO_SESSION_MODEL)
            model_path = entry.model_file(self.checkpoint_dir)  # the parent, named in the file
            steps_before = entry.chain_steps
            self._seen_before = entry.metadata.planes("seen_planes", "train_planes")
        else:
            self._seen_before = []
        if not self.is_continuing() and self.architecture() is None:
            model_path = self.model_file()
            if not model_path:
                raise InputError("choose the model file to fine-tune")
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = "".join(c if c.isalnum() else "_" for c in image.name)[:40]
        training_recipe = recipe.TrainingRecipe(
            annotation=self.annotation_config(labels),
            training=self.train_config(),
            architecture=self.architecture() or PRESETS["small"],
            start=self.start(),
            init=model_path,
            checkpoint=self.checkpoint_dir / f"{safe}-{stamp}.ckpt",
            planes=tuple(planes),
            val_planes=tuple(held),
            channel_axis=_common.channel_axis(image),
        )
        return TrainJob(
            image=_common.layer_data(image),
            labels=labels.data,
            recipe=training_recipe,
            preview_every_s=self.preview_every.value,
            cpu_threads=self.cpu_threads(),
            steps_before=steps_before,
        )

    def held_out_planes(self, annotated: list[tuple[int, ...]], n_lead: int):
        """The planes the next run keeps out of training: those typed ("none": none); else,
        continuing, the model's own hold-out; else one of 4+ annotated planes
        (:func:`~napari_unet.training.recipe.auto_hold_out`). Sets the note the accuracy line
        gives on how they were chosen."""
        text = self.hold_out.value.strip()
        self._held_how = ""
        if text.lower() == "none":
            return []
        if text:
            return parse_plane_list(text, n_lead)
        if self.is_continuing():
            entry = _session.trained()
            kept = entry.metadata.planes("val_planes") if entry is not None else []
            kept = [p for p in kept if p in annotated]
            self._held_how = ", held out as for the model continued" if kept else ""
            return kept
        held = recipe.auto_hold_out(annotated)
        if held:
            self._held_how = f", held out automatically ({len(annotated)} annotated planes)"
        return held

    def cancel(self) -> None:
        """Stop the run after the current step; a checkpoint is written for Resume."""
        if self.job is not None and self.worker is not None:
            self.job.cancel()
            self.status.setText("cancelling (writing a checkpoint) ...")
            self.progress.setFormat("step %v/%m   cancelling ...")

    def save_model(self, path: str | Path) -> Path:
        """Write the last trained (or cancelled) network to a model file."""
        if self.result is None:
            raise InputError("train a model first")
        model, metadata = self.result
        return save_model(path, model, metadata)

    def default_model_path(self) -> Path:
        """Where Save model suggests to write: ``<image layer name>.unet.safetensors`` next to
        the image's file, if it was opened from one, else in the working folder."""
        image = self.image_combo.value
        name = image.name if image is not None else "unet"
        return _common.beside(image, name, ".unet.safetensors")

    def _save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save model", str(self.default_model_path()), "napari-unet models (*.safetensors)"
        )
        if path:
            saved = self.save_model(path)
            self.status.setText(f"saved {saved}")

    def preview_augmentation(self, n: int = 4):
        """Show ``n`` augmented versions of the current annotated plane right of the image (layers
        "augmentation preview" and "... labels"); returns the two layers."""
        image, labels = self._layers()
        plane = _common.current_plane(self.viewer, labels, labels.ndim - 2)
        planes = training_plane_list(labels)
        if not planes:
            raise AnnotationError("no annotated plane to preview: annotate a plane first")
        plane = plane if plane in planes else planes[0]
        raw = read_plane(_common.layer_data(image), plane, _common.channel_axis(image))
        config = AugmentConfig(strength=self.augment.value)
        row = preview_row(raw, labels.data[plane], self.annotation_config(labels), config, n)
        scale, (y, x) = tuple(labels.scale[-2:]), labels.translate[-2:]
        where = {"scale": scale, "translate": (y, x + (labels.data.shape[-1] + 16) * scale[-1])}
        layers = []
        for data, kind, name in zip(row, (Image, Labels), ("", " labels"), strict=True):
            name = f"augmentation preview{name}"
            layer = _common.reusable_layer(self.viewer, name, kind)
            if layer is not None:  # the samples are always one 2D row
                layer.data, layer.scale, layer.translate = data, where["scale"], where["translate"]
            elif kind is Image:
                layer = self.viewer.add_image(data, name=name, colormap="gray", **where)
            else:
                layer = self.viewer.add_labels(data, name=name, opacity=0.4, **where)
            layers.append(layer)
        self.viewer.reset_view()  # the samples lie right of the image: bring both into view
        self.status.setText(
            f"augmentation preview of plane {plane_names([plane])}: {n} samples right of the image "
            "(layers 'augmentation preview'; delete them when done)"
        )
        return tuple(layers)

    # ------------------------------------------------------------------ worker messages
    def _update_preview_request(self) -> None:
        labels = self.labels_combo.value
        if self.job is not None and labels is not None:
            self.job.preview_request = self.preview.request(labels)

    def _on_dims_changed(self, *_args) -> None:
        if self.worker is not None:  # the next live preview follows the plane on screen
            with suppress(RuntimeError):  # the widget was deleted during the run
                self._update_preview_request()

    def _on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "events":
            self._on_events(message[1])
        elif kind == "preview":
            self.preview.show(self.image_combo.value, self.labels_combo.value, *message[1:])
            self._update_preview_request()
        elif kind == "status":
            self.status.setText(message[1])
        elif kind == "finished":
            self._on_finished(*message[1:])
        elif kind == "error":
            _common.report_error(message[1])
            self.status.setText(f"failed: {_common.error_message(message[1])}")
            self.progress.setFormat("step %v/%m   failed")

    def _on_events(self, events: list[TrainEvent]) -> None:
        """A batch of training events: cheap list appends, then one progress/status update."""
        self.events.extend(events)
        last_step = None
        for event in events:
            if event.kind == "step":
                if self._first_step is None:
                    self._first_step = event.step
                self.plot.add_loss(event.step, event.loss)
                last_step = event
            elif event.kind == "validation" and event.metrics:
                self.plot.add_validation(event.step, event.metrics["val_iou"])
            elif event.kind == "checkpoint":
                self.last_checkpoint = Path(event.path)
        if last_step is not None:  # QProgressBar.setValue repaints at once: once per batch
            eta = time.strftime("%M:%S", time.gmtime(last_step.eta_s or 0))
            self.progress.setFormat(self._step_format(f"loss {last_step.loss:.4f}   ETA {eta}"))
            self.progress.setValue(self.job.steps_before + last_step.step)
            self.speed = last_step.tiles_per_s

    def _on_finished(self, kind: str, step: int, path, model, metadata) -> None:
        if model is not None:
            self.result = (model, metadata)
        if kind == "cancelled":
            if path:
                self.last_checkpoint = Path(path)
            saved = ", checkpoint saved" if path else ""
            self.status.setText(f"cancelled at step {step}{saved}")
            self.progress.setFormat(self._step_format("cancelled"))
        else:
            self.last_checkpoint = None  # finished: Resume would retrain an older state
            self._done = True
            seen = {tuple(p) for p in self._seen_before} | set(metadata.planes("train_planes"))
            metadata.provenance["seen_planes"] = [list(p) for p in sorted(seen)]
            text = recipe.accuracy_text(metadata, self.events, self._held_how, self._seen_before)
            self.accuracy.setText(text)
            self.progress.setValue(self.job.steps_before + step)
            self.progress.setFormat(self._step_format("done"))
            self._plotted = _session.set_trained(
                model,
                metadata,
                self._description(step, metadata),
                chain_steps=self.job.steps_before + step,
                stem=Path(self.job.recipe.checkpoint).stem,
                history=self.plot.history(),
            )
            took = time.perf_counter() - self._started
            ran = step - (self._first_step or 1) + 1  # a resumed run did the rest before
            here = f" ({ran} in this run)" if ran != step else ""
            self.status.setText(
                f"done: {step} steps{here} in {took:.0f} s ({self.speed or 0:.1f} "
                "tiles/s); use 4 Segment, Save model or 5 Export"
            )
        self.plot.redraw_if_needed()

    def _step_format(self, note: str = "") -> str:
        """The progress bar's text: steps of the model over all its runs, as the plot's x axis."""
        before = self.job.steps_before if self.job is not None else 0
        where = f" (continued from {before})" if before else ""
        return f"step %v/%m{where}" + (f"   {note}" if note else "")

    def _description(self, step: int, metadata) -> str:
        """How 4 Segment names the model just trained, e.g. "trained on 'cells', 2000 steps"."""
        name = self.image_combo.current_choice
        before = self.job.steps_before
        if not before:
            return f"trained on {name!r}, {step} steps"
        parent = metadata.provenance.get("parent_model") or "the model trained before"
        return f"trained on {name!r}, {before} + {step} steps (continued from {parent})"

    def worker_finished(self) -> None:
        """The run's thread is done: the widget is idle again."""
        super().worker_finished()
        if not self._done:  # a stopped run's preview must not pass for the model's output
            self.preview.remove()

    def set_running(self, running: bool) -> None:
        """Enable the buttons that make sense now."""
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.resume_button.setEnabled(not running and self.last_checkpoint is not None)
        self.save_button.setEnabled(not running and self.result is not None)
        self.preview_button.setEnabled(not running)

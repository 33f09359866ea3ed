"""3 Train: train a U-Net on the annotated planes in a worker thread, with live plot and preview."""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path

import napari
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtWidgets import QFileDialog, QWidget

from napari_unet._widgets import _session
from napari_unet._widgets._common import (
    META_WEIGHTMAP,
    channel_axis,
    current_plane,
    error_message,
    guarded,
    layer_data,
    log,
    parse_planes,
    plane_names,
    report_error,
    reusable_layer,
    spatial_shape,
)
from napari_unet._widgets._dock import wait_until, worker_returned
from napari_unet._widgets._preview import LivePreview
from napari_unet._widgets._train_form import CONTINUE, NO_SESSION_MODEL, TrainForm
from napari_unet._widgets.annotate import layer_mode, training_plane_list
from napari_unet.annotation.schema import AnnotationConfig
from napari_unet.annotation.weightmap import WeightMapConfig
from napari_unet.errors import AnnotationError, InputError
from napari_unet.io.modelfile import save_model
from napari_unet.io.planes import read_plane
from napari_unet.model import PRESETS
from napari_unet.training.augment import AugmentConfig, preview_row
from napari_unet.training.job import TrainJob, run_job, warm_up
from napari_unet.training.recipe import TrainingRecipe
from napari_unet.training.trainer import TrainEvent

STOP_WAIT_S = 20.0  # closing the widget waits this long for a run to stop (one step + checkpoint)


def stop_training(job: TrainJob, worker) -> None:
    """Cancel ``job`` and wait until its worker thread is done (the widget is closing)."""
    job.cancel()
    # napari may already have aborted the worker (viewer closing): then the generator is never
    # resumed and the thread returns after the current step
    if not wait_until(lambda: job.ended or worker_returned(worker), STOP_WAIT_S):
        log.warning("napari-unet: the training run did not stop within %s s", STOP_WAIT_S)


class TrainWidget(TrainForm):
    """Train, cancel, resume and save; the result becomes the "model just trained" ("continue:
    model just trained" fine-tunes it further, the plot goes on after the earlier curve).

    The run is a napari worker over :func:`~napari_unet.training.job.run_job`; the GUI thread
    only gets small messages: event batches for the progress bar and the plot and, every few
    seconds, a predicted crop of the plane on screen for "<image> live prediction".
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        warm_up()
        self.worker = None
        self.job: TrainJob | None = None
        self.events: list[TrainEvent] = []
        self.last_checkpoint: Path | None = None
        self.result = None  # (model, metadata) of the last finished or cancelled run
        self._plotted: _session.TrainedModel | None = None  # whose training the plot ends with
        self.checkpoint_dir = Path(tempfile.gettempdir()) / "napari-unet"
        self.preview = LivePreview(viewer)
        self._started = time.perf_counter()
        self.speed: float | None = None
        viewer.dims.events.current_step.connect(self._on_dims_changed)
        self.preview_button.clicked.connect(guarded(lambda: self.preview_augmentation()))
        self.train_button.clicked.connect(lambda: self.start_training())
        self.cancel_button.clicked.connect(lambda: self.cancel())
        self.resume_button.clicked.connect(lambda: self.start_training(resume=True))
        self.save_button.clicked.connect(guarded(self._save_clicked))
        self._set_running(False)

    def _layers(self) -> tuple[Image, Labels]:
        image, labels = self.image_combo.value, self.labels_combo.value
        if image is None or labels is None:
            raise InputError("choose an image and its annotation layer (see 1 Annotate)")
        if spatial_shape(image) != tuple(labels.data.shape):
            raise InputError(
                f"the annotations {tuple(labels.data.shape)} do not match the image "
                f"{tuple(layer_data(image).shape)}; create them in 1 Annotate"
            )
        return image, labels

    def annotation_config(self, labels: Labels) -> AnnotationConfig:
        """Schema and weight-map settings recorded on the annotation layer."""
        weights = WeightMapConfig(**labels.metadata.get(META_WEIGHTMAP, {}))
        return AnnotationConfig(
            mode=layer_mode(labels), weight_map=weights, partial=self.partial.value
        )

    # ------------------------------------------------------------------ actions
    @property
    def is_running(self) -> bool:
        """Whether a training run is in progress."""
        return self.worker is not None

    def start_training(self, resume: bool = False):
        """Start (or resume) a run in a worker; errors become notifications. Returns the worker."""
        try:
            return self._start(resume)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            report_error(exc)
            if self.worker is None:  # the line under the buttons says the same as the message
                self.status.setText(f"not started: {error_message(exc)}")
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
        try:
            self.viewer.dims.events.current_step.disconnect(self._on_dims_changed)
        except Exception:  # noqa: BLE001 - already disconnected
            pass
        super().stop_workers()

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
        # a continued model's curve goes on from its parent's, if the plot shows that one
        parent_plotted = job.steps_before > 0 and self._plotted is _session.trained()
        self.plot.start(job.config.steps, keep=resume or parent_plotted, offset=job.steps_before)
        if not resume:
            self._plotted = None  # until this run finishes and becomes the model just trained
        self.job = job
        if not resume:
            self.last_checkpoint = None  # Resume continues this run, never an older one
        self.preview.layer(self.image_combo.value, self.labels_combo.value)
        self._update_preview_request()
        self.worker = create_worker(run_job, job, _start_thread=False)
        self.worker.yielded.connect(self._on_message)
        self.worker.errored.connect(report_error)
        self.worker.finished.connect(self._on_worker_finished)
        self.background.set(partial(stop_training, job, self.worker))
        self.progress.setRange(0, job.config.steps)
        self.progress.setFormat("step %v/%m")
        self._set_running(True)
        self.status.setText("starting ...")
        self._started = time.perf_counter()
        self.worker.start()
        return self.worker

    def _new_job(self) -> TrainJob:
        image, labels = self._layers()
        n_lead = labels.ndim - 2
        held = parse_planes(self.hold_out.value, n_lead)
        annotated = training_plane_list(labels)
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
        elif self.architecture() is None:
            model_path = self.model_file()
            if not model_path:
                raise InputError("choose the model file to fine-tune")
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = "".join(c if c.isalnum() else "_" for c in image.name)[:40]
        recipe = TrainingRecipe(
            annotation=self.annotation_config(labels),
            training=self.train_config(),
            architecture=self.architecture() or PRESETS["small"],
            start=self.start(),
            init=model_path,
            checkpoint=self.checkpoint_dir / f"{safe}-{stamp}.ckpt",
            planes=tuple(planes),
            val_planes=tuple(held),
            channel_axis=channel_axis(image),
        )
        return TrainJob(
            image=layer_data(image),
            labels=labels.data,
            recipe=recipe,
            preview_every_s=self.preview_every.value,
            cpu_threads=self.cpu_threads(),
            steps_before=steps_before,
        )

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

    def _save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save model", "unet.safetensors", "napari-unet models (*.safetensors)"
        )
        if path:
            saved = self.save_model(path)
            self.status.setText(f"saved {saved}")

    def preview_augmentation(self, n: int = 4):
        """Show ``n`` augmented versions of the current annotated plane right of the image (layers
        "augmentation preview" and "... labels"); returns the two layers."""
        image, labels = self._layers()
        plane = current_plane(self.viewer, labels, labels.ndim - 2)
        planes = training_plane_list(labels)
        if not planes:
            raise AnnotationError("no annotated plane to preview: annotate a plane first")
        plane = plane if plane in planes else planes[0]
        raw = read_plane(layer_data(image), plane, channel_axis(image))
        config = AugmentConfig(strength=self.augment.value)
        row = preview_row(raw, labels.data[plane], self.annotation_config(labels), config, n)
        scale, (y, x) = tuple(labels.scale[-2:]), labels.translate[-2:]
        where = {"scale": scale, "translate": (y, x + (labels.data.shape[-1] + 16) * scale[-1])}
        layers = []
        for data, kind, name in zip(row, (Image, Labels), ("", " labels"), strict=True):
            name = f"augmentation preview{name}"
            layer = reusable_layer(self.viewer, name, kind)
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
            try:
                self._update_preview_request()
            except RuntimeError:  # the widget was deleted during the run
                pass

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
            report_error(message[1])
            self.status.setText(f"failed: {error_message(message[1])}")
            self.progress.setFormat("step %v/%m   failed")

    def _on_events(self, events: list[TrainEvent]) -> None:
        """A batch of training events: cheap list appends, then one progress/status update."""
        self.events.extend(events)
        last_step = None
        for event in events:
            if event.kind == "step":
                self.plot.add_loss(event.step, event.loss)
                last_step = event
            elif event.kind == "validation" and event.metrics:
                self.plot.add_validation(event.step, event.metrics["val_iou"])
            elif event.kind == "checkpoint":
                self.last_checkpoint = Path(event.path)
        if last_step is not None:  # QProgressBar.setValue repaints at once: once per batch
            eta = time.strftime("%M:%S", time.gmtime(last_step.eta_s or 0))
            self.progress.setFormat(f"step %v/%m   loss {last_step.loss:.4f}   ETA {eta}")
            self.progress.setValue(last_step.step)
            self.speed = last_step.tiles_per_s

    def _on_finished(self, kind: str, step: int, path, model, metadata) -> None:
        if model is not None:
            self.result = (model, metadata)
        if kind == "cancelled":
            if path:
                self.last_checkpoint = Path(path)
            saved = ", checkpoint saved" if path else ""
            self.status.setText(f"cancelled at step {step}{saved}")
            self.progress.setFormat("step %v/%m   cancelled")
        else:
            self.last_checkpoint = None  # finished: Resume would retrain an older state
            self.progress.setValue(step)
            self.progress.setFormat("step %v/%m   done")
            self._plotted = _session.set_trained(
                model,
                metadata,
                self._description(step, metadata),
                chain_steps=self.job.steps_before + step,
                stem=Path(self.job.recipe.checkpoint).stem,
            )
            took = time.perf_counter() - self._started
            self.status.setText(
                f"done: {step} steps in {took:.0f} s ({self.speed or 0:.1f} "
                "tiles/s); use 4 Segment or Save model"
            )
        self.plot.redraw_if_needed()

    def _description(self, step: int, metadata) -> str:
        """How 4 Segment names the model just trained, e.g. "trained on 'cells', 2000 steps"."""
        name = self.image_combo.current_choice
        before = self.job.steps_before
        if not before:
            return f"trained on {name!r}, {step} steps"
        parent = metadata.provenance.get("parent_model") or "the model trained before"
        return f"trained on {name!r}, {before} + {step} steps (continued from {parent})"

    def _on_worker_finished(self) -> None:
        self.worker = None
        self.background.set(None)
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        """Enable the buttons that make sense now."""
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.resume_button.setEnabled(not running and self.last_checkpoint is not None)
        self.save_button.setEnabled(not running and self.result is not None)
        self.preview_button.setEnabled(not running)

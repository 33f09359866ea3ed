"""The training job that the Train widget runs in a worker thread (no Qt in here).

:func:`run_job` is a generator over :meth:`Trainer.run`; it yields plain tuples that the widget
handles on the main thread:

``("status", text)``, ``("events", [TrainEvent, ...])`` (step events batched every 0.1 s),
``("preview", index, box, labels)``,
``("finished", kind, step, checkpoint_path, model, metadata)`` with kind ``done`` or
``cancelled``, and ``("error", exception)``. Nothing is raised out of the generator.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..annotations import (
    AnnotationConfig, Normalization, TrainingPlane, normalize_plane, training_planes,
)
# Imported here, i.e. on the GUI thread when the widget module loads: the trainer's validation
# imports them lazily, and importing scipy/scikit-image extensions inside the worker would hold
# the GIL (and so freeze the viewer) for a few hundred milliseconds.
from .. import metrics as _metrics  # noqa: F401
from ..devices import release_memory
from ..errors import AnnotationError, InputError
from ..model import UNet, UNetConfig
from ..postprocess import semantic_labels
from ..predict import PredictConfig, predict_plane
from ..train import TrainConfig, Trainer
from ._threads import limited_threads

Box = tuple[int, int, int, int]  # y0, y1, x0, x1
_WARM = False


def warm_up() -> None:
    """Do PyTorch's one-time lazy imports now, on the calling (GUI) thread.

    The first optimiser a process creates imports ``torch._dynamo`` (1-2 s of imports). Inside
    the worker that import would hold the GIL in long stretches and freeze the viewer; done once
    when the Train widget opens, it is just part of opening the widget.
    """
    global _WARM
    if not _WARM:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        _WARM = True
PreviewRequest = tuple[tuple[int, ...], Box]


@dataclass
class TrainJob:
    """Everything one run needs; ``prepared`` is filled by the worker and reused by Resume."""

    image: object  # (..., [C,] Y, X) array-like: numpy or dask, read one plane at a time
    labels: object  # (..., Y, X) annotations
    channel_axis: int | None  # image axis holding channels
    planes: list[tuple[int, ...]]
    val_planes: list[tuple[int, ...]]
    annotation: AnnotationConfig
    config: TrainConfig
    checkpoint_path: Path
    architecture: UNetConfig | None = None  # a new network (channels and classes filled in)
    model_path: str | None = None  # fine-tune this model file instead
    resume_from: Path | None = None
    preview_every_s: float = 3.0
    message_every_s: float = 0.1  # step events are sent to the GUI in batches this often
    cpu_threads: int | None = None  # PyTorch CPU threads (None: unchanged)
    preview_request: PreviewRequest | None = None  # set by the main thread
    prepared: tuple[list[TrainingPlane], list[TrainingPlane], int] | None = None
    final_architecture: UNetConfig | None = None
    parent: tuple[str | None, list[str] | None] = (None, None)
    trainer: Trainer | None = field(default=None, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Ask the run to stop; the trainer writes a checkpoint first."""
        self._cancel.set()
        if self.trainer is not None:
            self.trainer.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def resumed(self, checkpoint: Path, config: TrainConfig) -> TrainJob:
        """A new job continuing from ``checkpoint`` with the same data and architecture."""
        return replace(self, resume_from=Path(checkpoint), config=config, trainer=None,
                       architecture=self.final_architecture, _cancel=threading.Event())


def image_plane(image, index: tuple[int, ...], channel_axis: int | None) -> np.ndarray:
    """One raw plane as (C, Y, X) (reads only that plane of a dask/zarr array)."""
    key: list = list(index)
    if channel_axis is not None and channel_axis < len(index):
        key.insert(channel_axis, slice(None))
        return np.asarray(image[tuple(key)])
    plane = np.asarray(image[tuple(key)])
    if channel_axis is None:
        return plane[None]
    return np.moveaxis(plane, channel_axis - len(index), 0)


def gather_planes(job: TrainJob, planes: list[tuple[int, ...]], config: AnnotationConfig):
    """Training planes for ``planes``, reading only those planes of the image and labels."""
    if not planes:
        return [], 2
    images = np.stack([image_plane(job.image, p, job.channel_axis) for p in planes])
    labels = np.stack([np.asarray(job.labels[p]) for p in planes])
    result, classes = training_planes(images, labels, config,
                                      planes=[(i,) for i in range(len(planes))], channel_axis=1)
    for plane, index in zip(result, planes):
        plane.index = index
    return result, classes


def _prepare(job: TrainJob):
    if job.prepared is None:
        train, classes = gather_planes(job, job.planes, job.annotation)
        val = []
        if job.val_planes:
            empty = [p for p in job.val_planes if not np.any(np.asarray(job.labels[p]))]
            if empty:
                raise AnnotationError(f"hold-out plane {empty[0]} has no annotations")
            val, val_classes = gather_planes(job, job.val_planes, job.annotation)
            classes = max(classes, val_classes)
        job.prepared = (train, val, classes)
    return job.prepared


def _model(job: TrainJob, channels: int, classes: int):
    """The network to train, its annotation config (normalisation) and parent information."""
    if job.model_path:
        from ..modelfile import load_model

        model, meta = load_model(job.model_path, device="cpu")
        if classes > model.config.num_classes:
            raise InputError(f"the annotations hold {classes} classes but the model file "
                             f"predicts {model.config.num_classes}")
        norm = Normalization.from_dict(meta.normalization)
        job.parent = (str(job.model_path), list(meta.class_names))
        job.final_architecture = model.config
        return model.train(), replace(job.annotation, normalization=norm)
    arch = job.architecture or UNetConfig()
    torch.manual_seed(job.config.seed)  # reproducible initial weights
    if job.resume_from is None:
        arch = arch.with_(in_channels=channels, num_classes=max(classes, arch.num_classes))
    job.final_architecture = arch
    return UNet(arch), job.annotation


def _preview(job: TrainJob, trainer: Trainer, annotation: AnnotationConfig):
    request = job.preview_request
    if request is None:
        return None
    index, (y0, y1, x0, x1) = request
    plane = image_plane(job.image, index, job.channel_axis)[:, y0:y1, x0:x1]
    normalised = normalize_plane(plane, annotation.normalization)
    device = trainer.device
    probs = predict_plane(trainer.model, normalised, PredictConfig(device=str(device)), device)
    return ("preview", index, (y0, y1, x0, x1), semantic_labels(probs))


def run_job(job: TrainJob):
    """Worker generator: prepare the data, build the trainer, train; see the module docstring."""
    try:
        with limited_threads(job.cpu_threads):
            yield from _run(job)
    except Exception as exc:  # noqa: BLE001 - shown on the main thread, never re-raised
        job.trainer = None
        yield ("error", exc)


def _run(job: TrainJob):
    yield ("status", "preparing the annotated planes ...")
    train, val, classes = _prepare(job)
    if job.cancelled:
        yield ("finished", "cancelled", 0, None, None, None)
        return
    model, annotation = _model(job, train[0].image.shape[0], classes)
    parent, names = job.parent
    trainer = Trainer(model, train, job.config, val_planes=val, annotation=annotation,
                      checkpoint_path=job.checkpoint_path, parent_model=parent, class_names=names)
    if job.resume_from is not None:
        trainer.load_checkpoint(job.resume_from)
    job.trainer = trainer
    if job.cancelled:
        trainer.cancel()
    yield ("status", f"training on {trainer.device}, tiles of {trainer.tile} px")
    last_yield = time.perf_counter()
    last_preview = -math.inf  # the first preview comes right after the first step
    final, pending = None, []
    for event in trainer.run():
        pending.append(event)
        now = time.perf_counter()
        if event.kind != "step" or now - last_yield >= job.message_every_s:
            yield ("events", pending)
            pending, last_yield = [], now
        if event.kind in ("cancelled", "done"):
            final = event
        elif event.kind == "step" and now - last_preview >= job.preview_every_s:
            preview = _preview(job, trainer, annotation)
            last_preview = time.perf_counter()
            if preview is not None:
                yield preview
    if pending:
        yield ("events", pending)
    if final.kind == "done" and (preview := _preview(job, trainer, annotation)) is not None:
        yield preview
    metadata, device = trainer.metadata(), trainer.device
    model = trainer.model.cpu().eval()
    job.trainer = trainer = None
    release_memory(device)
    yield ("finished", final.kind, final.step, final.path, model, metadata)

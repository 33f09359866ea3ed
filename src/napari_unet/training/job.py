"""The training job that the Train widget runs in a worker thread (Qt-free, so it is tested
without a viewer).

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

import torch

# Imported here, i.e. on the GUI thread when the widget module loads: the trainer's validation
# imports them lazily, and importing scipy/scikit-image extensions inside the worker would hold
# the GIL (and so freeze the viewer) for a few hundred milliseconds.
from napari_unet import metrics as _metrics  # noqa: F401
from napari_unet.devices import release_memory
from napari_unet.inference.postprocess import semantic_labels
from napari_unet.inference.predictor import PredictConfig, predict_plane
from napari_unet.io.planes import read_plane
from napari_unet.normalization import normalize_plane
from napari_unet.threads import limited_threads
from napari_unet.training import validation as _validation  # noqa: F401
from napari_unet.training.recipe import TrainingRecipe, prepare_run
from napari_unet.training.trainer import TrainConfig, Trainer

Box = tuple[int, int, int, int]  # y0, y1, x0, x1
_WARM = False


def warm_up() -> None:
    """Do PyTorch's one-time lazy imports now, on the calling (GUI) thread.

    The first optimiser a process creates imports ``torch._dynamo`` (1-2 s of imports). Inside
    the worker that import would hold the GIL in long stretches and freeze the viewer; the Train
    widget does it once, when the first run starts (not when it opens: 2-6 s).
    """
    global _WARM
    if not _WARM:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        _WARM = True


def is_warm() -> bool:
    """Whether :func:`warm_up` has run in this process."""
    return _WARM


PreviewRequest = tuple[tuple[int, ...], Box]


@dataclass
class TrainJob:
    """Everything one run needs: the data and a :class:`TrainingRecipe` (the CLI's recipe).

    Continuing a model (``recipe.init``) is fine-tuning that model file, as on the command line.
    """

    image: object  # (..., [C,] Y, X) array-like: numpy or dask, read one plane at a time
    labels: object  # (..., Y, X) annotations
    recipe: TrainingRecipe
    # field metadata: label, limits and tooltip of the widget form (napari_unet._widgets._forms)
    preview_every_s: float = field(
        default=3.0,
        metadata={
            "label": "live preview every",
            "min": 0.1,
            "max": 3600.0,
            "suffix": " s",
            "tooltip": "seconds between live predictions of the plane on screen (spaced out "
            "further when a preview is slow, so it takes at most a fifth of the run)",
        },
    )
    message_every_s: float = 0.1  # step events are sent to the GUI in batches this often
    cpu_threads: int | None = field(  # PyTorch CPU threads (None: unchanged)
        default=None,
        metadata={
            "label": "CPU threads",
            "min": 0,
            "max": 1024,
            "special": "auto (all cores but one)",
            "tooltip": "PyTorch CPU threads; auto leaves one core to the viewer",
        },
    )
    # steps the parent was trained in this session's chain of continued runs ("continue: model
    # just trained"); 0 for a new model. The run counts its own steps from 0; the widget draws
    # them after the parent's (step + steps_before), and a resumed run keeps the offset.
    steps_before: int = 0
    preview_request: PreviewRequest | None = None  # set by the main thread
    trainer: Trainer | None = field(default=None, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def config(self) -> TrainConfig:
        """The training settings of the run."""
        return self.recipe.training

    def cancel(self) -> None:
        """Ask the run to stop; the trainer writes a checkpoint first."""
        self._cancel.set()
        if self.trainer is not None:
            self.trainer.cancel()

    def wait(self, timeout_s: float) -> bool:
        """Block until :func:`run_job` has returned (or ``timeout_s``); True when it has."""
        return self._ended.wait(timeout_s)

    @property
    def ended(self) -> bool:
        """Whether :func:`run_job` has returned (finished, cancelled, failed or closed)."""
        return self._ended.is_set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def resumed(self, checkpoint: Path, config: TrainConfig) -> TrainJob:
        """A new job continuing from ``checkpoint`` with the same data and planes."""
        recipe = replace(self.recipe, resume=Path(checkpoint), init=None, training=config)
        return replace(
            self, recipe=recipe, trainer=None, _cancel=threading.Event(), _ended=threading.Event()
        )


def _preview(job: TrainJob, trainer: Trainer):
    request = job.preview_request
    if request is None:
        return None
    index, (y0, y1, x0, x1) = request
    plane = read_plane(job.image, index, job.recipe.channel_axis)[:, y0:y1, x0:x1]
    normalised = normalize_plane(plane, trainer.annotation.normalization)
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
    finally:  # also when the worker is aborted (GeneratorExit at a yield)
        job.trainer = None
        job._ended.set()


def _run(job: TrainJob):
    yield ("status", "preparing the annotated planes ...")
    trainer = prepare_run(job.image, job.labels, job.recipe)
    job.trainer = trainer
    if job.cancelled:
        trainer.cancel()
    note = f"; {trainer.start_note}" if trainer.start_note else ""
    yield ("status", f"training on {trainer.device}, tiles of {trainer.tile} px{note}")
    last_yield = time.perf_counter()
    last_preview = -math.inf  # the first preview comes right after the first step
    preview_every = job.preview_every_s
    final, pending = None, []
    for event in trainer.run():
        pending.append(event)
        now = time.perf_counter()
        if event.kind != "step" or now - last_yield >= job.message_every_s:
            yield ("events", pending)
            pending, last_yield = [], now
        if event.kind in ("cancelled", "done"):
            final = event
        elif event.kind == "step" and now - last_preview >= preview_every:
            preview = _preview(job, trainer)
            last_preview = time.perf_counter()
            # a large preview must not eat the run: at most a fifth of the time goes to it
            preview_every = max(job.preview_every_s, 4 * (last_preview - now))
            if preview is not None:
                yield preview
    if pending:
        yield ("events", pending)
    if final.kind == "done" and (preview := _preview(job, trainer)) is not None:
        yield preview
    metadata, device = trainer.metadata(), trainer.device
    model = trainer.model.cpu().eval()
    job.trainer = trainer = None
    release_memory(device)
    yield ("finished", final.kind, final.step, final.path, model, metadata)

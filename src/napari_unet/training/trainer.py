"""Training a U-Net from a few annotated planes, as in the paper.

:class:`Trainer` samples tiles where the annotations are (foreground more often than
background, never on ignored pixels), augments them on the training device, minimises the
weighted softmax cross-entropy, validates on held-out planes, and reports everything as a stream
of :class:`TrainEvent` objects, which the CLI turns into a progress bar and the napari widget into
a progress bar, a live plot and a live preview. ``Trainer.run()`` is a generator: iterate it to
train; :meth:`Trainer.cancel` stops it at the next step, after writing a checkpoint.

Checkpoints (safetensors, no pickle) hold the weights, the optimiser state, the step and every
random-number-generator state, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from napari_unet import __version__
from napari_unet.annotation.schema import AnnotationConfig, TrainingPlane
from napari_unet.defaults import DEFAULT_STEPS, form_field
from napari_unet.devices import is_out_of_memory, release_memory, resolve_device
from napari_unet.errors import InputError, ModelFileError, OutOfMemory
from napari_unet.io.modelfile import ModelMetadata, save_model
from napari_unet.model import UNet, border, check_input_size, input_size_for_output
from napari_unet.training.augment import AugmentConfig, augment_batch
from napari_unet.training.checkpoint import (
    CheckpointState,
    read_checkpoint,
    write_checkpoint,
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the data and the architecture.

    steps : optimiser steps to reach (a resumed run counts the steps already done).
    batch_size : tiles per step.
    tile : input tile edge (None: the smallest valid edge with an output of >= 96 px).
    optimizer : ``adam`` (the released fine-tuning tool) or ``sgd`` (the paper: momentum 0.99).
    lr : learning rate (None: 3e-3 for Adam from scratch or from the starting model, 3e-4 for
        Adam continuing a trained model, 1e-3 SGD;
        3e-3 learned faster than 1e-3 per CPU-minute on PhC-U373, docs/benchmarks.md).
    lr_schedule : ``cosine`` decays the learning rate to 5 % of its start over ``steps`` (steadier
        final models from few, noisy tiles); ``constant`` keeps it.
    background_sampling : how often a tile centred on background is drawn relative to
        foreground (Falk et al.: 0.1); ignored pixels are never tile centres.
    minutes : training time budget in minutes (None: none). The run ends at ``steps`` or when
        the budget is spent, whichever comes first; the learning-rate schedule then follows the
        larger of the two fractions done, so a budgeted run still anneals to its end.
    val_every / checkpoint_every : steps between validations / checkpoints (0 = never; None:
        :func:`validation_interval` / :func:`checkpoint_interval` of ``steps``).
    ema : decay of an exponential moving average of the weights (e.g. 0.99: about the last
        100 steps); the model file, validation and the best-kept weights use the average, which
        ends nearer the same place from every seed than the last step's weights. None: off.
    warmup : fraction of the run over which the learning rate ramps up linearly from near 0
        (0: none).
    clip : largest gradient norm; larger gradients are scaled down to it (None: no clipping).
    keep_best : with validation planes, the model file keeps the weights of the validation with
        the best score (foreground IoU + instance F1) instead of the last ones.
    amp : bf16 autocast and channels_last on CUDA.
    seed : seeds tile sampling, augmentation and dropout. The initial weights come from the model
        passed to :class:`Trainer` (seed torch with ``torch.manual_seed`` before building it for
        fully reproducible runs).
    """

    # field metadata: label, limits and tooltip of the widget form (napari_unet._widgets._forms)
    steps: int = form_field(
        DEFAULT_STEPS,
        "steps",
        "optimiser steps, each on a batch of augmented tiles; training ends here "
        "or when the time budget is spent",
        min=1,
        max=1_000_000,
    )
    batch_size: int = form_field(
        4,
        "batch size",
        "tiles per optimiser step (default 4; the paper: 1 large tile)",
        min=1,
        max=256,
    )
    tile: int | None = form_field(
        None,
        "tile (px)",
        "input tile edge in pixels; auto: the smallest valid size with an output "
        "of at least 96 px (the paper: 572 -> 388)",
        min=0,
        max=4096,
        special="auto",
    )
    optimizer: Literal["adam", "sgd"] = form_field(
        "adam",
        "optimizer",
        "adam (the default, learns fastest from few tiles) or sgd with momentum 0.99 (the paper)",
        choices=["adam", "sgd"],
    )
    lr: float | None = form_field(
        None,
        "learning rate",
        "learning rate; default: 3e-3 for Adam from scratch or from the starting model, "
        "3e-4 when continuing a trained model, 1e-3 for SGD (the paper: SGD with momentum "
        "0.99); it anneals to 5 %",
        min=0.0,
        max=1.0,
        step=1e-4,
        special="default",
    )
    momentum: float = 0.99
    weight_decay: float = 0.0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    background_sampling: float = 0.1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    minutes: float | None = form_field(
        None,
        "time budget",
        "training time budget in minutes (none: train for all steps); the "
        "learning rate anneals over the budget",
        min=0.0,
        max=10_000.0,
        step=1.0,
        special="none",
        suffix=" min",
    )
    ema: float | None = None
    warmup: float = 0.0
    clip: float | None = None
    val_every: int | None = None
    checkpoint_every: int | None = None
    keep_best: bool = True
    seed: int = 0
    device: str = form_field(
        "auto", "device", "where to train: auto picks CUDA, then Apple MPS, then the CPU"
    )
    amp: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise InputError(f"steps must be a positive whole number, got {self.steps}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"learning rate must be positive, got {self.lr}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise InputError(
                f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}"
            )
        if not 0 <= self.background_sampling <= 1:
            raise InputError("background sampling must be between 0 and 1")
        if self.ema is not None and not 0 < self.ema < 1:
            raise InputError(f"ema must be between 0 and 1 (e.g. 0.99), got {self.ema}")
        if not 0 <= self.warmup < 1:
            raise InputError(f"warm-up must be a fraction of the run in [0, 1), got {self.warmup}")
        if self.clip is not None and not self.clip > 0:
            raise InputError(f"the gradient clip must be a positive norm, got {self.clip}")
        if self.minutes is not None and not self.minutes > 0:
            raise InputError(
                f"the time budget must be a positive number of minutes, got {self.minutes}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainEvent:
    """One thing that happened during training."""

    kind: Literal["step", "validation", "checkpoint", "warning", "cancelled", "done"]
    step: int
    steps: int
    loss: float | None = None
    tiles_per_s: float | None = None
    eta_s: float | None = None
    metrics: dict[str, float] | None = None
    path: str | None = None
    message: str | None = None


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, border_px: int = 0
) -> torch.Tensor:
    """The paper's loss: pixel-wise softmax cross-entropy times the weight map, summed and
    divided by the number of annotated (weight > 0) pixels. ``border_px`` crops the input-sized
    targets and weights to a valid network's smaller output."""
    if border_px:
        target = target[:, border_px:-border_px, border_px:-border_px]
        weight = weight[:, border_px:-border_px, border_px:-border_px]
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (ce * weight).sum() / (weight > 0).sum().clamp(min=1)


def validation_interval(steps: int) -> int:
    """Steps between validations when not set: a tenth of the run, at most 50."""
    return max(1, min(50, steps // 10))


def checkpoint_interval(steps: int) -> int:
    """Steps between checkpoints when not set: a tenth of the run, at least 50."""
    return max(50, steps // 10)


def default_tile(model: UNet) -> int:
    """Smallest valid input edge whose output is at least 96 px."""
    return input_size_for_output(model.config, 96)


class Trainer:
    """Trains ``model`` on annotated planes; see the module docstring."""

    def __init__(
        self,
        model: UNet,
        planes: list[TrainingPlane],
        config: TrainConfig | None = None,
        val_planes: list[TrainingPlane] | None = None,
        annotation: AnnotationConfig | None = None,
        checkpoint_path: str | Path | None = None,
        parent_model: str | None = None,
        class_names: list[str] | None = None,
        derived: dict | None = None,
    ) -> None:
        if not planes:
            raise InputError("no training planes given")
        config = config or TrainConfig()
        if config.val_every is None:
            config = replace(config, val_every=validation_interval(config.steps))
        if config.checkpoint_every is None:
            config = replace(config, checkpoint_every=checkpoint_interval(config.steps))
        self.config = config
        self.derived = dict(derived or {})
        self.annotation = annotation or AnnotationConfig()
        self.device = resolve_device(self.config.device)
        channels = {p.image.shape[0] for p in planes + (val_planes or [])}
        if channels != {model.config.in_channels}:
            raise InputError(
                f"the model takes {model.config.in_channels} channel(s) but the images have "
                f"{sorted(channels)}"
            )
        most = max(int(p.target.max()) for p in planes + (val_planes or []))
        if most >= model.config.num_classes:
            raise InputError(
                f"the annotations give {most + 1} classes but the network predicts "
                f"{model.config.num_classes}; build it with num_classes={most + 1} (instances "
                "train background, interior and border band; AnnotationConfig("
                "instance_targets='paper') trains the paper's two classes)"
            )
        self.model = model.to(self.device)
        self.planes = planes
        self.val_planes = val_planes or []
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.parent_model = parent_model
        self.start_note = ""  # where the weights came from (set by recipe.prepare_run)
        schema_names = self.annotation.class_names()
        if schema_names is not None and len(schema_names) != model.config.num_classes:
            schema_names = None
        self.class_names = (
            class_names
            or schema_names
            or (
                ["background", "object"]
                + [f"class {i}" for i in range(2, model.config.num_classes)]
            )[: model.config.num_classes]
        )
        self.tile = self.config.tile or default_tile(model)
        check_input_size(model.config, self.tile)
        self.step = 0
        self.train_seconds = 0.0  # time spent in training steps (checkpointed: budgets resume)
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # score, step, weights
        self.best_step: int | None = None  # the step whose weights the model holds, if not the last
        self.history: list[dict] = []
        self._cancel = False
        torch.manual_seed(self.config.seed)
        self.rng = np.random.default_rng(self.config.seed)
        self.aug_generator = torch.Generator().manual_seed(self.config.seed)
        self.optimizer = self._make_optimizer()
        self.ema = self._copy_weights() if self.config.ema else None
        self._prepare_data()

    # ---------------------------------------------------------------- set-up
    def _copy_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _update_ema(self) -> None:
        """Move the averaged weights towards the current ones (buffers are copied)."""
        assert self.ema is not None
        decay = float(self.config.ema or 0.0)
        # the first steps average over fewer steps, so the start does not linger (warm-up)
        decay = min(decay, (1.0 + self.step) / (10.0 + self.step))
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                average = self.ema[name]
                if value.is_floating_point():
                    average.lerp_(value, 1.0 - decay)
                else:
                    average.copy_(value)

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Hold the averaged weights in the model (no-op without ``ema``)."""
        if self.ema is None:
            yield
            return
        current = self._copy_weights()
        self.model.load_state_dict(self.ema)
        try:
            yield
        finally:
            self.model.load_state_dict(current)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=cfg.lr or 1e-3, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        lr = cfg.lr or (3e-4 if self.parent_model else 3e-3)
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)

    def _set_learning_rate(self) -> None:
        """Learning rate for the coming step (a pure function of the step: resumes exactly)."""
        cfg = self.config
        if cfg.lr_schedule == "constant" and not cfg.warmup:
            return
        progress = min(self.progress(), 1.0)
        factor = 1.0
        if cfg.lr_schedule == "cosine":
            factor = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
        if progress < cfg.warmup:  # linear warm-up over the first part of the run
            factor *= max(progress / cfg.warmup, 1.0 / max(cfg.steps, 1))
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor

    def progress(self) -> float:
        """Fraction of the run done: of the steps, or of the time budget if that is further."""
        done = self.step / max(self.config.steps, 1)
        if self.config.minutes:
            done = max(done, self.train_seconds / (60.0 * self.config.minutes))
        return done

    def _finished(self) -> bool:
        return self.step >= self.config.steps or (
            self.config.minutes is not None and self.train_seconds >= 60.0 * self.config.minutes
        )

    def _prepare_data(self) -> None:
        """Pad every plane once by a tile and keep it on the device; build the tile sampler."""
        pad = self.tile
        self.pad = pad
        images, targets, weights, probs = [], [], [], []
        for p in self.planes:
            img = np.pad(p.image, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
            images.append(torch.from_numpy(np.ascontiguousarray(img)).to(self.device))
            targets.append(torch.from_numpy(np.pad(p.target, pad)).to(self.device))
            weights.append(torch.from_numpy(np.pad(p.weight, pad)).to(self.device))
            sample = np.where(
                p.weight > 0, np.where(p.target > 0, 1.0, self.config.background_sampling), 0.0
            )
            probs.append(sample.ravel())
        self._images, self._targets, self._weights = images, targets, weights
        self._plane_sizes = np.array([len(p) for p in probs])
        cumulative = np.cumsum(np.concatenate(probs))
        if cumulative[-1] <= 0:
            raise InputError("no annotated pixel to sample training tiles from")
        self._cumulative = cumulative

    # ---------------------------------------------------------------- sampling & loss
    def _sample_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        picks = np.searchsorted(
            self._cumulative, self.rng.random(cfg.batch_size) * self._cumulative[-1], side="right"
        )
        starts = np.concatenate([[0], np.cumsum(self._plane_sizes)])
        xs, ts, ws = [], [], []
        half = self.tile // 2
        for pick in picks:
            plane = int(np.searchsorted(starts, pick, side="right") - 1)
            width = self.planes[plane].target.shape[1]
            cy, cx = divmod(int(pick - starts[plane]), width)
            y0, x0 = cy + self.pad - half, cx + self.pad - half
            sl = (slice(y0, y0 + self.tile), slice(x0, x0 + self.tile))
            xs.append(self._images[plane][(slice(None),) + sl])
            ts.append(self._targets[plane][sl])
            ws.append(self._weights[plane][sl])
        image, target, weight = torch.stack(xs), torch.stack(ts), torch.stack(ws)
        return augment_batch(image, target, weight, cfg.augment, self.aug_generator)

    # ---------------------------------------------------------------- main loop
    def cancel(self) -> None:
        """Ask the running loop to stop after the current step (a checkpoint is written)."""
        self._cancel = True

    def run(self) -> Iterator[TrainEvent]:
        """Train until ``config.steps``; yields events (see :class:`TrainEvent`)."""
        cfg = self.config
        use_amp = cfg.amp and self.device.type == "cuda"
        if use_amp:
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        t_start, step_start = time.perf_counter(), self.step
        try:
            while not self._finished():
                if self._cancel:
                    path = self.save_checkpoint() if self.checkpoint_path else None
                    yield TrainEvent(
                        "cancelled", self.step, cfg.steps, path=str(path) if path else None
                    )
                    return
                t_step = time.perf_counter()
                try:
                    value = self._train_step(use_amp)
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    yield self._after_out_of_memory()
                    continue
                self.step += 1
                self.train_seconds += time.perf_counter() - t_step
                elapsed = time.perf_counter() - t_start
                rate = (self.step - step_start) / max(elapsed, 1e-9)
                self.history.append({"step": self.step, "loss": value})
                yield TrainEvent(
                    "step",
                    self.step,
                    cfg.steps,
                    loss=value,
                    tiles_per_s=rate * self.config.batch_size,
                    eta_s=self._eta(rate),
                )
                last = self._finished()
                if self.val_planes and cfg.val_every and (self.step % cfg.val_every == 0 or last):
                    metrics = self.validate()
                    self.history[-1].update(metrics)
                    self._remember_if_best(metrics)
                    yield TrainEvent("validation", self.step, cfg.steps, metrics=metrics)
                if (
                    self.checkpoint_path
                    and cfg.checkpoint_every
                    and self.step % cfg.checkpoint_every == 0
                ):
                    path = self.save_checkpoint()
                    yield TrainEvent("checkpoint", self.step, cfg.steps, path=str(path))
            message = self._restore_best()
            yield TrainEvent(
                "done",
                self.step,
                cfg.steps,
                loss=self.history[-1]["loss"] if self.history else None,
                message=message,
            )
        finally:
            self.model.eval()
            release_memory(self.device)

    def _eta(self, steps_per_s: float) -> float:
        """Seconds left: until ``steps``, or until the time budget is spent if that is sooner."""
        eta = (self.config.steps - self.step) / max(steps_per_s, 1e-9)
        if self.config.minutes:
            eta = min(eta, max(60.0 * self.config.minutes - self.train_seconds, 0.0))
        return eta

    def _remember_if_best(self, metrics: dict[str, float]) -> None:
        """Keep a copy of the weights of the best validation so far (IoU + F1)."""
        if not self.config.keep_best:
            return
        score = metrics["val_iou"] + metrics["val_f1"]
        if self.best is None or score > self.best[0]:
            weights = self.ema if self.ema is not None else self.model.state_dict()
            state = {k: v.detach().cpu().clone() for k, v in weights.items()}
            self.best = (score, self.step, state)

    def _restore_best(self) -> str | None:
        """Load the best validated weights at the end of a run; returns what was done, if any."""
        if self.best is None or self.best[1] == self.step:
            if self.ema is not None:
                self.model.load_state_dict(self.ema)
                return "kept the weights averaged over the last steps (ema)"
            return None
        score, step, state = self.best
        self.model.load_state_dict(state)
        self.best_step = step
        return f"kept the weights of step {step}, the best validation (IoU + F1 = {score:.3f})"

    def _train_step(self, use_amp: bool) -> float:
        """One optimiser step on a freshly sampled, augmented batch; returns the loss."""
        image, target, weight = self._sample_batch()
        self._set_learning_rate()
        if use_amp:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = self.model(image)
        loss = weighted_cross_entropy(logits, target, weight, border(self.model.config))
        if not torch.isfinite(loss):
            raise InputError("training diverged (the loss is not finite); lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        if self.ema is not None:
            self._update_ema()
        return float(loss.detach())

    def _after_out_of_memory(self) -> TrainEvent:
        """Halve the batch after running out of memory (the failed step changed no weight).

        At one tile per step a checkpoint is written and :class:`OutOfMemory` raised.
        """
        self.optimizer.zero_grad(set_to_none=True)
        release_memory(self.device)
        size, kind = self.config.batch_size, self.device.type
        if size <= 1:
            where = ""
            if self.checkpoint_path:
                where = f" (resume with --resume {self.save_checkpoint()})"
            raise OutOfMemory(
                f"out of {kind} memory at step {self.step} even with one {self.tile} px tile per "
                f"step; use a smaller tile or another device{where}"
            )
        self.config = replace(self.config, batch_size=size // 2)
        message = (
            f"out of {kind} memory at step {self.step} with {size} tiles per step; "
            f"continuing with {size // 2}"
        )
        return TrainEvent("warning", self.step, self.config.steps, message=message)

    def validate(self) -> dict[str, float]:
        """Scores on the validation planes (:func:`napari_unet.training.validation.validate`)."""
        from napari_unet.training.validation import validate

        with self.averaged_weights():
            metrics = validate(self.model, self.val_planes, self.derived, self.device)
        self.model.train()
        return metrics

    # ---------------------------------------------------------------- files
    def metadata(self) -> ModelMetadata:
        """Model-file metadata describing this run."""
        shapes = sorted({tuple(p.image.shape) for p in self.planes})
        return ModelMetadata(
            architecture=self.model.config,
            normalization=self.annotation.normalization.to_dict(),
            class_names=list(self.class_names),
            provenance={
                "steps": self.step,
                "planes": len(self.planes),
                "plane_shapes": [list(s) for s in shapes],
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "package_version": __version__,
                "annotation_mode": self.annotation.mode,
                "training": json.loads(json.dumps(self.config.to_dict())),
                "parent_model": self.parent_model or "",
                "final_loss": self.history[-1]["loss"] if self.history else None,
                "train_seconds": round(self.train_seconds, 1),
                "best_step": self.best_step,
                # where the planes were in their stack: trained on, and held out (scored)
                "train_planes": _indices(self.planes),
                "val_planes": _indices(self.val_planes),
            },
            postprocess={k: v for k, v in self.derived.items() if v is not None},
        )

    def save_model(self, path: str | Path) -> Path:
        """Write the trained model file (weights + metadata)."""
        return save_model(path, self.model, self.metadata())

    def checkpoint_state(self) -> CheckpointState:
        """Everything a resumed run needs (see :mod:`napari_unet.training.checkpoint`)."""
        return CheckpointState(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            rng_torch=torch.get_rng_state(),
            rng_augment=self.aug_generator.get_state(),
            rng_numpy=self.rng.bit_generator.state,
            step=self.step,
            train_seconds=self.train_seconds,
            tile=self.tile,
            metadata=self.metadata(),
            best=self.best,
            history=self.history,
            ema=self.ema,
        )

    def restore(self, state: CheckpointState) -> None:
        """Continue from ``state``: weights, optimiser, step, time spent and every RNG."""
        try:
            self.model.load_state_dict(state.model)
        except RuntimeError:
            raise ModelFileError(
                "the checkpoint was written for a different architecture"
            ) from None
        optimizer = {
            "state": {
                pid: {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in entry.items()}
                for pid, entry in state.optimizer["state"].items()
            },
            "param_groups": state.optimizer["param_groups"],
        }
        self.optimizer.load_state_dict(optimizer)
        torch.set_rng_state(state.rng_torch)
        self.aug_generator.set_state(state.rng_augment)
        self.rng.bit_generator.state = state.rng_numpy
        self.step = state.step
        self.train_seconds = state.train_seconds
        self.best = state.best
        self.history = list(state.history)
        if self.ema is not None and state.ema:
            self.ema = {k: v.to(self.device) for k, v in state.ema.items()}
        if state.tile != self.tile and self.config.tile is None:
            check_input_size(self.model.config, state.tile)
            self.tile = state.tile  # the run continues with the tile it started with
            self._prepare_data()

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write weights, optimiser, step and RNG states atomically."""
        return write_checkpoint(self.checkpoint_state(), Path(path or self.checkpoint_path))

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this trainer."""
        state = read_checkpoint(path)
        try:
            self.restore(state)
        except ModelFileError as error:
            raise ModelFileError(f"{path}: {error}") from None


def _indices(planes: list[TrainingPlane]) -> list[list[int]]:
    """The planes' positions in their stack, as JSON lists (``[]`` for a 2D image)."""
    return [[int(i) for i in np.atleast_1d(p.index)] for p in planes if p.index is not None]

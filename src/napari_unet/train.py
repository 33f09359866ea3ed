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

from . import __version__
from .annotations import AnnotationConfig, TrainingPlane
from .augment import AugmentConfig, augment_batch
from .devices import is_out_of_memory, release_memory, resolve_device
from .errors import InputError, ModelFileError, OutOfMemory
from .model import UNet, border, check_input_size, input_size_for_output
from .metrics import iou, matching
from .modelfile import ModelMetadata, load_tensors, save_model, save_tensors
from .postprocess import instance_labels, semantic_labels
from .predict import PredictConfig, predict_plane

CHECKPOINT_FORMAT = "napari-unet-checkpoint/1"


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the data and the architecture.

    steps : optimiser steps to reach (a resumed run counts the steps already done).
    batch_size : tiles per step.
    tile : input tile edge (None: the smallest valid edge with an output of >= 96 px).
    optimizer : ``adam`` (the released fine-tuning tool) or ``sgd`` (the paper: momentum 0.99).
    lr : learning rate (None: 1e-3 for Adam from scratch, 1e-4 for Adam fine-tuning, 1e-3 SGD).
    lr_schedule : ``cosine`` decays the learning rate to 5 % of its start over ``steps`` (steadier
        final models from few, noisy tiles); ``constant`` keeps it.
    background_sampling : how often a tile centred on background is drawn relative to
        foreground (Falk et al.: 0.1); ignored pixels are never tile centres.
    val_every / checkpoint_every : steps between validations / checkpoints (0 = never).
    amp : bf16 autocast and channels_last on CUDA.
    seed : seeds tile sampling, augmentation and dropout. The initial weights come from the model
        passed to :class:`Trainer` (seed torch with ``torch.manual_seed`` before building it for
        fully reproducible runs).
    """

    steps: int = 1000
    batch_size: int = 4
    tile: int | None = None
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float | None = None
    momentum: float = 0.99
    weight_decay: float = 0.0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    background_sampling: float = 0.1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_every: int = 50
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
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
            raise InputError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if not 0 <= self.background_sampling <= 1:
            raise InputError("background sampling must be between 0 and 1")

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
    ) -> None:
        if not planes:
            raise InputError("no training planes given")
        self.config = config or TrainConfig()
        self.annotation = annotation or AnnotationConfig()
        self.device = resolve_device(self.config.device)
        channels = {p.image.shape[0] for p in planes + (val_planes or [])}
        if channels != {model.config.in_channels}:
            raise InputError(
                f"the model takes {model.config.in_channels} channel(s) but the images have "
                f"{sorted(channels)}"
            )
        self.model = model.to(self.device)
        self.planes = planes
        self.val_planes = val_planes or []
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.parent_model = parent_model
        self.class_names = class_names or (
            ["background", "object"] + [f"class {i}" for i in range(2, model.config.num_classes)]
        )[: model.config.num_classes]
        self.tile = self.config.tile or default_tile(model)
        check_input_size(model.config, self.tile)
        self.step = 0
        self.history: list[dict] = []
        self._cancel = False
        torch.manual_seed(self.config.seed)
        self.rng = np.random.default_rng(self.config.seed)
        self.aug_generator = torch.Generator().manual_seed(self.config.seed)
        self.optimizer = self._make_optimizer()
        self._prepare_data()

    # ---------------------------------------------------------------- set-up
    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr or 1e-3, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        lr = cfg.lr or (1e-4 if self.parent_model else 1e-3)
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)

    def _set_learning_rate(self) -> None:
        """Learning rate for the coming step (a pure function of the step: resumes exactly)."""
        if self.config.lr_schedule == "constant":
            return
        progress = min(self.step / max(self.config.steps, 1), 1.0)
        factor = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor

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
            sample = np.where(p.weight > 0, np.where(p.target > 0, 1.0, self.config.background_sampling), 0.0)
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
        picks = np.searchsorted(self._cumulative, self.rng.random(cfg.batch_size) * self._cumulative[-1], side="right")
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

    def _loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        b = border(self.model.config)
        if b:
            target = target[:, b:-b, b:-b]
            weight = weight[:, b:-b, b:-b]
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        return (ce * weight).sum() / (weight > 0).sum().clamp(min=1)

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
            while self.step < cfg.steps:
                if self._cancel:
                    path = self.save_checkpoint() if self.checkpoint_path else None
                    yield TrainEvent("cancelled", self.step, cfg.steps, path=str(path) if path else None)
                    return
                try:
                    value = self._train_step(use_amp)
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    yield self._after_out_of_memory()
                    continue
                self.step += 1
                elapsed = time.perf_counter() - t_start
                rate = (self.step - step_start) / max(elapsed, 1e-9)
                self.history.append({"step": self.step, "loss": value})
                yield TrainEvent("step", self.step, cfg.steps, loss=value,
                                 tiles_per_s=rate * self.config.batch_size, eta_s=(cfg.steps - self.step) / max(rate, 1e-9))
                if self.val_planes and cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    metrics = self.validate()
                    self.history[-1].update(metrics)
                    yield TrainEvent("validation", self.step, cfg.steps, metrics=metrics)
                if self.checkpoint_path and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    path = self.save_checkpoint()
                    yield TrainEvent("checkpoint", self.step, cfg.steps, path=str(path))
            yield TrainEvent("done", self.step, cfg.steps, loss=self.history[-1]["loss"] if self.history else None)
        finally:
            self.model.eval()
            release_memory(self.device)

    def _train_step(self, use_amp: bool) -> float:
        """One optimiser step on a freshly sampled, augmented batch; returns the loss."""
        image, target, weight = self._sample_batch()
        self._set_learning_rate()
        if use_amp:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = self.model(image)
        loss = self._loss(logits, target, weight)
        if not torch.isfinite(loss):
            raise InputError("training diverged (the loss is not finite); lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
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
        message = (f"out of {kind} memory at step {self.step} with {size} tiles per step; "
                   f"continuing with {size // 2}")
        return TrainEvent("warning", self.step, self.config.steps, message=message)

    def validate(self) -> dict[str, float]:
        """Foreground IoU and F1 at IoU 0.5 on the validation planes (annotated pixels only)."""
        ious, f1s = [], []
        for p in self.val_planes:
            probs = predict_plane(self.model, p.image, PredictConfig(device=str(self.device)), self.device)
            semantic = semantic_labels(probs)
            valid = p.weight > 0
            ious.append(iou(np.where(valid, semantic, 0), np.where(valid, p.target, 0)))
            gt_inst = instance_labels(p.target.astype(np.uint8))
            f1s.append(matching(instance_labels(semantic), gt_inst)["f1"])
        self.model.train()
        return {"val_iou": float(np.mean(ious)), "val_f1": float(np.mean(f1s))}

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
            },
        )

    def save_model(self, path: str | Path) -> Path:
        """Write the trained model file (weights + metadata)."""
        return save_model(path, self.model, self.metadata())

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write weights, optimiser, step and RNG states atomically."""
        path = Path(path or self.checkpoint_path)
        tensors: dict[str, torch.Tensor] = {}
        for name, value in self.model.state_dict().items():
            tensors[f"model.{name}"] = value.detach().cpu()
        opt_state = self.optimizer.state_dict()
        scalars: dict[str, dict] = {}
        for pid, state in opt_state["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"opt.{pid}.{key}"] = value.detach().cpu()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.augment"] = self.aug_generator.get_state()
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "tile": self.tile,
            "param_groups": opt_state["param_groups"],
            "opt_scalars": scalars,
            "rng_numpy": self.rng.bit_generator.state,
            "history": self.history,
            "model_metadata": json.loads(self.metadata().to_json()),
        }
        return save_tensors(path, tensors, meta)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this trainer."""
        tensors, meta = load_tensors(path, device="cpu")
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ModelFileError(f"{path} is not a napari-unet training checkpoint")
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_state)
        except RuntimeError:
            raise ModelFileError(f"{path} was written for a different architecture") from None
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value.to(self.device)
        for pid, scalars in meta.get("opt_scalars", {}).items():
            state.setdefault(int(pid), {}).update(scalars)
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        self.aug_generator.set_state(tensors["rng.augment"])
        self.rng.bit_generator.state = meta["rng_numpy"]
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        tile = int(meta.get("tile", self.tile))
        if tile != self.tile and self.config.tile is None:
            check_input_size(self.model.config, tile)
            self.tile = tile  # the run continues with the tile it started with
            self._prepare_data()


def read_checkpoint_metadata(path: str | Path) -> ModelMetadata:
    """The model metadata stored in a checkpoint (to rebuild the architecture before resuming)."""
    _, meta = load_tensors(path, device="meta")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not a napari-unet training checkpoint")
    return ModelMetadata.from_json(json.dumps(meta["model_metadata"]))

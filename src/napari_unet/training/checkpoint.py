"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a safetensors file (no pickle) with the weights, the optimiser state, the best
validated weights so far, the step, the training time spent and every random-number-generator
state (torch, the augmentation generator, numpy's tile sampler), plus the model metadata to
rebuild the network before resuming. A resumed run equals an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_unet.errors import ModelFileError
from napari_unet.io.modelfile import ModelMetadata, load_tensors, save_tensors

CHECKPOINT_FORMAT = "napari-unet-checkpoint/1"


@dataclass
class CheckpointState:
    """What a checkpoint holds; the trainer builds it (``Trainer.checkpoint_state``) and applies
    it (``Trainer.restore``), this module only writes and reads it."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng_torch: torch.Tensor
    rng_augment: torch.Tensor
    rng_numpy: dict[str, Any]
    step: int
    train_seconds: float
    tile: int
    metadata: ModelMetadata
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    history: list[dict] = field(default_factory=list)
    ema: dict[str, torch.Tensor] | None = None


def write_checkpoint(state: CheckpointState, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (safetensors + JSON header); returns the path."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.model.items():
        tensors[f"model.{name}"] = value.detach().cpu()
    scalars: dict[str, dict] = {}
    for pid, entries in state.optimizer["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    if state.best is not None:
        for name, value in state.best[2].items():
            tensors[f"best.{name}"] = value
    for name, value in (state.ema or {}).items():
        tensors[f"ema.{name}"] = value.detach().cpu()
    tensors["rng.torch"] = state.rng_torch
    tensors["rng.augment"] = state.rng_augment
    meta = {
        "format": CHECKPOINT_FORMAT,
        "step": state.step,
        "train_seconds": state.train_seconds,
        "best": [state.best[0], state.best[1]] if state.best is not None else None,
        "tile": state.tile,
        "param_groups": state.optimizer["param_groups"],
        "opt_scalars": scalars,
        "rng_numpy": state.rng_numpy,
        "history": state.history,
        "model_metadata": json.loads(state.metadata.to_json()),
    }
    return save_tensors(Path(path), tensors, meta)


def _read(path: str | Path, device: str) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = load_tensors(path, device=device)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not a napari-unet training checkpoint")
    return tensors, meta


def read_checkpoint(path: str | Path) -> CheckpointState:
    """Read a checkpoint written by :func:`write_checkpoint` (tensors on the CPU)."""
    tensors, meta = _read(path, "cpu")
    optimizer_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            optimizer_state.setdefault(int(pid), {})[name] = value
    for pid, scalars in meta.get("opt_scalars", {}).items():
        optimizer_state.setdefault(int(pid), {}).update(scalars)
    best = None
    if meta.get("best"):
        weights = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        best = (float(meta["best"][0]), int(meta["best"][1]), weights)
    return CheckpointState(
        model={k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
        optimizer={"state": optimizer_state, "param_groups": meta["param_groups"]},
        rng_torch=tensors["rng.torch"],
        rng_augment=tensors["rng.augment"],
        rng_numpy=meta["rng_numpy"],
        step=int(meta["step"]),
        train_seconds=float(meta.get("train_seconds", 0.0)),
        tile=int(meta["tile"]),
        metadata=ModelMetadata.from_json(json.dumps(meta["model_metadata"])),
        best=best,
        history=list(meta.get("history", [])),
        ema={k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} or None,
    )


def read_checkpoint_metadata(path: str | Path) -> ModelMetadata:
    """The model metadata stored in a checkpoint (to rebuild the architecture before resuming)."""
    _, meta = _read(path, "meta")
    return ModelMetadata.from_json(json.dumps(meta["model_metadata"]))

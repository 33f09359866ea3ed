"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a safetensors file (no pickle) with the weights, the optimiser state, the best
validated weights so far, the step, the training time spent and every random-number-generator
state (torch, the augmentation generator, numpy's tile sampler), plus the model metadata to
rebuild the network before resuming. A resumed run equals an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import ModelFileError
from .model import check_input_size
from .modelfile import ModelMetadata, load_tensors, save_tensors

if TYPE_CHECKING:
    from .train import Trainer

CHECKPOINT_FORMAT = "napari-unet-checkpoint/1"


def save_checkpoint(trainer: Trainer, path: Path) -> Path:
    """Write ``trainer``'s state to ``path`` atomically; returns the path."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in trainer.model.state_dict().items():
        tensors[f"model.{name}"] = value.detach().cpu()
    opt_state = trainer.optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, state in opt_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    if trainer.best is not None:
        for name, value in trainer.best[2].items():
            tensors[f"best.{name}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.augment"] = trainer.aug_generator.get_state()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "step": trainer.step,
        "train_seconds": trainer.train_seconds,
        "best": [trainer.best[0], trainer.best[1]] if trainer.best is not None else None,
        "tile": trainer.tile,
        "param_groups": opt_state["param_groups"],
        "opt_scalars": scalars,
        "rng_numpy": trainer.rng.bit_generator.state,
        "history": trainer.history,
        "model_metadata": json.loads(trainer.metadata().to_json()),
    }
    return save_tensors(path, tensors, meta)


def load_checkpoint(trainer: Trainer, path: str | Path) -> None:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``trainer``."""
    tensors, meta = load_tensors(path, device="cpu")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not a napari-unet training checkpoint")
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        trainer.model.load_state_dict(model_state)
    except RuntimeError:
        raise ModelFileError(f"{path} was written for a different architecture") from None
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value.to(trainer.device)
    for pid, scalars in meta.get("opt_scalars", {}).items():
        state.setdefault(int(pid), {}).update(scalars)
    trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    trainer.aug_generator.set_state(tensors["rng.augment"])
    trainer.rng.bit_generator.state = meta["rng_numpy"]
    trainer.step = int(meta["step"])
    trainer.train_seconds = float(meta.get("train_seconds", 0.0))
    if meta.get("best"):
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        trainer.best = (float(meta["best"][0]), int(meta["best"][1]), best)
    trainer.history = list(meta.get("history", []))
    tile = int(meta.get("tile", trainer.tile))
    if tile != trainer.tile and trainer.config.tile is None:
        check_input_size(trainer.model.config, tile)
        trainer.tile = tile  # the run continues with the tile it started with
        trainer._prepare_data()


def read_checkpoint_metadata(path: str | Path) -> ModelMetadata:
    """The model metadata stored in a checkpoint (to rebuild the architecture before resuming)."""
    _, meta = load_tensors(path, device="meta")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not a napari-unet training checkpoint")
    return ModelMetadata.from_json(json.dumps(meta["model_metadata"]))

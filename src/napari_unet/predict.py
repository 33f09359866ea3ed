"""Overlap-tile prediction (the paper's section 5) for planes of any size.

A plane is mirror-padded by the network's border (numpy ``reflect``: the edge pixel is not
repeated), cut into input tiles at a stride of the output tile size, run through the network in
batches, and the output tiles are pasted side by side. With valid convolutions the result equals
one pass over the whole padded plane, whatever the tile size. Tiles may be rectangular: a plane
smaller than one tile is processed with the smallest tile that covers it.

``same``-padding networks see a context margin around each tile (half the border of the
equivalent valid network) so that seams stay invisible in practice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
import warnings
from dataclasses import dataclass, replace

import numpy as np
import psutil
import torch

from .devices import is_out_of_memory, resolve_device
from .errors import InputError
from .model import UNet, UNetConfig, border, check_input_size, input_size_for_output

# 8 dihedral transforms as (k rotations by 90 degrees, flip x) pairs
DIHEDRAL = [(k, f) for f in (False, True) for k in range(4)]
MAX_AUTO_TILE_PIXELS = 1024 * 1024


@dataclass(frozen=True)
class PredictConfig:
    """How to run the network over an image.

    tile : input tile edge in pixels (None: chosen from the memory available).
    batch_size : tiles per forward pass (None: from the memory available).
    tta : average over the 8 flips / 90-degree rotations.
    amp : bf16 autocast and channels_last on CUDA.
    device : ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """

    tile: int | None = None
    batch_size: int | None = None
    tta: bool = False
    amp: bool = True
    device: str = "auto"


def context_margin(config: UNetConfig) -> int:
    """Pixels of context cut away around each tile's output (the valid border, or a halo)."""
    if config.padding == "valid":
        return border(config)
    return border(config.with_(padding="valid")) // 2


def _bytes_per_input_pixel(config: UNetConfig) -> float:
    """Rough peak activation memory of a forward pass per input pixel (fp32, no grad)."""
    return 4.0 * config.width * 14


def _align(config: UNetConfig, size: int) -> int:
    """Smallest valid input edge >= size (same padding: multiple of 2**depth)."""
    if config.padding == "valid":
        return input_size_for_output(config, size - 2 * border(config))
    step = 2**config.depth
    return max(step, math.ceil(size / step) * step)


def tile_shape(
    config: UNetConfig, plane_shape: tuple[int, int], pconfig: PredictConfig, device: torch.device
) -> tuple[int, int]:
    """Input tile (height, width): the user's edge, or the largest that fits memory and the plane."""
    margin = context_margin(config)
    if pconfig.tile is not None:
        check_input_size(config, pconfig.tile)
        edge = int(pconfig.tile)
    else:
        budget = _memory_budget(device)
        pixels = min(MAX_AUTO_TILE_PIXELS, budget / _bytes_per_input_pixel(config))
        edge = _align_down(config, int(math.sqrt(max(pixels, 1))))
    # do not use tiles (much) larger than the plane needs
    need = [_align(config, s + 2 * margin) for s in plane_shape]
    return (min(edge, need[0]), min(edge, need[1]))


def _align_down(config: UNetConfig, size: int) -> int:
    """Largest usable input edge <= size (never below the smallest usable edge)."""
    low = _align(config, 2 * context_margin(config) + 1)
    if size <= low:
        return low
    step = 2**config.depth
    return low + ((size - low) // step) * step


def _memory_budget(device: torch.device) -> float:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return 0.5 * free
    return 0.15 * psutil.virtual_memory().available


def _batch_size(config: UNetConfig, tile: tuple[int, int], pconfig: PredictConfig, device) -> int:
    if pconfig.batch_size:
        return max(1, int(pconfig.batch_size))
    per_tile = _bytes_per_input_pixel(config) * tile[0] * tile[1]
    return int(max(1, min(16, _memory_budget(device) // max(per_tile, 1))))


def _forward(model: UNet, batch: torch.Tensor, pconfig: PredictConfig) -> torch.Tensor:
    """Softmax probabilities of a batch, optionally averaged over the 8 dihedral transforms."""
    use_amp = pconfig.amp and batch.device.type == "cuda"
    if use_amp:
        batch = batch.contiguous(memory_format=torch.channels_last)
    transforms = DIHEDRAL if pconfig.tta else DIHEDRAL[:1]
    total = None
    for k, flip in transforms:
        x = batch
        if flip:
            x = torch.flip(x, dims=(-1,))
        x = torch.rot90(x, k, dims=(-2, -1))
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x)
        probs = torch.softmax(logits.float(), dim=1)
        probs = torch.rot90(probs, -k, dims=(-2, -1))
        if flip:
            probs = torch.flip(probs, dims=(-1,))
        total = probs if total is None else total + probs
    return total / len(transforms)


def predict_plane(
    model: UNet,
    plane: np.ndarray,
    pconfig: PredictConfig | None = None,
    device: torch.device | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Class probabilities (K, Y, X) float32 for one normalised (C, Y, X) plane."""
    pconfig = pconfig or PredictConfig()
    device = device or next(model.parameters()).device
    plane = np.asarray(plane, dtype=np.float32)
    if plane.ndim == 2:
        plane = plane[None]
    cfg = model.config
    if plane.ndim != 3 or plane.shape[0] != cfg.in_channels:
        raise InputError(
            f"the model expects {cfg.in_channels} channel(s) but the image plane has shape "
            f"{plane.shape}"
        )
    tile = tile_shape(cfg, plane.shape[1:], pconfig, device)
    while True:
        try:
            return _predict_tiled(model, plane, tile, pconfig, device, cancelled)
        except Exception as exc:  # out of memory: retry with smaller tiles
            if not is_out_of_memory(exc) or min(tile) <= _align(cfg, 2 * context_margin(cfg) + 1):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            smaller = tuple(_align_down(cfg, t // 2 + context_margin(cfg)) for t in tile)
            warnings.warn(f"out of memory with tiles of {tile}; retrying with {smaller}, one at a time")
            tile = smaller
            pconfig = replace(pconfig, batch_size=1)


def _predict_tiled(model, plane, tile, pconfig, device, cancelled) -> np.ndarray:
    cfg = model.config
    margin = context_margin(cfg)
    height, width = plane.shape[1:]
    out_h, out_w = tile[0] - 2 * margin, tile[1] - 2 * margin
    ny, nx = math.ceil(height / out_h), math.ceil(width / out_w)
    padded = np.pad(
        plane,
        ((0, 0), (margin, margin + ny * out_h - height), (margin, margin + nx * out_w - width)),
        mode="reflect" if min(height, width) > 1 else "symmetric",
    )
    result = np.empty((cfg.num_classes, ny * out_h, nx * out_w), np.float32)
    origins = [(iy * out_h, ix * out_w) for iy in range(ny) for ix in range(nx)]
    batch_size = _batch_size(cfg, tile, pconfig, device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(origins), batch_size):
                if cancelled is not None and cancelled():
                    from .errors import Cancelled

                    raise Cancelled("prediction cancelled")
                chunk = origins[start : start + batch_size]
                tiles = np.stack([padded[:, y : y + tile[0], x : x + tile[1]] for y, x in chunk])
                probs = _forward(model, torch.from_numpy(tiles).to(device), pconfig)
                if cfg.padding == "same" and margin:
                    probs = probs[..., margin:-margin, margin:-margin]
                probs = probs.cpu().numpy()
                for (y, x), p in zip(chunk, probs):
                    result[:, y : y + out_h, x : x + out_w] = p
    finally:
        model.train(was_training)
    return result[:, :height, :width]


def predict_plane_with_uncertainty(
    model: UNet, plane: np.ndarray, pconfig: PredictConfig | None = None, device=None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities averaged over the 8 dihedral transforms, and their disagreement.

    The uncertainty is, per pixel, the standard deviation over the 8 transforms of the
    probability of the class finally chosen (0 = all agree).
    """
    pconfig = pconfig or PredictConfig()
    members = []
    for k, flip in DIHEDRAL:
        x = np.asarray(plane, np.float32)
        x = x[None] if x.ndim == 2 else x
        if flip:
            x = x[..., ::-1]
        x = np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1)))
        p = predict_plane(model, x, replace(pconfig, tta=False), device)
        p = np.rot90(p, -k, axes=(-2, -1))
        if flip:
            p = p[..., ::-1]
        members.append(np.ascontiguousarray(p))
    stack = np.stack(members)
    mean = stack.mean(axis=0)
    chosen = mean.argmax(axis=0)
    chosen_probs = np.take_along_axis(stack, chosen[None, None], axis=1)[:, 0]
    return mean.astype(np.float32), chosen_probs.std(axis=0).astype(np.float32)


def load_predictor(model_path, device: str = "auto"):
    """Load a model file onto a device: returns (model, metadata, device)."""
    from .modelfile import load_model

    dev = resolve_device(device)
    model, metadata = load_model(model_path, device=dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, metadata, dev

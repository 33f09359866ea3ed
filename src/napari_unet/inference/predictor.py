"""Overlap-tile prediction (the paper's section 5) for planes of any size.

A plane is mirror-padded by the network's border (numpy ``reflect``: the edge pixel is not
repeated), cut into input tiles at a stride of the output tile size (rounded down to a multiple
of ``2**depth`` so that every tile sees the plane's max-pooling grid: 384 for the paper's 388 px
outputs), run through the network in batches, and the output tiles are pasted side by side. With
valid convolutions the result equals one pass over the whole padded plane, whatever the tile size.
Tiles may be rectangular and are fitted to the plane (see :func:`tile_shape`): a plane smaller
than one tile is processed with the smallest tile that covers it.

``same``-padding networks see a context margin around each tile (half the border of the
equivalent valid network) so that seams stay invisible in practice.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import psutil
import torch
from torch import nn

from napari_unet.devices import is_out_of_memory, resolve_device
from napari_unet.errors import InputError
from napari_unet.model import UNet, UNetConfig, border, check_input_size, input_size_for_output

# 8 dihedral transforms as (k rotations by 90 degrees, flip x) pairs
DIHEDRAL = [(k, f) for f in (False, True) for k in range(4)]
MAX_AUTO_TILE_PIXELS = 1024 * 1024  # per tile; on CPU also per batch (bounds memory, no speed lost)


@dataclass(frozen=True)
class PredictConfig:
    """How to run the network over an image.

    tile : input tile edge in pixels (None: chosen from the memory available).
    batch_size : tiles per forward pass (None: from the memory available).
    tta : average over the 8 flips / 90-degree rotations.
    amp : bf16 autocast and channels_last on CUDA (on CPU: fp32, always channels_last).
    device : ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """

    tile: int | None = None
    batch_size: int | None = None
    # field metadata: label and tooltip of the widget form (napari_unet._widgets._forms)
    tta: bool = field(
        default=False,
        metadata={
            "label": "TTA: average 8 flips/rotations (slower)",
            "tooltip": "test-time augmentation: average the predictions of the 8 flips and "
            "90-degree rotations (8x slower, a little smoother)",
        },
    )
    amp: bool = True
    device: str = field(
        default="auto",
        metadata={
            "label": "device",
            "tooltip": "where to predict: auto picks CUDA, then Apple MPS, then the CPU",
        },
    )


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
    """Input tile (height, width).

    With ``pconfig.tile`` the user's square edge (clipped to what the plane needs). Otherwise the
    tiling of the plane that pushes the fewest pixels through the network among those whose tile
    fits the memory budget (and :data:`MAX_AUTO_TILE_PIXELS`): tiles may be rectangular, and their
    size is fitted to the plane, e.g. 2 tiles of 1212 x 700 for a 1024 x 1024 plane and the paper's
    network (rather than 4 square tiles of 1020 x 1020).
    """
    margin = context_margin(config)
    if pconfig.tile is None:
        budget = _memory_budget(device)
        pixels = min(MAX_AUTO_TILE_PIXELS, budget / _bytes_per_input_pixel(config))
        return _fitted_tile(config, plane_shape, int(max(pixels, 1)))
    check_input_size(config, pconfig.tile)
    edge = int(pconfig.tile)
    # do not use tiles (much) larger than the plane needs
    need = [_align(config, s + 2 * margin) for s in plane_shape]
    return (min(edge, need[0]), min(edge, need[1]))


def _axis_options(config: UNetConfig, length: int) -> list[tuple[int, int]]:
    """(tiles, input edge) along one axis: for each distinct edge the fewest tiles that need it."""
    margin = context_margin(config)
    low = _align(config, 2 * margin + 1)
    options: list[tuple[int, int]] = []
    n = 1
    while True:
        edge = _align(config, math.ceil(length / n) + 2 * margin)
        while _tile_count(config, edge, length) > n:
            edge += 2**config.depth  # the next usable edge
        if not options or edge < options[-1][1]:
            options.append((n, edge))
        if edge <= low or n >= length:
            return options
        # jump to the next tile count that can lower the stride needed
        n = max(n + 1, math.ceil(length / max(_stride(config, edge) - 1, 1)))


def _stride(config: UNetConfig, edge: int) -> int:
    """Distance between tiles of input edge ``edge`` along one axis.

    The output of a tile minus what keeps every tile on the max-pooling grid of the whole plane
    (a multiple of ``2**depth``): then each output pixel is computed exactly as in one pass over
    the padded plane. Valid outputs are 4 px longer than such a multiple for depth >= 3 (572 ->
    388), so neighbouring tiles overlap by those few pixels. Tiles with outputs shorter than
    ``2**depth`` are placed side by side.
    """
    out = edge - 2 * context_margin(config)
    step = 2**config.depth
    return out - out % step if out >= step else out


def _tile_count(config: UNetConfig, edge: int, length: int) -> int:
    """Tiles of input edge ``edge`` needed to cover ``length`` output pixels along one axis."""
    out = edge - 2 * context_margin(config)
    return 1 + max(0, math.ceil((length - out) / _stride(config, edge)))


def _fitted_tile(
    config: UNetConfig, plane_shape: tuple[int, int], max_pixels: int
) -> tuple[int, int]:
    """Tile (h, w) of at most ``max_pixels`` minimising the pixels computed over the plane."""
    along_y = _axis_options(config, int(plane_shape[0]))
    along_x = _axis_options(config, int(plane_shape[1]))
    x_edges = [-edge for _, edge in along_x]  # ascending, for bisect
    best = None
    for ny, th in along_y:
        first = bisect.bisect_left(x_edges, -(max_pixels // th))
        for nx, tw in along_x[first : first + 4]:
            key = (ny * nx * th * tw, ny * nx, abs(th - tw))
            if best is None or key < best[0]:
                best = (key, (th, tw))
    if best is None:  # not even the smallest tiles fit the budget: use them anyway
        return (along_y[-1][1], along_x[-1][1])
    return best[1]


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
    batch = min(16, _memory_budget(device) // max(per_tile, 1))
    if device.type == "cpu":
        # a CPU gains nothing from batching large tiles: keep memory to one tile's worth
        batch = min(batch, MAX_AUTO_TILE_PIXELS // max(tile[0] * tile[1], 1))
    return int(max(1, batch))


def _use_channels_last(pconfig: PredictConfig, device: torch.device) -> bool:
    """channels_last is faster for these convolutions on CPU (oneDNN) and with AMP on CUDA."""
    return device.type == "cpu" or (pconfig.amp and device.type == "cuda")


@contextmanager
def _channels_last(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Run with the model's 4D weights in channels_last, restoring the layout afterwards."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not enabled or all(w.is_contiguous(memory_format=torch.channels_last) for w in weights):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def _forward(model: UNet, batch: torch.Tensor, pconfig: PredictConfig) -> torch.Tensor:
    """Softmax probabilities of a batch, optionally averaged over the 8 dihedral transforms."""
    use_amp = pconfig.amp and batch.device.type == "cuda"
    if _use_channels_last(pconfig, batch.device):
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
            warnings.warn(
                f"out of memory with tiles of {tile}; retrying with {smaller}, one at a time",
                stacklevel=2,
            )
            tile = smaller
            pconfig = replace(pconfig, batch_size=1)


def _predict_tiled(model, plane, tile, pconfig, device, cancelled) -> np.ndarray:
    cfg = model.config
    margin = context_margin(cfg)
    height, width = plane.shape[1:]
    out_h, out_w = tile[0] - 2 * margin, tile[1] - 2 * margin
    step_y, step_x = _stride(cfg, tile[0]), _stride(cfg, tile[1])
    ny, nx = _tile_count(cfg, tile[0], height), _tile_count(cfg, tile[1], width)
    full_h, full_w = (ny - 1) * step_y + out_h, (nx - 1) * step_x + out_w
    padded = np.pad(
        plane,
        ((0, 0), (margin, margin + full_h - height), (margin, margin + full_w - width)),
        mode="reflect" if min(height, width) > 1 else "symmetric",
    )
    result = np.empty((cfg.num_classes, full_h, full_w), np.float32)
    origins = [(iy * step_y, ix * step_x) for iy in range(ny) for ix in range(nx)]
    batch_size = _batch_size(cfg, tile, pconfig, device)
    was_training = model.training
    model.eval()
    try:
        with _channels_last(model, _use_channels_last(pconfig, device)), torch.inference_mode():
            for start in range(0, len(origins), batch_size):
                if cancelled is not None and cancelled():
                    from napari_unet.errors import Cancelled

                    raise Cancelled("prediction cancelled")
                chunk = origins[start : start + batch_size]
                tiles = np.stack([padded[:, y : y + tile[0], x : x + tile[1]] for y, x in chunk])
                probs = _forward(model, torch.from_numpy(tiles).to(device), pconfig)
                if cfg.padding == "same" and margin:
                    probs = probs[..., margin:-margin, margin:-margin]
                probs = probs.cpu().numpy()
                for (y, x), p in zip(chunk, probs, strict=False):
                    result[:, y : y + out_h, x : x + out_w] = p
    finally:
        model.train(was_training)
    return result[:, :height, :width]


def dihedral_predictions(
    model: UNet, plane: np.ndarray, pconfig: PredictConfig | None = None, device=None
) -> np.ndarray:
    """Probabilities (8, K, Y, X) of the plane under the 8 dihedral transforms, mapped back; the
    first is the plane as it is (what :func:`predict_plane` gives without TTA)."""
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
    return np.stack(members)


def mean_and_disagreement(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean (K, Y, X) of :func:`dihedral_predictions` and their disagreement (Y, X): per
    pixel, the standard deviation of the probability of the class finally chosen."""
    mean = stack.mean(axis=0)
    chosen = mean.argmax(axis=0)
    chosen_probs = np.take_along_axis(stack, chosen[None, None], axis=1)[:, 0]
    return mean.astype(np.float32), chosen_probs.std(axis=0).astype(np.float32)


def predict_plane_with_uncertainty(
    model: UNet, plane: np.ndarray, pconfig: PredictConfig | None = None, device=None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities averaged over the 8 dihedral transforms, and their disagreement (0 = all
    agree; see :func:`mean_and_disagreement`)."""
    return mean_and_disagreement(dihedral_predictions(model, plane, pconfig, device))


def load_predictor(model_path, device: str = "auto"):
    """Load a model file onto a device: returns (model, metadata, device)."""
    from napari_unet.io.modelfile import load_model

    dev = resolve_device(device)
    model, metadata = load_model(model_path, device=dev)
    if dev.type in ("cuda", "cpu"):  # the layout predict_plane uses there (see _use_channels_last)
        model = model.to(memory_format=torch.channels_last)
    return model, metadata, dev

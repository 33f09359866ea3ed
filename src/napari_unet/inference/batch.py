"""Segmenting whole stacks plane by plane, in memory or streamed to disk, locally or on dask.

Memory stays bounded by one plane and its tile batch: planes are read one at a time from numpy,
dask or zarr arrays (a dask array is never computed whole), and results are streamed to a zarr
array or a TIFF file. Instance ids are unique over the stack (a running offset per plane).

Crash safety: a zarr output records each finished plane in its attributes, so rerunning the same
command after a crash redoes only the unfinished planes; a TIFF output is written to a temporary
file and renamed when complete, so it is either whole or absent.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_unet.annotation.derived import postprocess_config
from napari_unet.errors import Cancelled, InputError
from napari_unet.inference.postprocess import PostprocessConfig, instance_labels, semantic_labels
from napari_unet.inference.predictor import PredictConfig, predict_plane
from napari_unet.io.files import StackWriter
from napari_unet.io.modelfile import ModelMetadata
from napari_unet.io.planes import offset_instances, read_plane
from napari_unet.model import UNet
from napari_unet.normalization import Normalization, normalize_plane

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SegmentConfig:
    """What to compute for every plane.

    ``postprocess=None`` (default) uses what the model file recommends, i.e. the settings derived
    from its training annotations (:func:`napari_unet.annotation.derived.postprocess_config`).
    """

    predict: PredictConfig = field(default_factory=PredictConfig)
    postprocess: PostprocessConfig | None = None
    instances: bool = field(
        default=True,
        metadata={  # label and tooltip of the widget form (napari_unet._widgets._forms)
            "label": "instances: number the objects",
            "tooltip": "on: number the objects 1, 2, 3, ... (unique over the stack); off: the "
            "predicted class of each pixel",
        },
    )
    channel_axis: int | None = None


def plane_layout(
    shape: tuple[int, ...], model: UNet, channel_axis: int | None
) -> tuple[tuple[int, ...], tuple[int, int]]:
    """Leading (plane) shape and (Y, X) of an image for a model; refuses mismatched channels."""
    channels = model.config.in_channels
    if len(shape) < 2:
        raise InputError(f"an image needs at least two axes (Y, X), got shape {shape}")
    if channel_axis is not None and not -len(shape) <= channel_axis < len(shape):
        raise InputError(f"channel axis {channel_axis} does not exist: the image has shape {shape}")
    if (
        channel_axis is None
        and channels == 1
        and len(shape) >= 3
        and shape[-1] in (3, 4)
        and shape[-2] > 4
    ):
        raise InputError(
            f"the image of shape {shape} looks like RGB(A) but the model takes 1 channel; "
            "convert it to grayscale or use a model trained on colour images"
        )
    if channel_axis is None and channels > 1:
        if len(shape) >= 3 and shape[-1] == channels:
            channel_axis = len(shape) - 1
        elif len(shape) >= 3 and shape[0] == channels:
            channel_axis = 0
        else:
            raise InputError(
                f"the model expects {channels} channels but the image has shape {shape}"
            )
    if channel_axis is not None:
        axis = channel_axis % len(shape)
        if shape[axis] != channels:
            raise InputError(
                f"the model expects {channels} channel(s) but the image has {shape[axis]} "
                f"on axis {axis}"
            )
        rest = tuple(s for i, s in enumerate(shape) if i != axis)
    else:
        rest = tuple(shape)
    return rest[:-2], (rest[-2], rest[-1])


def _resolved_channel_axis(shape, model: UNet, channel_axis: int | None) -> int | None:
    if channel_axis is not None or model.config.in_channels == 1:
        return channel_axis
    return len(shape) - 1 if shape[-1] == model.config.in_channels else 0


def iter_planes(
    image, model: UNet, channel_axis: int | None = None
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield (index, raw (C, Y, X) plane) one at a time; dask/zarr planes are read lazily."""
    lead, _ = plane_layout(tuple(image.shape), model, channel_axis)
    axis = _resolved_channel_axis(tuple(image.shape), model, channel_axis)
    for index in np.ndindex(*lead) if lead else [()]:
        plane = read_plane(image, index, axis)
        yield index, plane


def segment_plane(
    model: UNet,
    metadata: ModelMetadata,
    plane: np.ndarray,
    config: SegmentConfig,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (Y, X) and probabilities (K, Y, X) for one raw (C, Y, X) plane."""
    norm = Normalization.from_dict(metadata.normalization)
    probs = predict_plane(model, normalize_plane(plane, norm), config.predict, cancelled=cancelled)
    return labels_from_probabilities(probs, metadata, config), probs


def postprocess_for(metadata: ModelMetadata, config: SegmentConfig) -> PostprocessConfig:
    """The post-processing of a run: the explicit one, else the model file's recommendation."""
    if config.postprocess is not None:
        return config.postprocess
    return postprocess_config(metadata.postprocess)


def labels_from_probabilities(
    probs: np.ndarray, metadata: ModelMetadata, config: SegmentConfig
) -> np.ndarray:
    """Instance (or semantic, with ``instances=False``) labels (Y, X) uint32 of one plane."""
    semantic = semantic_labels(probs)
    if config.instances:
        post = postprocess_for(metadata, config)
        return instance_labels(semantic, post, probabilities=probs).astype(np.uint32)
    return semantic.astype(np.uint32)


def run_fingerprint(
    model: UNet, metadata: ModelMetadata, image, config: SegmentConfig, source: str = ""
) -> str:
    """What a resumed zarr output must share with the run that started it: the model's weights
    and metadata, the settings, the image's shape and dtype, and ``source`` (e.g. the image
    file's path, size and modification time)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for part in (
        metadata.to_json(),
        repr(config),
        repr(tuple(image.shape)),
        str(image.dtype),
        source,
    ):
        digest.update(part.encode())
    return digest.hexdigest()


def segment_stack(
    model: UNet,
    metadata: ModelMetadata,
    image,
    config: SegmentConfig | None = None,
    out: str | Path | None = None,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
    source: str = "",
    on_plane: Callable[[tuple[int, ...], np.ndarray], None] | None = None,
):
    """Segment every plane of ``image`` (numpy, dask or zarr; (..., [C,] Y, X)).

    Returns the labels array (``out=None``) or the output path. ``progress(done, total)`` is
    called after each plane; ``cancelled()`` returning True stops with :class:`Cancelled`
    (a zarr output keeps the finished planes and the next run with the same model, settings,
    image shape and ``source`` continues from there; any other run starts it anew).
    ``on_plane(index, probabilities)`` gets each plane's (K, Y, X) network output.
    """
    config = config or SegmentConfig()
    lead, yx = plane_layout(tuple(image.shape), model, config.channel_axis)
    run = None
    if out is not None and Path(out).suffix == ".zarr":
        run = run_fingerprint(model, metadata, image, config, source)
    writer = StackWriter(out, lead + yx, run=run)
    total = int(np.prod(lead)) if lead else 1
    offset = int(writer._array.attrs.get("napari_unet_offset", 0)) if writer.kind == "zarr" else 0
    try:
        offset = _segment_planes(
            model, metadata, image, config, writer, offset, total, progress, cancelled, on_plane
        )
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def _segment_planes(
    model, metadata, image, config, writer, offset, total, progress, cancelled, on_plane=None
) -> int:
    for flat, (index, plane) in enumerate(iter_planes(image, model, config.channel_axis)):
        if flat in writer.done:
            continue
        if cancelled is not None and cancelled():
            raise Cancelled("segmentation cancelled")
        labels, probs = segment_plane(model, metadata, plane, config, cancelled)
        if on_plane is not None:
            on_plane(index, probs)
        if config.instances:
            labels, offset = offset_instances(labels, offset)
        # done planes and the id offset in one metadata write: a kill cannot separate them
        writer.write(flat, index, labels, {"napari_unet_offset": offset})
        if progress is not None:
            progress(flat + 1, total)
    return offset


# ----------------------------------------------------------------------------- dask.distributed
@functools.lru_cache(maxsize=2)
def _worker_model(model_path: str):
    from napari_unet.io.modelfile import load_model

    return load_model(model_path, device="cpu")


def _segment_task(
    model_path: str, image_path: str, index: tuple[int, ...], config: SegmentConfig
) -> np.ndarray:
    import dask

    from napari_unet.io.files import read_array

    model, metadata = _worker_model(model_path)
    image = read_array(image_path, lazy=True)
    # read the plane right here: the file handle cannot travel to other workers
    with dask.config.set(scheduler="synchronous"):
        _, plane = next(iter_planes(image[index] if index else image, model, config.channel_axis))
    return segment_plane(model, metadata, plane, config)[0]


def segment_stack_distributed(
    model_path: str | Path,
    image_path: str | Path,
    scheduler: str,
    config: SegmentConfig | None = None,
    out: str | Path | None = None,
    progress: Progress | None = None,
    max_in_flight: int = 8,
):
    """Like :func:`segment_stack` but each plane runs as a task on a dask.distributed cluster.

    Workers read their plane from ``image_path`` and the model from ``model_path`` themselves (a
    path all workers can see); the client only writes results in order. Same labels as a local run.
    """
    from distributed import Client

    from napari_unet.io.files import read_array
    from napari_unet.io.modelfile import load_model

    config = config or SegmentConfig()
    model, _ = load_model(model_path, device="cpu")
    image = read_array(image_path, lazy=True)
    lead, yx = plane_layout(tuple(image.shape), model, config.channel_axis)
    if config.channel_axis is not None and config.channel_axis % image.ndim < len(lead):
        raise InputError("on a cluster, put the channel axis after the plane axes")
    indices = list(np.ndindex(*lead)) if lead else [()]
    _check_reachable(scheduler)
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
    writer = StackWriter(out, lead + yx)  # only once connected: nothing is written in vain
    try:
        with client:
            _run_distributed(
                client,
                str(model_path),
                str(image_path),
                indices,
                config,
                writer,
                progress,
                max_in_flight,
            )
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


def _check_reachable(scheduler: str) -> None:
    """Fail at once (not after the 20 s connect timeout) on a malformed or refusing address."""
    import socket

    from distributed.comm import get_address_host_port, parse_address

    try:
        if parse_address(scheduler)[0] not in ("tcp", "tls"):
            return
        socket.create_connection(get_address_host_port(scheduler), timeout=10).close()
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None


def _run_distributed(
    client, model_path, image_path, indices, config, writer, progress, max_in_flight
):
    """Keep at most ``max_in_flight`` plane tasks running; write results in plane order."""
    from distributed import as_completed

    def submit(flat: int):
        return client.submit(
            _segment_task,
            model_path,
            image_path,
            indices[flat],
            config,
            key=f"napari-unet-plane-{flat}-{id(writer)}",
        )

    flats = iter(range(len(indices)))
    futures = as_completed(
        [submit(f) for f in itertools.islice(flats, max_in_flight)], with_results=True
    )
    results: dict[int, np.ndarray] = {}
    offset, next_flat = 0, 0
    for future, labels in futures:
        results[int(future.key.split("-")[3])] = labels
        more = next(flats, None)
        if more is not None:
            futures.add(submit(more))
        while next_flat in results:
            labels = results.pop(next_flat)
            if config.instances:
                labels, offset = offset_instances(labels, offset)
            writer.write(next_flat, indices[next_flat], labels, {"napari_unet_offset": offset})
            next_flat += 1
            if progress is not None:
                progress(next_flat, len(indices))

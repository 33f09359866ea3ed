"""Segmentation work that the Segment widget runs in a worker thread (no Qt in here).

The functions return a tuple instead of raising: ``("plane", index, labels, probability,
uncertainty)``, ``("stack", labels)``, ``("ranked", scores, maps)``, ``("cancelled",)``
or ``("error", exception)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_unet.defaults import form_field
from napari_unet.errors import Cancelled, InputError
from napari_unet.inference.batch import (
    SegmentConfig,
    plane_layout,
    postprocess_for,
    segment_plane,
    segment_stack,
)
from napari_unet.inference.predictor import load_predictor
from napari_unet.inference.suggest import (
    DEFAULT_MEASURE,
    PlaneUncertainty,
    SuggestConfig,
    plane_uncertainty,
    rank_planes,
)
from napari_unet.io.planes import read_plane
from napari_unet.threads import limited_threads

SOURCES = ("model just trained", "model file...")
SCOPES = ("current plane", "whole stack")


@dataclass
class SegmentRequest:
    """What 4 Segment runs: with which model, on which planes, and which extra layers."""

    source: str = form_field(
        SOURCES[0],
        "model",
        "the network: the one trained last in 3 Train (this session) or a model file "
        "(.safetensors)",
        choices=SOURCES,
    )
    scope: str = form_field(
        SCOPES[0],
        "planes",
        "current plane: the plane on screen (seconds); whole stack: every plane, read one at a "
        "time, with progress and Cancel",
        choices=SCOPES,
    )
    probability: bool = form_field(
        False,
        "extra layers: foreground probability",
        "also add the foreground probability (0..1) of the current plane as an image layer",
    )
    uncertainty: bool = form_field(
        False,
        "uncertainty layer (8 passes)",
        "also add the uncertainty of the current plane (the disagreement of its 8 "
        "flipped/rotated predictions: where the model is unsure) as an image layer",
    )


@dataclass
class ModelSource:
    """Where the network comes from: the session's trained model or a model file."""

    model: object | None = None  # a UNet (the model just trained)
    metadata: object | None = None
    path: str | None = None

    def read_metadata(self):
        """The model's metadata without loading its weights (a file's header only)."""
        if self.path is not None:
            if not Path(self.path).is_file():
                raise InputError(f"model file {self.path} does not exist")
            from napari_unet.io.modelfile import read_metadata

            return read_metadata(self.path)
        return self.metadata

    def load(self, device: str):
        """(model, metadata) on ``device``; the file is read in the worker."""
        if self.path is not None:
            if not Path(self.path).is_file():
                raise InputError(f"model file {self.path} does not exist")
            model, metadata, _ = load_predictor(self.path, device)
            return model, metadata
        from napari_unet.devices import resolve_device

        return self.model.to(resolve_device(device)).eval(), self.metadata


def _foreground(probs: np.ndarray, metadata, config: SegmentConfig) -> np.ndarray:
    """The object probability: the sum of the classes that form objects (interior and border
    for three-class models)."""
    foreground = postprocess_for(metadata, config).foreground_classes
    classes = [c for c in foreground if c < probs.shape[0]]
    return probs[classes].sum(axis=0).astype(np.float32)


def segment_current(
    source: ModelSource,
    device: str,
    image,
    index: tuple[int, ...],
    channel_axis: int | None,
    config: SegmentConfig,
    probability: bool,
    uncertainty: bool,
    cancelled: Callable[[], bool],
    threads: int | None = None,
    on_plane: Callable | None = None,
):
    """Segment one plane; optionally its foreground probability and its uncertainty map (the
    per-pixel map of the default ranking measure, as the whole-stack ranking shows it).
    ``on_plane(index, probabilities)`` gets the (K, Y, X) network output."""
    try:
        with limited_threads(threads):
            return _segment_current(
                source,
                device,
                image,
                index,
                channel_axis,
                config,
                probability,
                uncertainty,
                cancelled,
                on_plane,
            )
    except Cancelled:
        return ("cancelled",)
    except Exception as exc:  # noqa: BLE001 - shown on the main thread
        return ("error", exc)


def _segment_current(
    source, device, image, index, channel_axis, config, probability, uncertainty, cancelled, keep
) -> tuple:
    model, metadata = source.load(device)
    raw = read_plane(image, index, channel_axis)
    unc = None
    if uncertainty:
        result = plane_uncertainty(model, metadata, raw, config)
        labels, probs = result.labels, result.probabilities
        unc = result.map_for(DEFAULT_MEASURE)
    else:
        labels, probs = segment_plane(model, metadata, raw, config, cancelled)
    if keep is not None:
        keep(index, probs)
    prob = _foreground(probs, metadata, config) if probability else None
    return ("plane", index, labels, prob, unc)


def segment_whole(
    source: ModelSource,
    device: str,
    image,
    config: SegmentConfig,
    progress: Callable[[int, int], None],
    cancelled: Callable[[], bool],
    threads: int | None = None,
    on_plane: Callable | None = None,
):
    """Segment every plane with :func:`segment_stack` (a dask image is read plane by plane)."""
    try:
        with limited_threads(threads):
            model, metadata = source.load(device)
            return (
                "stack",
                segment_stack(
                    model,
                    metadata,
                    image,
                    config,
                    progress=progress,
                    cancelled=cancelled,
                    on_plane=on_plane,
                ),
            )
    except Cancelled:
        return ("cancelled",)
    except Exception as exc:  # noqa: BLE001 - shown on the main thread
        return ("error", exc)


def rank_whole(
    source: ModelSource,
    device: str,
    image,
    config: SuggestConfig,
    exclude: Iterable[tuple[int, ...]],
    progress: Callable[[int, int], None],
    cancelled: Callable[[], bool],
    threads: int | None = None,
):
    """Rank the planes of ``image`` not in ``exclude``, least sure first (:func:`rank_planes`).

    Returns ``("ranked", scores, maps)``: the :class:`~napari_unet.inference.suggest.PlaneScore`
    list and
    a float32 array of the image's plane shape (..., Y, X) holding each scored plane's map of
    the ranking measure (:meth:`~napari_unet.inference.suggest.PlaneUncertainty.map_for`; 0 on the
    planes
    not scored).
    """
    try:
        with limited_threads(threads):
            model, metadata = source.load(device)
            lead, yx = plane_layout(tuple(image.shape), model, config.segment.channel_axis)
            maps = np.zeros(lead + yx, np.float32)

            def keep(index: tuple[int, ...], result: PlaneUncertainty) -> None:
                maps[index] = result.map_for(config.measure)

            scores = rank_planes(
                model,
                metadata,
                image,
                config,
                exclude=exclude,
                progress=progress,
                cancelled=cancelled,
                on_plane=keep,
            )
            return ("ranked", scores, maps)
    except Cancelled:
        return ("cancelled",)
    except Exception as exc:  # noqa: BLE001 - shown on the main thread
        return ("error", exc)

"""Which plane to annotate next: rank planes by how unsure the model is about them.

The human-in-the-loop round is: segment a stack, correct the plane the model is least sure of,
continue training, repeat. This module scores each plane from the 8 dihedral test-time
transforms (:func:`napari_unet.inference.predictor.dihedral_predictions`) with three
measures:

* ``disagreement`` -- mean over the plane of the standard deviation, over the 8 transforms, of
  the probability of the class finally chosen (the transforms disagree where the network has
  not learned what it sees);
* ``entropy`` -- mean normalised entropy of the averaged class probabilities (0 = certain,
  1 = uniform);
* ``boundary_per_object`` -- pixels whose averaged foreground probability lies between 0.2 and
  0.8 per predicted object (+1): wide, unsure object borders, independent of how many objects
  the plane holds.

All three come from one set of 8 forward passes per plane. Which of them predicts a plane's
segmentation error best is measured by ``benchmarks/loop.py`` (docs/benchmarks.md, "Human in
the loop"); :data:`DEFAULT_MEASURE` is ``disagreement`` (see
:data:`napari_unet.defaults.DEFAULT_SUGGEST_MEASURE` for the figures). Each measure has a
per-pixel map (:meth:`PlaneUncertainty.map_for`), shown as the uncertainty layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from napari_unet.defaults import DEFAULT_SUGGEST_MEASURE, SUGGEST_MEASURES
from napari_unet.errors import Cancelled, InputError
from napari_unet.inference.batch import (
    SegmentConfig,
    iter_planes,
    labels_from_probabilities,
    plane_layout,
)
from napari_unet.inference.predictor import (
    PredictConfig,
    dihedral_predictions,
    mean_and_disagreement,
    predict_plane,
)
from napari_unet.io.modelfile import ModelMetadata
from napari_unet.model import UNet
from napari_unet.normalization import Normalization, normalize_plane

Measure = Literal["disagreement", "entropy", "boundary_per_object"]
MEASURES: tuple[str, ...] = SUGGEST_MEASURES
DEFAULT_MEASURE: Measure = DEFAULT_SUGGEST_MEASURE  # type: ignore[assignment]
UNSURE_BAND = (0.2, 0.8)  # averaged foreground probability counted as an unsure border


@dataclass(frozen=True)
class SuggestConfig:
    """How planes are ranked.

    measure : the score planes are sorted by (all measures are computed and reported).
    segment : prediction and post-processing settings (the objects counted per plane).
    """

    measure: Measure = DEFAULT_MEASURE
    segment: SegmentConfig = field(default_factory=SegmentConfig)

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            choices = ", ".join(MEASURES)
            raise InputError(f"unknown measure {self.measure!r}; choose one of {choices}")


@dataclass(frozen=True)
class PlaneScore:
    """The uncertainty of one plane: ``scores`` holds every measure, ``score`` the ranked one."""

    index: tuple[int, ...]
    score: float
    scores: dict[str, float]
    objects: int

    def to_dict(self) -> dict:
        """JSON-ready form (``plane`` is the list of leading-axis indices)."""
        return {
            "plane": list(self.index),
            "score": self.score,
            "objects": self.objects,
            **{name: value for name, value in self.scores.items()},
        }


@dataclass(frozen=True)
class PlaneUncertainty:
    """Everything one plane's 8 passes give: scores, per-pixel maps (Y, X) and the labels."""

    scores: dict[str, float]
    objects: int
    disagreement_map: np.ndarray
    entropy_map: np.ndarray
    unsure_map: np.ndarray  # 1 where the averaged foreground probability is in UNSURE_BAND
    labels: np.ndarray
    probabilities: np.ndarray  # (K, Y, X) the labels come from (as 4 Segment predicts)

    def map_for(self, measure: str) -> np.ndarray:
        """The per-pixel map (float32) whose plane mean or count makes ``measure``'s score."""
        return {
            "disagreement": self.disagreement_map,
            "entropy": self.entropy_map,
            "boundary_per_object": self.unsure_map,
        }[measure]


def plane_uncertainty(
    model: UNet, metadata: ModelMetadata, plane: np.ndarray, config: SegmentConfig
) -> PlaneUncertainty:
    """Scores of one raw (C, Y, X) plane, its disagreement map (Y, X) and its labels.

    The labels (and the objects counted) are the ones 4 Segment gives for the plane with the
    same ``config``: from the untransformed prediction, or with TTA from ``predict_plane``'s.
    """
    norm = Normalization.from_dict(metadata.normalization)
    predict: PredictConfig = config.predict
    normed = normalize_plane(plane, norm)
    stack = dihedral_predictions(model, normed, predict)
    mean, disagreement = mean_and_disagreement(stack)
    probs = predict_plane(model, normed, predict) if predict.tta else stack[0]
    labels = labels_from_probabilities(probs, metadata, config)
    classes = mean.shape[0]
    clipped = np.clip(mean.astype(np.float64), 1e-7, 1.0)
    entropy = -(clipped * np.log(clipped)).sum(axis=0) / np.log(max(classes, 2))
    foreground = mean[1:].sum(axis=0)
    low, high = UNSURE_BAND
    unsure_map = ((foreground > low) & (foreground < high)).astype(np.float32)
    unsure = int(unsure_map.sum())
    objects = int(len(np.unique(labels[labels > 0]))) if config.instances else int(labels.max())
    scores = {
        "disagreement": float(disagreement.mean()),
        "entropy": float(entropy.mean()),
        "boundary_per_object": unsure / (objects + 1),
    }
    return PlaneUncertainty(
        scores, objects, disagreement, entropy.astype(np.float32), unsure_map, labels, probs
    )


def rank_planes(
    model: UNet,
    metadata: ModelMetadata,
    image,
    config: SuggestConfig | None = None,
    exclude: Iterable[tuple[int, ...]] = (),
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    on_plane: Callable[[tuple[int, ...], PlaneUncertainty], None] | None = None,
) -> list[PlaneScore]:
    """Score every plane of ``image`` not in ``exclude`` and return them, least sure first.

    ``image`` is (..., [C,] Y, X) like :func:`napari_unet.inference.batch.segment_stack`'s (numpy,
    dask
    or zarr; read one plane at a time). ``exclude`` holds the leading-axis indices of planes
    already annotated. ``progress(done, total)`` follows the scored planes; ``cancelled()``
    returning True stops with :class:`~napari_unet.errors.Cancelled`; ``on_plane(index,
    result)`` receives each plane's maps (e.g. to fill an uncertainty layer).
    """
    config = config or SuggestConfig()
    lead, _ = plane_layout(tuple(image.shape), model, config.segment.channel_axis)
    skip = {tuple(int(i) for i in index) for index in exclude}
    total = sum(1 for index in (np.ndindex(*lead) if lead else [()]) if index not in skip)
    if total == 0:
        raise InputError("every plane is annotated already: there is no plane left to suggest")
    ranked: list[PlaneScore] = []
    for index, plane in iter_planes(image, model, config.segment.channel_axis):
        if index in skip:
            continue
        if cancelled is not None and cancelled():
            raise Cancelled("ranking cancelled")
        result = plane_uncertainty(model, metadata, plane, config.segment)
        ranked.append(
            PlaneScore(index, result.scores[config.measure], result.scores, result.objects)
        )
        if on_plane is not None:
            on_plane(index, result)
        if progress is not None:
            progress(len(ranked), total)
    ranked.sort(key=lambda entry: (-entry.score, entry.index))
    return ranked

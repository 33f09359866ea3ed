"""The network output of the planes segmented last, kept so that changing an instance setting
(min size, fill holes, the watershed) re-labels them without the network (:func:`relabel`; the
live settings of 4 Segment, in the widget's worker)."""

from __future__ import annotations

import numpy as np

from napari_unet.inference.batch import labels_from_probabilities
from napari_unet.io.planes import offset_instances

CACHE_BYTES = 1 << 30  # the network output kept: at most ~1 GB of float32 (K, Y, X) planes
CACHE_TIP = (
    "changing an instance setting re-labels the planes segmented last at once, without running "
    "the network again (their network output is kept: up to 1 GB, e.g. 80 planes of "
    "1024 x 1024 with 3 classes; a larger stack is labelled anew by Segment). Re-labelling "
    "replaces corrections made to those planes"
)


class OutputCache:
    """The (K, Y, X) probabilities of the planes segmented last, for one image and one model.

    :meth:`collector` gathers a run's planes in the worker thread (a run over :data:`CACHE_BYTES`
    keeps none); :meth:`store` takes them on the GUI thread. ``config`` is the
    ``(postprocess, instances)`` that labelled them, ``stack``: ids run on over the planes.
    """

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.drop()

    def drop(self, *_args) -> None:
        """Forget the kept output (the model or the image changed)."""
        self.planes: dict[tuple[int, ...], np.ndarray] = {}
        self.key = self.image = self.metadata = self.config = None
        self.stack = False

    def collector(self):
        """``(keep, planes)``: ``keep(index, probs)`` for the worker fills ``planes``."""
        planes: dict[tuple[int, ...], np.ndarray] = {}

        def keep(index, probs) -> None:
            if planes.get("full") is None:  # "full": more than the limit, nothing is kept
                planes[tuple(index)] = np.asarray(probs, np.float32)
                if sum(p.nbytes for p in planes.values()) > self.limit:
                    planes.clear()
                    planes["full"] = True

        return keep, planes

    def store(self, key, image, metadata, config, planes: dict, whole: bool) -> None:
        """Keep a finished run's planes (a plane run adds to those of the same image and model;
        the oldest go beyond the limit)."""
        if "full" in planes or key != self.key or whole:
            self.drop()
        if "full" in planes:
            return
        self.key, self.image, self.metadata, self.config = key, image, metadata, config
        self.stack = self.stack or whole
        for index, probs in planes.items():
            self.planes.pop(index, None)
            self.planes[index] = probs
        while sum(p.nbytes for p in self.planes.values()) > self.limit:
            del self.planes[next(iter(self.planes))]


def relabel(planes: dict, metadata, config, stack: bool, cancelled, threads=None):
    """``("relabelled", {index: labels})`` of the kept planes under ``config`` (a
    :class:`~napari_unet.inference.batch.SegmentConfig`); ids run on over a stack."""
    out, offset = {}, 0
    for index in sorted(planes):
        if cancelled():
            return ("cancelled",)
        labels = labels_from_probabilities(planes[index], metadata, config)
        if stack and config.instances:
            labels, offset = offset_instances(labels, offset)
        out[index] = labels
    return ("relabelled", out)


def live_key(config) -> tuple:
    """What the live settings of a :class:`~napari_unet.inference.batch.SegmentConfig` decide:
    the post-processing and instances or classes."""
    return (config.postprocess, config.instances)

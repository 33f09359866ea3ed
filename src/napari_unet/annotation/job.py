"""The work 2 Weight map runs in a worker thread and what its status line says (no Qt here)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from napari_unet.annotation.schema import AnnotationConfig, plane_targets
from napari_unet.io.plane_lists import plane_names

VISIBLE = 0.05  # a border term below this adds nothing one can see: "no touching objects"


def weight_planes(labels, planes, config: AnnotationConfig):
    """Worker: yield ("plane", index, weights, base weights) per plane, or ("error", exc); the
    base weights leave out the border term (the class-balance part)."""
    flat = replace(config, weight_map=replace(config.weight_map, w0=0.0, lam=0.0))
    try:
        for index in planes:
            plane = np.asarray(labels[index])
            yield ("plane", index, plane_targets(plane, config)[1], plane_targets(plane, flat)[1])
    except Exception as exc:  # noqa: BLE001 - reported on the main thread
        yield ("error", exc)


@dataclass
class WeightSummary:
    """The planes of a run computed so far: their weight range, the largest base weight and the
    planes without touching objects (nothing but class-balance weights)."""

    planes: list[tuple[int, ...]]
    low: float = np.inf
    high: float = -np.inf
    floor: float = 0.0  # the largest base weight
    flat: list[tuple[int, ...]] = field(default_factory=list)

    def add(self, index: tuple[int, ...], weight: np.ndarray, base: np.ndarray) -> tuple:
        """Take in one plane; returns the contrast limits that show what the border term adds:
        transparent up to the base weight, brightest at the largest weight."""
        self.low, self.high = (
            min(self.low, float(weight.min())),
            max(self.high, float(weight.max())),
        )
        if float((weight - base).max(initial=0.0)) < VISIBLE:
            self.flat.append(index)
        self.floor = max(self.floor, float(base.max(initial=0.0)))
        return self.floor, max(self.high, self.floor + 1e-3)

    def text(self, index: tuple[int, ...]) -> str:
        """The status line after plane ``index``."""
        done = self.planes[: self.planes.index(index) + 1] if index in self.planes else []
        text = f"plane {plane_names(done)}: weights {self.low:.2f} .. {self.high:.2f}"
        if self.flat:
            text += (
                f"; no touching objects on plane {plane_names(self.flat)}: every weight is the "
                "class-balance weight"
            )
        return text

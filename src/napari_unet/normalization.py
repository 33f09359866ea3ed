"""Image normalisation, shared by training and prediction.

Every plane is scaled on its own, each channel by its robust percentiles (1 and 99.8 by
default); the recipe is stored in the model file so that prediction scales exactly as training
did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_unet.errors import InputError


@dataclass(frozen=True)
class Normalization:
    """Per-plane, per-channel percentile scaling to roughly [0, 1]."""

    low: float = 1.0
    high: float = 99.8

    def to_dict(self) -> dict[str, float | str]:
        return {"method": "percentile", "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        if data.get("method", "percentile") != "percentile":
            raise InputError(f"unknown normalisation method {data.get('method')!r}")
        return cls(low=float(data.get("low", 1.0)), high=float(data.get("high", 99.8)))


def normalize_plane(plane: np.ndarray, normalization: Normalization | None = None) -> np.ndarray:
    """Scale a (C, Y, X) plane to float32, each channel by its own robust percentiles."""
    norm = normalization or Normalization()
    kind = np.asarray(plane).dtype.kind
    if kind not in "biuf":
        raise InputError(f"the image holds {np.asarray(plane).dtype} values; expected real numbers")
    data = np.asarray(plane, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    if not np.all(np.isfinite(data)):
        raise InputError("the image holds NaN or infinite pixel values; replace them first")
    out = np.empty(data.shape, np.float32)
    for c, channel in enumerate(data):
        lo, hi = np.percentile(channel, [norm.low, norm.high])
        if hi - lo < 1e-6:
            lo, hi = float(channel.min()), float(channel.max())
        scale = 1.0 / (hi - lo) if hi - lo > 1e-6 else 1.0
        out[c] = (channel - lo) * scale
    return out

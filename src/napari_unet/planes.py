"""Reading planes out of stacks, and numbering objects across planes.

A *plane* is one (Y, X) image of a stack or time series, addressed by its index over the leading
axes. Images may carry a channel axis anywhere; :func:`read_plane` returns (C, Y, X) and reads only
that plane of a dask or zarr array. :func:`offset_instances` keeps instance ids unique when planes
labelled one at a time are put back into a stack.
"""

from __future__ import annotations

import numpy as np


def read_plane(image, index: tuple[int, ...], channel_axis: int | None) -> np.ndarray:
    """One raw plane as (C, Y, X); ``channel_axis`` counts the axes of the whole image.

    Only that plane is read from a dask or zarr array.
    """
    key: list = list(index)
    if channel_axis is not None:
        channel_axis %= len(np.shape(image))
    if channel_axis is not None and channel_axis < len(index):
        key.insert(channel_axis, slice(None))
        return np.asarray(image[tuple(key)])
    plane = np.asarray(image[tuple(key)])
    if channel_axis is None:
        return plane[None]
    return np.moveaxis(plane, channel_axis - len(index), 0)


def offset_instances(labels: np.ndarray, offset: int) -> tuple[np.ndarray, int]:
    """``labels`` with every non-zero id raised by ``offset`` (uint32), and the new largest id.

    Used plane by plane so that the ids of a labelled stack are unique over the stack.
    """
    shifted = np.where(labels > 0, labels.astype(np.int64) + offset, 0).astype(np.uint32)
    return shifted, max(offset, int(shifted.max()) if shifted.size else 0)

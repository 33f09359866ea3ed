"""Reading planes out of stacks, and numbering objects across planes.

A *plane* is one (Y, X) image of a stack or time series, addressed by its index over the leading
axes. Images may carry a channel axis anywhere; :func:`read_plane` returns (C, Y, X) and reads only
that plane of a dask or zarr array. :func:`offset_instances` keeps instance ids unique when planes
labelled one at a time are put back into a stack.
"""

from __future__ import annotations

import numpy as np

from napari_unet.errors import InputError


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


def split_channels(image, channel_axis: int | None = None):
    """The image with its channel axis moved right before (Y, X): shape (..., C, Y, X).

    numpy input gives a numpy view; dask, zarr and other array-likes stay lazy (a dask array),
    so that planes can be read one at a time.
    """
    if not isinstance(image, np.ndarray):
        import dask.array as da

        image = image if hasattr(image, "dask") else da.asarray(image)
        move = da.moveaxis
    else:
        move = np.moveaxis
    if channel_axis is None:
        return image[..., None, :, :]
    axis = channel_axis % image.ndim
    if axis >= image.ndim - 2:
        if axis == image.ndim - 1 and image.ndim >= 3:
            return move(image, -1, -3)
        raise InputError("the channel axis cannot be one of the two image (Y, X) axes")
    return move(image, axis, -3)


def guess_channel_axis(image_shape: tuple[int, ...], labels_shape: tuple[int, ...]) -> int | None:
    """The image axis that the labels lack (RGB last, else the first extra axis), or None."""
    if tuple(image_shape) == tuple(labels_shape):
        return None
    if len(image_shape) != len(labels_shape) + 1:
        raise InputError(
            f"image shape {tuple(image_shape)} and labels shape {tuple(labels_shape)} do not match"
        )
    if image_shape[-1] in (3, 4) and tuple(image_shape[:-1]) == tuple(labels_shape):
        return len(image_shape) - 1
    for axis in range(len(image_shape)):
        if tuple(np.delete(np.array(image_shape), axis)) == tuple(labels_shape):
            return axis
    raise InputError(
        f"image shape {tuple(image_shape)} and labels shape {tuple(labels_shape)} do not match"
    )

"""Reading planes out of stacks, and numbering objects across planes.

A *plane* is one (Y, X) image of a stack or time series, addressed by its index over the leading
axes. Images may carry a channel axis anywhere; :func:`read_plane` returns (C, Y, X) and reads only
that plane of a dask or zarr array. :func:`offset_instances` keeps instance ids unique when planes
labelled one at a time are put back into a stack.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import InputError


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


def parse_index_list(text: str | None) -> list[int] | None:
    """Parse ``"0,3,5-7"`` into ``[0, 3, 5, 6, 7]`` (commas, semicolons or spaces between
    items, ``a-b`` for a range); None or an empty text gives None."""
    if text is None or not str(text).strip():
        return None
    out: list[int] = []
    for part in re.split(r"[,;\s]+", str(text).strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            if re.fullmatch(r"-\d+", part):
                raise InputError(f"plane indices must not be negative: {text!r}")
            raise InputError(f"cannot read the plane list {text!r}; write e.g. 0,3,5-7")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise InputError(f"the range {part} runs backwards; write e.g. 5-7")
        out.extend(range(first, last + 1))
    return out


def parse_plane_list(text: str, n_lead: int) -> list[tuple[int, ...]]:
    """Plane indices from text: ``"3, 5-7"`` for one leading axis, ``"(0, 3); (1, 2)"`` for
    several (one tuple of ``n_lead`` numbers per plane). Empty text gives ``[]``."""
    text = text.strip()
    if not text:
        return []
    if n_lead <= 1:
        return [(v,) if n_lead else () for v in parse_index_list(text) or []]
    if re.search(r"[^\d\s,;()]", text):
        raise InputError(f"cannot read the plane list {text!r}: write e.g. (0, 3); (1, 2)")
    groups = re.findall(r"\(([^)]*)\)", text) or [text]
    result = []
    for group in groups:
        values = tuple(int(v) for v in re.findall(r"\d+", group))
        if len(values) != n_lead:
            raise InputError(f"give {n_lead} numbers per plane, e.g. (0, 3)")
        result.append(values)
    return result

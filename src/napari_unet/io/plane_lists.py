"""Plane lists as users type them: ``"0,3,5-7"`` and ``"(1, 2); 4"``, in the CLI and the widgets,
and planes named back in messages."""

from __future__ import annotations

import re
from collections.abc import Iterable

from napari_unet.errors import InputError


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


def plane_names(planes: Iterable[tuple[int, ...]]) -> str:
    """Plane indices as a user types them: "0, 2, 3" ("1,4" for a t, z plane; "the image" in 2D)."""
    return ", ".join(",".join(map(str, p)) or "the image" for p in planes)


def plane_label(index: tuple[int, ...]) -> str:
    """A plane as a status line names it: "plane 7", "t 3, z 7" (4D), "the image" (2D)."""
    if len(index) == 2:
        return f"t {index[0]}, z {index[1]}"
    return f"plane {plane_names([index])}" if index else "the image"

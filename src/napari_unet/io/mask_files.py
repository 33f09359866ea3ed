"""Per-plane mask files (one 2D label image per frame) and the planes they belong to.

The Cell Tracking Challenge (``man_seg001.tif``), cellpose (``img_0003_cp_masks.png``) and most
labs keep one mask file per frame. :func:`match_mask_files` says which plane each file fills --
by the file name of the image's own plane when those names are known, else by the number in the
file name, or by order when asked -- and :func:`read_mask` reads one file as a label plane
(TIFF through tifffile, PNG through scikit-image/imageio; never a pickled format).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from napari_unet.errors import InputError

MASK_SUFFIXES = (".tif", ".tiff", ".png")
#: Endings of mask names that follow the image's own name (``img_0003_cp_masks.png``).
MASK_ENDINGS = ("_cp_masks", "_masks", "_mask", "_labels", "_label", "_seg")
#: The largest label a mask may hold (65535 is the ignore label of the annotations).
MAX_LABEL = 65534
MATCHING = ("auto", "number", "order")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def natural_key(text: str) -> list:
    """Sort key that puts ``img2`` before ``img10`` (numbers compared as numbers)."""
    return [int(c) if c.isdigit() else c.lower() for c in re.split(r"(\d+)", text)]


def folder_plane_names(folder: str | os.PathLike | None, n_planes: int) -> list[str] | None:
    """The file names of a stack's planes when it was opened from ``folder`` of 2D image files
    (natural order), else None (not a folder, or not one file per plane)."""
    if not folder or not os.path.isdir(folder):
        return None
    files = [f.name for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=natural_key) if len(files) == n_planes else None


def mask_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The mask files named by ``paths``: files as they are, folders by their TIFF/PNG files.

    A folder that also holds the images (cellpose writes ``img.png`` next to
    ``img_cp_masks.png``) gives only the files whose names say mask or seg, when there are any.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(
                (f for f in entry.iterdir() if f.is_file() and f.suffix.lower() in MASK_SUFFIXES),
                key=lambda f: natural_key(f.name),
            )
            masks = [f for f in found if re.search(r"mask|seg", f.stem, re.IGNORECASE)]
            if not found:
                raise InputError(f"{entry.name}: the folder holds no TIFF or PNG files")
            out.extend(masks or found)
        elif entry.is_file():
            if entry.suffix.lower() not in MASK_SUFFIXES:
                raise InputError(f"{entry.name}: mask files must be TIFF or PNG")
            out.append(entry)
        else:
            raise InputError(f"{entry.name}: no such file or folder")
    if not out:
        raise InputError("choose one or more mask files (TIFF or PNG) or a folder of them")
    return out


def image_stem(mask: str | os.PathLike) -> str:
    """The image file name a mask name refers to: ``img_0003_cp_masks.png`` -> ``img_0003``."""
    stem = Path(mask).name
    for suffix in MASK_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for ending in MASK_ENDINGS:
        if stem.lower().endswith(ending):
            return stem[: -len(ending)]
    return stem


def _numbers(path: Path) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", image_stem(path))]


def _by_number(paths: Sequence[Path]) -> dict[Path, int]:
    """The plane number of each file: its only number, or the one number that varies."""
    numbers = {p: _numbers(p) for p in paths}
    missing = [p.name for p, n in numbers.items() if not n]
    if missing:
        raise InputError(f"{missing[0]}: no number in the file name; import these files by order")
    if len({len(n) for n in numbers.values()}) > 1:
        raise InputError("the file names hold different counts of numbers; import them by order")
    count = len(next(iter(numbers.values())))
    if count == 1:
        return {p: n[0] for p, n in numbers.items()}
    varying = [i for i in range(count) if len({n[i] for n in numbers.values()}) > 1]
    if len(varying) != 1:
        example = paths[0].name
        raise InputError(
            f"ambiguous numbering: {example} holds {count} numbers; import by order instead"
        )
    return {p: n[varying[0]] for p, n in numbers.items()}


def match_mask_files(
    paths: Sequence[str | os.PathLike],
    n_planes: int,
    image_names: Sequence[str] | None = None,
    by: str = "auto",
) -> dict[int, Path]:
    """Which plane each mask file fills: ``{plane: path}``, planes in increasing order.

    ``by="auto"``: when ``image_names`` (the file names of the image's planes, in plane order)
    are known and every mask names one of them (``img_0003_cp_masks.png`` <-> ``img_0003.tif``),
    by those names; otherwise by the number in the file name (``man_seg001.tif`` -> plane 1;
    with several numbers, the one that differs between the files). ``by="number"`` skips the
    names, ``by="order"`` gives the files (in natural name order) the planes 0, 1, 2, ...
    Raises :class:`InputError` for numbers outside the stack, two files for one plane and
    names whose number is ambiguous.
    """
    if by not in MATCHING:
        raise InputError(f"unknown matching {by!r}; use one of {', '.join(MATCHING)}")
    files = sorted(map(Path, paths), key=lambda p: natural_key(p.name))
    if not files:
        raise InputError("choose one or more mask files (TIFF or PNG)")
    planes: dict[Path, int] | None = None
    if by == "auto" and image_names:
        stems = {image_stem(name): i for i, name in enumerate(image_names)}
        if all(image_stem(f) in stems for f in files):
            planes = {f: stems[image_stem(f)] for f in files}
    if planes is None and by == "order":
        if len(files) > n_planes:
            raise InputError(f"{len(files)} mask files but the stack has {n_planes} planes")
        planes = {f: i for i, f in enumerate(files)}
    if planes is None:
        planes = _by_number(files)
    result: dict[int, Path] = {}
    for path, plane in planes.items():
        if not 0 <= plane < n_planes:
            raise InputError(
                f"{path.name}: plane {plane} is outside the stack (planes 0-{n_planes - 1})"
            )
        if plane in result:
            raise InputError(f"{result[plane].name} and {path.name} both give plane {plane}")
        result[plane] = path
    return dict(sorted(result.items()))


def _read_file(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from skimage.io import imread  # imageio underneath

        return np.asarray(imread(path))
    except FileNotFoundError:
        raise InputError(f"{path.name}: no such file") from None
    except Exception as exc:  # corrupt or foreign files, from any reader
        raise InputError(f"{path.name}: cannot be read ({type(exc).__name__})") from None


def check_labels(data: np.ndarray, name: str, highest: int = MAX_LABEL) -> np.ndarray:
    """``data`` as integer labels 0..``highest``, or :class:`InputError` naming ``name``.

    Mask files stop at :data:`MAX_LABEL`: 65535 is the annotations' ignore label, and a mask
    holding it is more likely a binary 0/65535 image than a wish to ignore.
    """
    data = np.asarray(data)
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise InputError(f"{name}: not a label mask (values with fractions)")
    elif data.dtype.kind not in "iu":
        raise InputError(f"{name}: not a label mask ({data.dtype} values)")
    if data.size and data.min() < 0:
        raise InputError(f"{name}: negative labels ({data.min()})")
    if data.size and data.max() > highest:
        raise InputError(f"{name}: labels above {highest} ({data.max()})")
    return data if data.dtype.kind in "iu" else data.astype(np.uint16)


def read_mask(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """One mask file as a (Y, X) integer label plane of ``shape``.

    Singleton axes are dropped (a (1, Y, X) TIFF is a plane). Raises :class:`InputError` for a
    different shape, a colour image, values with fractions and negative or too large labels.
    """
    path = Path(path)
    data = _read_file(path)
    if data.size == 0:
        raise InputError(f"{path.name}: cannot be read (no pixels in it)")
    if data.ndim > 2:
        data = data.reshape([s for s in data.shape if s != 1] or [1])
    if data.ndim == 3 and data.shape[-1] in (3, 4) and tuple(data.shape[:2]) == tuple(shape):
        raise InputError(f"{path.name}: a colour image, not a label mask")
    if tuple(data.shape) != tuple(shape):
        raise InputError(f"{path.name}: shape {tuple(data.shape)}, the planes are {tuple(shape)}")
    return check_labels(data, path.name)


def count_objects(plane: np.ndarray, ignore: int = MAX_LABEL + 1) -> int:
    """Distinct non-zero labels of ``plane`` other than ``ignore``."""
    values = np.unique(np.asarray(plane))
    return int(np.count_nonzero((values != 0) & (values != ignore)))

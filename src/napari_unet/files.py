"""Reading images and labels, and writing results atomically.

Readers: tifffile (TIFF stacks, lazily through its zarr store for large files), zarr, numpy
(``.npy``, memory-mapped) and a folder of 2D TIFF/PNG files in name order (skimage.io for PNG).
Writers replace their destination only once the data is complete (temp file + ``os.replace``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".zarr")
LAZY_BYTES = (
    512 * 1024**2
)  # TIFFs larger than this are opened lazily (dask over tifffile's zarr store)


def read_array(path: str | os.PathLike, lazy: bool | None = None):
    """Read an image or label array from TIFF, zarr, .npy, PNG or a folder of 2D files.

    Returns a numpy array, or a dask array for zarr and large TIFF files (``lazy=None``: automatic).
    Any problem raises :class:`InputError` with one sentence naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    data = _read_any(p, lazy)
    if 0 in tuple(data.shape):
        raise InputError(f"{p}: the file holds no pixels (shape {tuple(data.shape)})")
    return data


def _read_any(p: Path, lazy: bool | None):
    try:
        if p.is_dir() and (
            p.suffix == ".zarr" or (p / ".zarray").exists() or (p / "zarr.json").exists()
        ):
            return _read_zarr(p)
        if p.is_dir():
            return _read_folder(p)
        suffix = p.suffix.lower()
        if suffix in (".tif", ".tiff"):
            return _read_tiff(p, lazy)
        if suffix == ".npy":
            return np.load(p, mmap_mode="r", allow_pickle=False)
        if suffix == ".png":
            from skimage.io import imread

            return imread(p)
    except InputError:
        raise
    except Exception as exc:  # corrupt or truncated files from any reader
        raise InputError(f"{p}: cannot be read ({type(exc).__name__}: {exc})") from None
    raise InputError(
        f"{p}: unknown file type {p.suffix!r}; use TIFF, zarr, .npy, PNG or a folder of 2D files"
    )


def _read_tiff(path: Path, lazy: bool | None):
    import tifffile

    if lazy is None:
        lazy = path.stat().st_size > LAZY_BYTES
    if lazy:
        import dask.array as da
        import zarr

        store = tifffile.imread(path, aszarr=True)
        return da.from_zarr(zarr.open(store, mode="r"))
    data = tifffile.imread(path)
    if data.size == 0:
        raise InputError(f"{path}: the file holds no pixels")
    return data


def _read_zarr(path: Path):
    import dask.array as da
    import zarr

    node = zarr.open(str(path), mode="r")
    if not hasattr(node, "shape"):
        raise InputError(f"{path}: is a zarr group, not an array; point at the array inside it")
    return da.from_zarr(node)


def _read_folder(path: Path) -> np.ndarray:
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in (".tif", ".tiff", ".png"))
    if not files:
        raise InputError(f"{path}: the folder holds no TIFF or PNG files")
    planes = [np.asarray(read_array(f, lazy=False)) for f in files]
    shapes = {pl.shape for pl in planes}
    if len(shapes) > 1:
        raise InputError(f"{path}: the files have different shapes {sorted(shapes)}")
    return np.stack(planes)


@contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; it replaces the destination on success.

    On an exception the temporary file is removed and the destination is left untouched.
    """
    dest = Path(destination)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        state = "is not a folder" if parent.exists() else "does not exist"
        raise InputError(f"{dest}: the folder {parent} {state}")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{dest}: the folder {parent} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or dest.suffix, dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_array(path: str | os.PathLike, data: np.ndarray) -> Path:
    """Write labels or probabilities to TIFF (zlib-compressed) or .npy, atomically."""
    dest = Path(path)
    suffix = dest.suffix.lower()
    if suffix not in (".tif", ".tiff", ".npy"):
        raise InputError(f"{dest}: write results as .tif, .tiff or .npy (or a .zarr folder)")
    try:
        with atomic_path(dest) as tmp:
            if suffix == ".npy":
                with open(tmp, "wb") as fh:
                    np.save(fh, np.asarray(data), allow_pickle=False)
            else:
                import tifffile

                tifffile.imwrite(tmp, np.asarray(data), compression="zlib")
    except OSError as exc:
        raise InputError(f"{dest}: cannot be written ({exc.strerror or exc})") from None
    return dest

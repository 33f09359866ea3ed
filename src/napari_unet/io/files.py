"""Reading images and labels, and writing results atomically.

Readers: tifffile (TIFF stacks, lazily through its zarr store for large files), zarr, numpy
(``.npy``, memory-mapped) and a folder of 2D TIFF/PNG files in name order (skimage.io for PNG).
The one file-output layer: every writer replaces its destination only once the data is
complete (temp file + ``os.replace``): :func:`atomic_path` (labels, probabilities),
:func:`atomic_write` (model files, exports; fsynced) and :class:`StackWriter` (whole stacks to
memory, a resumable zarr array or a TIFF renamed when complete).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from napari_unet.errors import InputError, ModelFileError, NapariUnetError

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


def check_output_folder(destination: str | os.PathLike) -> Path:
    """The folder ``destination`` would be written into; :class:`InputError` when it does not
    exist, is not a folder or is not writable (the check every output makes first)."""
    dest = Path(destination)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        state = "is not a folder" if parent.exists() else "does not exist"
        raise InputError(f"{dest}: the folder {parent} {state}")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{dest}: the folder {parent} is not writable")
    if dest.is_dir():
        raise InputError(f"{dest} is a folder: give a file name")
    return parent


@contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; it replaces the destination on success.

    On an exception the temporary file is removed and the destination is left untouched.
    """
    dest = Path(destination)
    parent = check_output_folder(dest)
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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, then rename it over
    ``path``. On any error the temporary file is removed and ``path`` is left untouched.

    Used for model files and exports: errors are :class:`ModelFileError`.
    """

    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ModelFileError(f"cannot write {path}: it is a folder")
    if not parent.is_dir():
        state = "is not a folder" if parent.exists() else "does not exist"
        raise ModelFileError(f"cannot write {path}: the folder {parent} {state}")
    try:
        fd, name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.tmp", suffix=path.suffix)
    except OSError as exc:
        raise ModelFileError(f"cannot write {path}: the folder {parent} is not writable "
                             f"({exc.strerror or exc})") from None  # fmt: skip
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, NapariUnetError) or not isinstance(exc, Exception):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reason = (reason.strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"cannot write {path}: {reason}") from exc
    with contextlib.suppress(OSError, AttributeError):  # make the rename durable (POSIX)
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


class StackWriter:
    """Collects labelled planes into memory, a zarr array (resumable) or a TIFF file."""

    def __init__(
        self,
        out: str | Path | None,
        shape: tuple[int, ...],
        dtype=np.uint32,
        run: str | None = None,
    ) -> None:
        self.out = Path(out) if out is not None else None
        self.run = run  # a zarr output is resumed only by a run with the same fingerprint
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.done: set[int] = set()
        self._array = None
        self._tiff_planes: list[np.ndarray] | None = None
        kind = "memory" if self.out is None else ("zarr" if self.out.suffix == ".zarr" else "tiff")
        if kind == "tiff" and self.out.suffix.lower() not in (".tif", ".tiff"):
            raise InputError(f"{self.out}: write stacks as .tif, .tiff or a .zarr folder")
        self.kind = kind
        if kind == "memory":
            self._array = np.zeros(shape, self.dtype)
        elif kind == "zarr":
            self._open_zarr()
        else:
            self._open_tiff()

    def _open_zarr(self) -> None:
        import zarr

        chunks = (1,) * (len(self.shape) - 2) + self.shape[-2:]
        try:
            try:
                existing = zarr.open(str(self.out), mode="a") if self.out.exists() else None
            except (OSError, ValueError, TypeError, KeyError):  # damaged by a kill: start anew
                existing = None
            if (
                existing is not None
                and hasattr(existing, "shape")
                and tuple(existing.shape) == self.shape
                and existing.dtype == self.dtype
                and existing.attrs.get("napari_unet_run") == self.run
            ):
                self._array = existing
                self.done = set(int(i) for i in existing.attrs.get("napari_unet_done", []))
                return
            self._array = zarr.open(
                str(self.out), mode="w", shape=self.shape, chunks=chunks, dtype=self.dtype
            )
            if self.run is not None:
                self._array.attrs["napari_unet_run"] = self.run
        except OSError as exc:
            raise InputError(f"{self.out}: cannot be written ({exc})") from None

    def _open_tiff(self) -> None:
        """A memory-mapped TIFF under a temporary name; renamed into place by :meth:`finish`."""
        import tempfile

        import tifffile

        parent = self.out.parent if str(self.out.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"{self.out}: the folder {parent} does not exist")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=".tif", dir=parent)
            import os

            os.close(fd)
            self._tmp = Path(tmp)
            self._array = tifffile.memmap(self._tmp, shape=self.shape, dtype=self.dtype)
        except OSError as exc:
            raise InputError(f"{self.out}: cannot be written ({exc.strerror or exc})") from None

    def abort(self) -> None:
        """Drop a half-written TIFF (zarr keeps its finished planes for the next run)."""
        if self.kind == "tiff" and getattr(self, "_tmp", None) is not None:
            self._array = None
            self._tmp.unlink(missing_ok=True)

    def write(
        self, flat_index: int, index: tuple[int, ...], plane: np.ndarray, attrs: dict | None = None
    ) -> None:
        self._array[index] = plane
        self.done.add(flat_index)
        if self.kind == "zarr":
            # one metadata write (``attrs.update`` would write zarr.json once per key, and a kill
            # between two of those writes separated the done planes from the id offset)
            self._array = self._array.update_attributes(
                {"napari_unet_done": sorted(self.done), **(attrs or {})}
            )

    def finish(self):
        """Return the in-memory array, or the output path once complete."""
        if self.kind == "memory":
            return self._array
        if self.kind == "tiff":
            import os

            self._array.flush()
            self._array = None
            os.replace(self._tmp, self.out)
        return self.out

"""Model files: safetensors weights plus JSON metadata, written atomically, never pickled.

A napari-unet model file is a standard ``.safetensors`` file whose header ``__metadata__`` holds
``"format": "napari-unet/1"`` and ``"napari_unet": <ModelMetadata JSON>``. Generic tensor files
(training checkpoints) use the same layout with ``"napari_unet_tensors": <JSON>`` instead.

Loading never unpickles: the header is parsed and checked here (sizes, dtypes, offsets, metadata,
exact state-dict names and shapes) before a single tensor is allocated.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save_file as _st_save_file

from napari_unet.devices import resolve_device
from napari_unet.errors import DeviceError, InputError, ModelFileError
from napari_unet.io.files import atomic_write
from napari_unet.model import UNet, UNetConfig

FORMAT = "napari-unet/1"
MODEL_KEY = "napari_unet"
TENSORS_KEY = "napari_unet_tensors"
MAX_HEADER_BYTES = 100 * 1024**2
MAX_METADATA_CHARS = 8 * 1024**2
_DTYPES: dict[str, tuple[int, torch.dtype]] = {
    "F64": (8, torch.float64), "F32": (4, torch.float32), "F16": (2, torch.float16),
    "BF16": (2, torch.bfloat16), "I64": (8, torch.int64), "I32": (4, torch.int32),
    "I16": (2, torch.int16), "I8": (1, torch.int8), "U8": (1, torch.uint8), "BOOL": (1, torch.bool),
    "U16": (2, torch.uint16), "U32": (4, torch.uint32), "U64": (8, torch.uint64),
}  # fmt: skip
_CODES = {dtype: code for code, (_, dtype) in _DTYPES.items()}
_MAGIC = [
    (b"PK\x03\x04", "it is a zip archive (a PyTorch .pt checkpoint or a bioimage.io package?)"),
    (b"\x89HDF\r\n\x1a\n", "it is an HDF5 file"),
    (b"II*\x00", "it is a TIFF image"), (b"MM\x00*", "it is a TIFF image"),
    (b"II+\x00", "it is a BigTIFF image"), (b"\x93NUMPY", "it is a NumPy .npy file"),
]  # fmt: skip


@dataclass
class ModelMetadata:
    """Everything besides the weights that a model file records.

    Parameters
    ----------
    architecture : the network's :class:`UNetConfig`.
    normalization : flat ``str -> float | str`` mapping describing the input normalisation,
        e.g. ``{"method": "percentile", "low": 1.0, "high": 99.8}``.
    class_names : one unique, non-empty name per output class.
    provenance : JSON-able mapping (steps, data shape, creation date, version, parent name, ...).
    postprocess : settings derived from the annotations that prediction uses without options
        (``min_size``, ``fill_holes``, ``object_diameter``; see
        :mod:`napari_unet.annotation.derived`).
        Files written before this field existed load with ``{}``.
    format_version : metadata format version (1).
    """

    architecture: UNetConfig
    normalization: dict
    class_names: list[str]
    provenance: dict
    postprocess: dict = field(default_factory=dict)
    format_version: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.architecture, dict):
            self.architecture = UNetConfig.from_dict(self.architecture)
        if not isinstance(self.architecture, UNetConfig):
            raise InputError("metadata architecture must be a UNetConfig")
        if type(self.format_version) is not int or self.format_version != 1:
            raise InputError(f"unsupported metadata format_version {self.format_version!r}")
        _check_normalization(self.normalization)
        names, num = self.class_names, self.architecture.num_classes
        if not isinstance(names, list) or not all(
            isinstance(n, str) and 0 < len(n) <= 128 for n in names
        ):
            raise InputError("metadata class_names must be a list of non-empty short strings")
        if len(names) != num or len(set(names)) != num:
            raise InputError(f"metadata needs {num} unique class names, got {names!r}")
        if not isinstance(self.provenance, dict):
            raise InputError("metadata provenance must be a mapping")
        if not isinstance(self.postprocess, dict):
            raise InputError("metadata postprocess must be a mapping")
        try:
            self.postprocess = json.loads(json.dumps(_finite(self.postprocess), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InputError(f"metadata postprocess is not JSON-able: {exc}") from None
        try:  # normalise (tuples -> lists, NaN -> None) so that a JSON round trip compares equal
            self.provenance = json.loads(json.dumps(_finite(self.provenance), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InputError(f"metadata provenance is not JSON-able: {exc}") from None

    def planes(self, *keys: str) -> list[tuple[int, ...]]:
        """Plane indices the provenance records under the first of ``keys`` present (e.g.
        ``"val_planes"``, the planes a run held out); [] when none."""
        for key in keys:
            planes = self.provenance.get(key)
            if isinstance(planes, list):
                return [tuple(int(i) for i in p) for p in planes]
        return []

    def to_json(self) -> str:
        """Strict JSON text (no NaN/Infinity)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["architecture"] = self.architecture.to_dict()
        return json.dumps(data, allow_nan=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse and validate; raises :class:`InputError` on unknown keys, wrong types or sizes."""
        if not isinstance(text, str) or len(text) > MAX_METADATA_CHARS:
            raise InputError("metadata must be a JSON string of at most 8 MiB")
        data = _strict_json(text)
        if not isinstance(data, dict):
            raise InputError("metadata must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown metadata keys: {', '.join(unknown)}")
        missing = sorted(known - {"format_version", "postprocess"} - set(data))
        if missing:
            raise InputError(f"missing metadata keys: {', '.join(missing)}")
        return cls(**data)


def _finite(value: Any) -> Any:
    """Replace non-finite floats (e.g. a diverged loss) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _check_normalization(norm: Any) -> None:
    if not isinstance(norm, dict) or len(norm) > 64:
        raise InputError("metadata normalization must be a mapping of at most 64 entries")
    for key, value in norm.items():
        if not isinstance(key, str) or not 0 < len(key) <= 64:
            raise InputError(f"metadata normalization key {key!r} must be a short string")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) or isinstance(value, str) and len(value) <= 256):
            raise InputError(f"metadata normalization {key!r} must be a number or a string")


def _strict_json(text: str | bytes) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict:
        out = dict(items)
        if len(out) != len(items):
            raise InputError("duplicate keys in JSON")
        return out

    def no_constants(name: str) -> Any:
        raise InputError(f"{name} is not valid JSON")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"invalid JSON ({exc})") from None


def _write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    clean: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise InputError(f"invalid tensor name {name!r}")
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _CODES:
            raise InputError(f"tensor {name!r} must be a torch.Tensor of a real or bool dtype")
        clean[name] = tensor.detach().to("cpu", copy=True).contiguous()  # no shared memory
    return atomic_write(path, lambda tmp: _st_save_file(clean, str(tmp), metadata=meta))


def save_model(path: str | os.PathLike, model: UNet, metadata: ModelMetadata) -> Path:
    """Write ``model``'s weights and ``metadata`` to ``path`` atomically; returns the path."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    if not isinstance(model, UNet) or not isinstance(metadata, ModelMetadata):
        raise InputError("save_model needs a UNet and a ModelMetadata")
    if model.config != metadata.architecture:
        raise InputError("the model's configuration differs from metadata.architecture")
    meta = {"format": FORMAT, MODEL_KEY: metadata.to_json()}
    return _write(path, model.state_dict(), meta)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write named tensors and a JSON-able ``metadata`` dict atomically (training checkpoints)."""
    if not isinstance(tensors, dict) or not isinstance(metadata, dict):
        raise InputError("save_tensors needs a dict of tensors and a metadata dict")
    try:
        text = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"checkpoint metadata is not JSON-able: {exc}") from None
    return _write(path, tensors, {"format": FORMAT, TENSORS_KEY: text})


def _refuse(path: Path, what: str, reason: str) -> ModelFileError:
    return ModelFileError(f"{path} is not a napari-unet {what} file: {reason}")


def _read(
    path: str | os.PathLike, what: str, check: Callable | None = None, data: bool = True
) -> tuple[dict, bytes]:
    """Validate the safetensors header, call ``check(entries, metadata)`` (which may raise),
    then read the whole file through the same handle if ``data``; returns (__metadata__, bytes)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a napari-unet {what} file")
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            first = handle.read(8)
            if size == 0:
                raise _refuse(path, what, "the file is empty")
            length = struct.unpack("<Q", first)[0] if len(first) == 8 else size
            opening = handle.read(1)  # a safetensors header is a JSON object
            if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8) or opening != b"{":
                raise _refuse(path, what, _sniff(first))
            header = opening + handle.read(length - 1)
            entries, meta = _parse_header(path, what, header, size - 8 - length)
            if check is not None:
                check(entries, meta)
            if not data:
                return meta, b""
            handle.seek(0)
            content = handle.read()
    except OSError as exc:
        raise ModelFileError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if len(content) != size or content[: 8 + length] != first + header:
        raise _refuse(path, what, "the file changed while it was read")
    return meta, content


def _sniff(first: bytes) -> str:
    """Why a file without a safetensors header was refused, naming well-known formats."""
    for magic, text in _MAGIC:
        if first.startswith(magic):
            return text
    if first[:1] == b"\x80" and first[1:2] in b"\x02\x03\x04\x05":
        return "it is a Python pickle (napari-unet never unpickles files)"
    return "no valid safetensors header (truncated or corrupt)"


def _parse_header(path: Path, what: str, header: bytes, data_size: int) -> tuple[dict, dict]:
    try:
        entries = _strict_json(header)
    except InputError as exc:
        raise _refuse(path, what, f"the header is not valid JSON ({exc})") from None
    if not isinstance(entries, dict):
        raise _refuse(path, what, "the header is not a JSON object")
    meta = entries.pop("__metadata__", None)
    if len(entries) > 100_000:
        raise _refuse(path, what, "too many tensors")
    spans = []
    for name, info in entries.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _refuse(path, what, f"malformed header entry for tensor {name!r}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise _refuse(path, what, f"tensor {name!r} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(map(_natural, shape)):
            raise _refuse(path, what, f"tensor {name!r} has an invalid shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_natural, offsets)):
            raise _refuse(path, what, f"tensor {name!r} has invalid data offsets")
        if offsets[1] - offsets[0] != _DTYPES[dtype][0] * math.prod(shape):
            raise _refuse(path, what, f"tensor {name!r}: byte size does not match shape {shape}")
        spans.append(tuple(offsets))
    cursor = 0
    for begin, end in sorted(spans):
        if begin != cursor:
            raise _refuse(path, what, "tensor data overlaps or has gaps")
        cursor = end
    if cursor != data_size:
        raise _refuse(path, what, f"the header describes {cursor} data bytes but the file "
                      f"holds {data_size} (truncated or corrupt)")  # fmt: skip
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _refuse(path, what, "it is a safetensors file without napari-unet metadata")
    if meta.get("format") != FORMAT:
        if str(meta.get("format", "")).startswith("napari-unet/"):
            raise _refuse(path, what, f"format {meta['format']!r} needs a newer napari-unet")
        raise _refuse(path, what, "it is a safetensors file without napari-unet metadata")
    return entries, meta


def _natural(value: Any) -> bool:
    return type(value) is int and value >= 0


def _metadata(path: str | os.PathLike, meta: dict) -> ModelMetadata:
    if MODEL_KEY not in meta:
        raise _refuse(Path(path), "model", "it holds tensors but no model metadata (a checkpoint?)")
    try:
        return ModelMetadata.from_json(meta[MODEL_KEY])
    except InputError as exc:
        raise _refuse(Path(path), "model", f"invalid metadata: {exc}") from None


def _tensors(path: str | os.PathLike, data: bytes, what: str) -> dict[str, torch.Tensor]:
    try:
        return _st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise _refuse(Path(path), what, f"the tensor data cannot be read ({exc})") from None


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    """The metadata of a model file; reads only the header, never the weights."""
    meta, _ = _read(path, "model", data=False)
    return _metadata(path, meta)


class _ShapeOnlyUNet(UNet):
    """A UNet that skips weight initialisation (random init on "meta" is needlessly slow)."""

    def reset_parameters(self) -> None:
        pass


def _check_model(path: str | os.PathLike, entries: dict, meta: dict) -> ModelMetadata:
    """Require the exact state-dict names, dtypes and shapes of the declared architecture."""
    metadata = _metadata(path, meta)
    with torch.device("meta"):  # shapes only, no memory
        expected = _ShapeOnlyUNet(metadata.architecture).state_dict()
    missing, extra = sorted(set(expected) - set(entries)), sorted(set(entries) - set(expected))
    if missing or extra:
        kind, names = ("missing", missing) if missing else ("unexpected", extra)
        raise _refuse(Path(path), "model", f"{kind} tensors {', '.join(names[:3])}")
    for name, tensor in expected.items():
        want = (_CODES.get(tensor.dtype), list(tensor.shape))
        got = (entries[name]["dtype"], entries[name]["shape"])
        if got != want:
            raise _refuse(Path(path), "model", f"tensor {name!r} is {got}, expected {want}")
    return metadata


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[UNet, ModelMetadata]:
    """Load a model file; returns the network (in eval mode, on ``device``) and its metadata."""
    target = resolve_device(device)
    found: list[ModelMetadata] = []
    meta, data = _read(path, "model", lambda e, m: found.append(_check_model(path, e, m)))
    state = _tensors(path, data, "model")
    del data
    model = UNet(found[0].architecture)
    model.load_state_dict(state, strict=True)
    del state
    return _to(model, target).eval(), found[0]


def load_tensors(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a :func:`save_tensors` file (or a model file); returns (tensors, metadata dict).

    With ``device="meta"`` only the header is read: the tensors have the stored dtypes and shapes
    but no data.
    """
    meta_only = str(device) == "meta"
    target = torch.device("meta") if meta_only else resolve_device(device)
    found: list[dict] = []
    shapes: dict[str, tuple[torch.dtype, list[int]]] = {}

    def check(entries: dict, meta: dict) -> None:
        text = meta.get(TENSORS_KEY, meta.get(MODEL_KEY))
        try:
            parsed = _strict_json(text) if isinstance(text, str) else None
        except InputError:
            parsed = None
        if not isinstance(parsed, dict):
            raise _refuse(Path(path), "tensor", "its metadata is missing or not a JSON object")
        found.append(parsed)
        shapes.update({k: (_DTYPES[v["dtype"]][1], v["shape"]) for k, v in entries.items()})

    _, data = _read(path, "tensor", check, data=not meta_only)
    if meta_only:
        shells = {k: torch.empty(v[1], dtype=v[0], device=target) for k, v in shapes.items()}
        return shells, found[0]
    tensors = _tensors(path, data, "tensor")
    return {name: _to(t, target) for name, t in tensors.items()}, found[0]


def _to(obj: Any, device: torch.device) -> Any:
    try:
        return obj.to(device)
    except (RuntimeError, AssertionError) as exc:  # e.g. "Torch not compiled with CUDA"
        raise DeviceError(f"cannot use device {device}: {exc}") from None

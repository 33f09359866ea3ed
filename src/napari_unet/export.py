"""Export a napari-unet model file to TorchScript, ONNX or a bioimage.io model package.

Every export takes a model file written by :func:`napari_unet.modelfile.save_model`, puts the
network in eval mode (dropout off, batch-norm running statistics) and writes its raw class scores
(logits, N x K x H' x W') for N x C x H x W float32 input. Inputs must already be normalised as the
model's metadata says, except in bioimage.io packages, which declare that normalisation as
preprocessing. Outputs are written atomically.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import warnings
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .errors import InputError, ModelFileError
from .files import atomic_write
from .model import UNet, UNetConfig, border, check_input_size, min_input_size
from .modelfile import ModelMetadata, load_model

ExportFormat = Literal["torchscript", "onnx", "bioimageio"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx", "bioimageio")
BIOIMAGEIO_FORMAT_VERSION = "0.5.3"
_EPS = 1e-6  # bioimage.io default epsilon of scale_range / zero_mean_unit_variance
_CITATION = {
    "text": "Ronneberger O., Fischer P., Brox T. (2015) U-Net: Convolutional Networks for "
    "Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.",
    "doi": "10.1007/978-3-319-24574-4_28",
}


def export_model(
    model_path: str | os.PathLike,
    fmt: ExportFormat,
    out_path: str | os.PathLike,
    tile: int | None = None,
) -> Path:
    """Export a model file.

    Parameters
    ----------
    model_path : a napari-unet model file.
    fmt : ``"torchscript"`` (a ``torch.jit`` archive), ``"onnx"`` (needs the ``onnx`` and
        ``onnxscript`` packages; height, width and batch are dynamic) or ``"bioimageio"``
        (a zip with ``rdf.yaml``, TorchScript weights, test tensors and documentation).
    out_path : the file to write; replaced atomically.
    tile : input edge of the example (tracing and test) tensor; a valid tile size of the
        network, by default the smallest one (at least 64 px for ``same`` padding).

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    InputError
        Unknown format or invalid tile size (:class:`TileSizeError`).
    ModelFileError
        Unreadable model file, unwritable output, missing ONNX packages or failed export.
    """
    fmt = str(fmt).lower()  # type: ignore[assignment]
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if Path(out_path).resolve() == Path(model_path).resolve():
        raise InputError(f"exporting to {out_path} would overwrite the model file itself")
    if fmt == "onnx":
        _require_onnx()
    model, metadata = load_model(model_path, "cpu")
    cfg = metadata.architecture
    size = default_tile(cfg) if tile is None else tile
    check_input_size(cfg, size)
    size = int(size)
    if fmt == "torchscript":
        data = _jit_bytes(_trace(model, cfg, size))
        return atomic_write(out_path, lambda tmp: tmp.write_bytes(data))
    if fmt == "onnx":
        return _export_onnx(model, cfg, size, Path(out_path))
    return _export_bioimageio(model, metadata, size, Path(model_path), Path(out_path))


def default_tile(config: UNetConfig) -> int:
    """The example tile edge used when none is given."""
    if config.padding == "same":
        step = 2**config.depth
        return max(step, -(-64 // step) * step)
    return min_input_size(config)


def _example(cfg: UNetConfig, size: int, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, cfg.in_channels, size, size, generator=generator)


def _trace(model: UNet, cfg: UNetConfig, size: int) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
        # group norm's "more than one value per channel" check is frozen; harmless in eval
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        return torch.jit.trace(model, _example(cfg, size), check_trace=False)


def _jit_bytes(traced: torch.jit.ScriptModule) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelFileError(
            f"ONNX export needs the {' and '.join(missing)} package(s): pip install onnx onnxscript"
        )


def _export_onnx(model: UNet, cfg: UNetConfig, size: int, out: Path) -> Path:
    dim = torch.export.Dim.AUTO

    def write(tmp: Path) -> None:
        # A batch of 2 keeps torch.export from specialising the batch axis to 1.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (_example(cfg, size, batch=2),),
                str(tmp),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: dim, 2: dim, 3: dim}},
                external_data=False,
                dynamo=True,
            )

    try:
        return atomic_write(out, write)
    except ModelFileError as exc:
        raise ModelFileError(f"ONNX export failed: {exc}") from exc


# --------------------------------------------------------------------------------------------
# bioimage.io
# --------------------------------------------------------------------------------------------


def _preprocessing(norm: dict) -> list[dict[str, Any]]:
    """The model's normalisation as bioimage.io 0.5 preprocessing steps."""
    method = str(norm.get("method", "none")).lower()
    axes = ["y", "x"]  # per sample and channel, as napari-unet normalises every plane
    if method in ("none", ""):
        return []
    if method in ("percentile", "minmax"):
        low, high = (0.0, 100.0) if method == "minmax" else (1.0, 99.8)
        try:
            low, high = float(norm.get("low", low)), float(norm.get("high", high))
        except ValueError:
            raise InputError(f"invalid percentiles in normalization {norm!r}") from None
        kwargs = {"axes": axes, "min_percentile": low, "max_percentile": high, "eps": _EPS}
        return [{"id": "scale_range", "kwargs": kwargs}]
    if method in ("zscore", "standardize", "mean_std", "meanstd"):
        return [{"id": "zero_mean_unit_variance", "kwargs": {"axes": axes, "eps": _EPS}}]
    raise InputError(
        f"normalization method {method!r} cannot be described in a bioimage.io package "
        "(supported: percentile, minmax, zscore, none)"
    )


def _apply(steps: list[dict[str, Any]], x: np.ndarray) -> np.ndarray:
    """Apply bioimage.io preprocessing steps (as :func:`_preprocessing` writes them) to NCYX."""
    x = x.astype(np.float64)
    for step in steps:
        kw = step["kwargs"]
        if step["id"] == "scale_range":
            q = [kw["min_percentile"], kw["max_percentile"]]
            lo, hi = np.percentile(x, q, axis=(2, 3), keepdims=True)
            x = (x - lo) / (hi - lo + kw["eps"])
        else:
            x = (x - x.mean(axis=(2, 3), keepdims=True)) / (
                x.std(axis=(2, 3), keepdims=True) + kw["eps"]
            )
    return x.astype(np.float32)


def _identifiers(names: list[str]) -> list[str]:
    """Class names as unique Python-style identifiers (bioimage.io channel names)."""
    out: list[str] = []
    for i, name in enumerate(names):
        ident = re.sub(r"\W+", "_", name.strip()) or f"class{i}"
        ident = f"_{ident}" if ident[0].isdigit() else ident
        out.append(ident if ident not in out else f"{ident}_{i}")
    return out


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _file(name: str, files: dict[str, bytes]) -> dict[str, str]:
    """A bioimage.io file description: package member and its SHA-256."""
    return {"source": name, "sha256": hashlib.sha256(files[name]).hexdigest()}


def _text(provenance: dict, key: str, default: str) -> str:
    value = provenance.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else default


def _rdf(metadata: ModelMetadata, steps: list, files: dict[str, bytes], name: str) -> dict:
    cfg, prov = metadata.architecture, metadata.provenance
    step = 2**cfg.depth
    space = [{"type": "space", "id": a, "size": {"min": min_input_size(cfg), "step": step}}
             for a in ("y", "x")]  # fmt: skip
    out_space = [{"type": "space", "id": a,
                  "size": {"tensor_id": "raw", "axis_id": a, "offset": -2 * border(cfg)}}
                 for a in ("y", "x")]  # fmt: skip
    description = (
        f"U-Net (Ronneberger et al. 2015) trained with napari-unet: depth {cfg.depth}, width "
        f"{cfg.width}, {cfg.padding} convolutions, classes: {', '.join(metadata.class_names)}. "
        "Outputs raw class scores (logits); take the argmax over channels for labels."
    )
    channels = [f"c{i}" for i in range(cfg.in_channels)]
    authors = prov.get("authors")
    if not (isinstance(authors, list) and authors and all(isinstance(a, str) for a in authors)):
        authors = [_text(prov, "author", "napari-unet user")]
    return {
        "format_version": BIOIMAGEIO_FORMAT_VERSION,
        "type": "model",
        "name": name,
        "description": _text(prov, "description", description),
        "authors": [{"name": author} for author in authors],
        "cite": [_CITATION],
        "license": _text(prov, "license", "CC-BY-4.0"),
        "documentation": "README.md",
        "tags": ["unet", "segmentation", "2d", "napari-unet", "pytorch"],
        "timestamp": _text(prov, "created", datetime.now(timezone.utc).isoformat()),
        "inputs": [
            {
                "id": "raw",
                "description": "image, C x Y x X per sample",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": channels},
                    *space,
                ],  # fmt: skip
                "data": {"type": "float32"},
                "test_tensor": _file("test_input.npy", files),
                "preprocessing": steps,
            }
        ],  # fmt: skip
        "outputs": [
            {
                "id": "logits",
                "description": "class scores (logits); the border lost by valid convolutions is "
                "expressed by the size offset",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": _identifiers(metadata.class_names)},
                    *out_space,
                ],  # fmt: skip
                "data": {"type": "float32"},
                "test_tensor": _file("test_output.npy", files),
            }
        ],  # fmt: skip
        "weights": {
            "torchscript": {
                **_file("weights.torchscript.pt", files),
                "pytorch_version": torch.__version__.split("+")[0],
            }
        },  # fmt: skip
        "config": {"napari_unet": json.loads(metadata.to_json())},
    }


def _export_bioimageio(
    model: UNet, metadata: ModelMetadata, size: int, source: Path, out: Path
) -> Path:
    cfg = metadata.architecture
    steps = _preprocessing(metadata.normalization)
    rng = np.random.default_rng(0)
    raw = (rng.random((1, cfg.in_channels, size, size)) * 1000.0).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(_apply(steps, raw))).numpy()
    name = re.sub(r"[^\w\-() ]+", " ", source.stem).strip()
    name = _text(metadata.provenance, "name", name if len(name) >= 5 else f"napari-unet {name}")
    files = {
        "weights.torchscript.pt": _jit_bytes(_trace(model, cfg, size)),
        "test_input.npy": _npy(raw),
        "test_output.npy": _npy(logits.astype(np.float32)),
        "README.md": (
            f"# {name}\n\nA U-Net (Ronneberger et al. 2015) exported by napari-unet.\n\n"
            f"Classes: {', '.join(metadata.class_names)}. Input tiles must have edges "
            f"{min_input_size(cfg)} + k * {2**cfg.depth}; each output edge is "
            f"{2 * border(cfg)} px smaller than the input edge.\n"
        ).encode(),
    }
    rdf = _rdf(metadata, steps, files, name)
    try:
        import yaml

        text = yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True)
    except ImportError:  # JSON is valid YAML
        text = json.dumps(rdf, indent=2)
    files = {"rdf.yaml": text.encode(), **files}

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for member, data in files.items():
                archive.writestr(member, data)

    return atomic_write(out, write)

"""Export a napari-unet model file to TorchScript, ONNX or a bioimage.io model package.

Every export takes a model file written by :func:`napari_unet.io.modelfile.save_model` and puts the
network in eval mode (dropout off, batch-norm running statistics). TorchScript and ONNX files
map N x C x H x W float32 input, normalised as the model's metadata says, to raw class scores
(logits, N x K x H' x W'); batch, height and width are free, for every valid tile size
(:func:`valid_sizes_text`). A bioimage.io package (format 0.5) declares the normalisation as
preprocessing and holds weights that end in a softmax over the classes, so that it maps a raw
tile to the class probabilities napari-unet computes for it (normalisation, network, softmax:
the forward pass of :mod:`napari_unet.inference.predictor` without test-time augmentation).

Libraries: torch (``torch.jit.trace``; ``torch.onnx`` with dynamo), onnx + onnxscript (ONNX)
and, to check the results, onnxruntime, bioimageio.spec and bioimageio.core (all in the
``export`` extra). Outputs are written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import shlex
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from napari_unet import __version__
from napari_unet.errors import InputError, ModelFileError
from napari_unet.io.files import atomic_write
from napari_unet.io.modelfile import ModelMetadata, load_model, read_metadata
from napari_unet.model import (
    UNet,
    UNetConfig,
    border,
    check_input_size,
    input_size_for_output,
    min_input_size,
)

ExportFormat = Literal["torchscript", "onnx", "bioimageio"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx", "bioimageio")
BIOIMAGEIO_FORMAT_VERSION = "0.5.3"  # every 0.5.x reader accepts it; the validator upgrades it
ONNX_OPSET = 18  # the lowest opset torch.onnx (dynamo) writes; onnxruntime >= 1.14 runs it
_EPS = 1e-6  # bioimage.io default epsilon of scale_range / zero_mean_unit_variance
_CITATION = {
    "text": "Ronneberger O., Fischer P., Brox T. (2015) U-Net: Convolutional Networks for "
    "Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
_PALETTE = np.array(
    [[0, 0, 0], [255, 215, 0], [0, 200, 255], [255, 80, 80], [120, 255, 120], [200, 120, 255]],
    dtype=np.float32,
)


def export_model(
    model_path: str | os.PathLike,
    fmt: ExportFormat,
    out_path: str | os.PathLike,
    tile: int | None = None,
    *,
    training_data: str | None = None,
    authors: Sequence[str] | None = None,
    sample: Any = None,
    onnx_weights: bool | None = None,
) -> Path:
    """Export a model file.

    Parameters
    ----------
    model_path : a napari-unet model file.
    fmt : ``"torchscript"`` (a ``torch.jit`` archive), ``"onnx"`` (needs the ``onnx`` and
        ``onnxscript`` packages; batch, height and width are dynamic) or ``"bioimageio"``
        (a zip with ``rdf.yaml``, TorchScript and ONNX weights, test and sample tensors, a
        cover image and documentation).
    out_path : the file to write; replaced atomically.
    tile : input edge of the example (tracing and test) tensor; a valid tile size of the
        network, by default the smallest one whose output is at least 64 px.
    training_data : bioimage.io only: what the model was trained on, in the user's words
        (stored as the package's training-data description and in its documentation).
    authors : bioimage.io only: who trained the model (default: the model file's
        provenance, else "napari-unet user").
    sample : bioimage.io only: a raw image (Y x X for one channel, else C x Y x X; leading
        axes are planes, the first is used), cropped at its centre to the tile, for the
        test, sample and cover images; by default a seeded random image.
    onnx_weights : bioimage.io only: add ONNX weights; by default when onnx and onnxscript
        are installed.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    InputError
        Unknown format, invalid tile size (:class:`TileSizeError`), unusable sample or a
        normalisation bioimage.io cannot describe.
    ModelFileError
        Unreadable model file, unwritable output, missing ONNX packages or failed export.
    """
    fmt = str(fmt).lower()  # type: ignore[assignment]
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if Path(out_path).resolve() == Path(model_path).resolve():
        raise InputError(f"exporting to {out_path} would overwrite the model file itself")
    if fmt == "onnx" or (fmt == "bioimageio" and onnx_weights):
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
        data = _onnx_bytes(model, cfg, size, metadata, output="logits")
        return atomic_write(out_path, lambda tmp: tmp.write_bytes(data))
    if onnx_weights is None:
        onnx_weights = onnx_available()
    package = _Package(
        metadata=metadata,
        size=size,
        name=_package_name(Path(model_path), metadata),
        training_data=training_data,
        authors=list(authors) if authors else None,
        onnx=onnx_weights,
    )
    return _export_bioimageio(model, package, sample, Path(out_path))


def default_tile(config: UNetConfig) -> int:
    """The example tile edge used when none is given: the smallest with >= 64 output pixels."""
    return input_size_for_output(config, 64)


def valid_sizes_text(config: UNetConfig) -> str:
    """The valid tile edges of a network in words, e.g. ``"44 + 4k (44, 48, 52, ...)"``."""
    low, step = min_input_size(config), 2**config.depth
    return f"{low} + {step}k ({low}, {low + step}, {low + 2 * step}, ...)"


def onnx_available() -> bool:
    """Whether the packages that ONNX export needs (onnx, onnxscript) are installed."""
    return not _missing_onnx()


def export_summary(model_path: str | os.PathLike, fmt: ExportFormat, out_path: Path) -> str:
    """One line for the user: what an export wrote, the valid tile sizes and how to check it."""
    cfg = read_metadata(model_path).architecture
    lost = 2 * border(cfg)
    sizes = f"tile edges {valid_sizes_text(cfg)}, " + (
        f"output {lost} px smaller" if lost else "output of the same size"
    )
    path = str(out_path)
    fmt = str(fmt).lower()  # type: ignore[assignment]
    if fmt == "torchscript":
        what = "TorchScript, logits of normalised input"
        check = f'python -c "import torch; torch.jit.load({path!r})"'
    elif fmt == "onnx":
        what = f"ONNX opset {ONNX_OPSET}, logits of normalised input"
        check = f'python -c "import onnx; onnx.checker.check_model({path!r}, full_check=True)"'
    else:
        with zipfile.ZipFile(out_path) as archive:
            names = set(archive.namelist())
        weights = " + ".join(
            label for member, label in (("weights.torchscript.pt", "TorchScript"),
                                        ("weights.onnx", "ONNX")) if member in names
        )  # fmt: skip
        what = f"bioimage.io package, {weights} weights, probabilities of the raw image"
        check = f"bioimageio test {shlex.quote(path)}"
    return f"wrote {path} ({what}; {sizes}); check it: {check}"


# --------------------------------------------------------------------------------------------
# TorchScript and ONNX
# --------------------------------------------------------------------------------------------


class _Probabilities(nn.Module):
    """The network followed by a softmax over the classes (the bioimage.io package's weights)."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def _example(cfg: UNetConfig, size: int, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, cfg.in_channels, size, size, generator=generator)


def _trace(model: nn.Module, cfg: UNetConfig, size: int) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
        # group norm's "more than one value per channel" check is frozen; harmless in eval
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        return torch.jit.trace(model.eval(), _example(cfg, size), check_trace=False)


def _jit_bytes(traced: torch.jit.ScriptModule) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _missing_onnx() -> list[str]:
    return [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]


def _require_onnx() -> None:
    missing = _missing_onnx()
    if missing:
        raise ModelFileError(
            f"ONNX export needs the {' and '.join(missing)} package(s): "
            "pip install 'napari-unet[export]'"
        )


@contextlib.contextmanager
def _quiet_torch_onnx():
    """Silence torch.onnx's progress lines and its notes about optional packages."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _onnx_bytes(
    model: nn.Module, cfg: UNetConfig, size: int, metadata: ModelMetadata, output: str
) -> bytes:
    """The model as an ONNX file (opset :data:`ONNX_OPSET`) with dynamic batch, height, width.

    ``metadata_props`` record the napari-unet metadata, the valid tile sizes and the output.
    """
    import onnx

    dim = torch.export.Dim.AUTO
    with tempfile.TemporaryDirectory(prefix="napari-unet-onnx") as folder:
        tmp = Path(folder) / "model.onnx"
        try:
            # A batch of 2 keeps torch.export from specialising the batch axis to 1.
            with torch.no_grad(), _quiet_torch_onnx():
                torch.onnx.export(
                    model.eval(),
                    (_example(cfg, size, batch=2),),
                    str(tmp),
                    input_names=["input"],
                    output_names=[output],
                    dynamic_shapes={"x": {0: dim, 2: dim, 3: dim}},
                    opset_version=ONNX_OPSET,
                    external_data=False,
                    dynamo=True,
                    verbose=False,
                )
            proto = onnx.load(str(tmp))
        except Exception as exc:  # torch.onnx raises many types; one line for the user
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelFileError(f"ONNX export failed: {reason}") from exc
    props = {
        "napari_unet": metadata.to_json(),
        "valid_tile_sizes": valid_sizes_text(cfg),
        "output": output,
        "producer": f"napari-unet {__version__}",
    }
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"U-Net (Ronneberger et al. 2015) exported by napari-unet {__version__}: input "
        f"N x {cfg.in_channels} x H x W with H, W in {valid_sizes_text(cfg)}; output N x "
        f"{cfg.num_classes} x (H - {2 * border(cfg)}) x (W - {2 * border(cfg)}) {output}."
    )
    return proto.SerializeToString()


# --------------------------------------------------------------------------------------------
# bioimage.io
# --------------------------------------------------------------------------------------------


class _Package:
    """What a bioimage.io package is made of besides the network."""

    def __init__(
        self,
        metadata: ModelMetadata,
        size: int,
        name: str,
        training_data: str | None,
        authors: list[str] | None,
        onnx: bool,
    ) -> None:
        self.metadata, self.size, self.name, self.onnx = metadata, size, name, onnx
        self.training_data = training_data.strip() if training_data else ""
        prov = metadata.provenance
        if not authors:
            listed = prov.get("authors")
            ok = isinstance(listed, list) and listed and all(isinstance(a, str) for a in listed)
            authors = listed if ok else [_text(prov, "author", "napari-unet user")]
        self.authors = [a.strip() for a in authors if a.strip()] or ["napari-unet user"]


def _package_name(source: Path, metadata: ModelMetadata) -> str:
    name = re.sub(r"[^\w\-() ]+", " ", source.stem).strip()
    return _text(metadata.provenance, "name", name if len(name) >= 5 else f"napari-unet {name}")


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


def _sample_tile(sample: Any, cfg: UNetConfig, size: int) -> np.ndarray:
    """A 1 x C x size x size float32 crop from the centre of the sample's first plane."""
    if sample is None:
        rng = np.random.default_rng(0)
        return (rng.random((1, cfg.in_channels, size, size)) * 1000.0).astype(np.float32)
    shape = tuple(getattr(sample, "shape", np.shape(sample)))
    kind = np.dtype(getattr(sample, "dtype", np.asarray(sample).dtype)).kind
    if kind not in "biuf" or len(shape) < 2:
        raise InputError(f"the sample must be an image of real numbers, got shape {shape}")
    lead = len(shape) - (2 if cfg.in_channels == 1 else 3)
    if lead < 0:
        raise InputError(f"the model expects {cfg.in_channels} channels (C x Y x X) but the "
                         f"sample has shape {shape}")  # fmt: skip
    plane = np.asarray(sample[(0,) * lead], dtype=np.float32)  # lazy arrays read one plane
    plane = plane[None] if cfg.in_channels == 1 else plane
    if plane.shape[0] != cfg.in_channels:
        raise InputError(
            f"the model expects {cfg.in_channels} channel(s) (C x Y x X) but the sample plane "
            f"has shape {plane.shape}"
        )
    height, width = plane.shape[-2:]
    if min(height, width) < size:
        raise InputError(f"the sample plane is {height} x {width} px; the tile needs "
                         f"{size} x {size} (choose a smaller --tile)")  # fmt: skip
    top, left = (height - size) // 2, (width - size) // 2
    tile = plane[:, top : top + size, left : left + size]
    if not np.all(np.isfinite(tile)):
        raise InputError("the sample holds NaN or infinite pixel values")
    return np.ascontiguousarray(tile[None])


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


def _tif(array: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(array))
    return buffer.getvalue()


def _cover(image: np.ndarray, probs: np.ndarray) -> bytes:
    """A 2:1 PNG: the (normalised) input's first channel, and the same with the argmax classes.

    ``image`` is C x Y x X and ``probs`` K x Y' x X' (Y' <= Y: the input is cropped to match).
    """
    from matplotlib.image import imsave

    height, width = probs.shape[-2:]
    top, left = (image.shape[-2] - height) // 2, (image.shape[-1] - width) // 2
    gray = image[0, top : top + height, left : left + width].astype(np.float64)
    lo, hi = np.percentile(gray, [1.0, 99.8])
    gray = np.clip((gray - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0) * 255.0
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    labels = probs.argmax(axis=0)
    colours = _PALETTE[1:][(labels - 1) % (len(_PALETTE) - 1)]
    overlay = np.where(labels[..., None] > 0, 0.45 * rgb + 0.55 * colours, rgb)
    canvas = np.concatenate([rgb, overlay], axis=1)
    scale = max(1, -(-256 // height))  # at least 256 px high, nearest-neighbour
    canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    imsave(buffer, np.clip(canvas, 0, 255).astype(np.uint8), format="png")
    return buffer.getvalue()


def _file(name: str, files: dict[str, bytes]) -> dict[str, str]:
    """A bioimage.io file description: package member and its SHA-256."""
    return {"source": name, "sha256": hashlib.sha256(files[name]).hexdigest()}


def _text(provenance: dict, key: str, default: str) -> str:
    value = provenance.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else default


def _training_summary(prov: dict) -> str:
    """What the model file records about its training, in one sentence."""
    parts = []
    if isinstance(prov.get("planes"), int):
        shapes = prov.get("plane_shapes") or []
        shown = ", ".join("x".join(str(n) for n in s) for s in shapes[:4] if isinstance(s, list))
        parts.append(f"{prov['planes']} annotated plane(s)" + (f" ({shown})" if shown else ""))
    if isinstance(prov.get("steps"), int):
        parts.append(f"{prov['steps']} training steps")
    if isinstance(prov.get("annotation_mode"), str):
        parts.append(f"{prov['annotation_mode']} annotations")
    if prov.get("parent_model"):
        parts.append(f"fine-tuned from {prov['parent_model']}")
    return ("Recorded by napari-unet: " + ", ".join(parts) + ".") if parts else ""


def _readme(package: _Package, steps: list) -> bytes:
    md, cfg = package.metadata, package.metadata.architecture
    pre = ", ".join(f"{s['id']} {s['kwargs']}" for s in steps) or "none"
    training = "\n\n".join(
        part
        for part in (package.training_data or "Not described by the exporter.",
                     _training_summary(md.provenance))
        if part
    )  # fmt: skip
    weights = "TorchScript" + (" and ONNX" if package.onnx else "")
    text = f"""# {package.name}

A U-Net (Ronneberger et al. 2015) trained and exported with napari-unet {__version__}.

- Input `raw`: batch x {cfg.in_channels} channel(s) x Y x X, float32, the raw image.
  Tile edges Y, X: {valid_sizes_text(cfg)}.
- Preprocessing: {pre} (each channel of each sample on its own; napari-unet's normalisation).
- Output `probabilities`: batch x {cfg.num_classes} classes ({", ".join(md.class_names)}) x
  (Y - {2 * border(cfg)}) x (X - {2 * border(cfg)}): softmax class probabilities (the softmax
  is part of the weights; no postprocessing). Take the argmax over the classes for labels.
- Network: depth {cfg.depth}, width {cfg.width}, {cfg.padding} convolutions, {cfg.norm} norm.
- Weights: {weights}, equivalent.

## Training data

{training}

## Validation

The test output is what napari-unet computes for the test input (its normalisation, the
network and a softmax, as `napari-unet predict --probabilities` does for each tile); both
weight formats reproduce it. Check the package with `bioimageio test <package>.zip`
(bioimageio.core).

## Citation

{_CITATION["text"]} doi:{_CITATION["doi"]}
"""
    return text.encode()


def _rdf(package: _Package, steps: list, files: dict[str, bytes]) -> dict:
    md = package.metadata
    cfg, prov = md.architecture, md.provenance
    step = 2**cfg.depth
    space = [{"type": "space", "id": a, "size": {"min": min_input_size(cfg), "step": step}}
             for a in ("y", "x")]  # fmt: skip
    out_space = [{"type": "space", "id": a,
                  "size": {"tensor_id": "raw", "axis_id": a, "offset": -2 * border(cfg)}}
                 for a in ("y", "x")]  # fmt: skip
    description = (
        f"U-Net (Ronneberger et al. 2015) trained with napari-unet: depth {cfg.depth}, width "
        f"{cfg.width}, {cfg.padding} convolutions, classes: {', '.join(md.class_names)}. "
        "Outputs class probabilities; take the argmax over channels for labels."
    )
    authors = [{"name": author} for author in package.authors]
    training = package.training_data or "Not described by the exporter."
    summary = _training_summary(prov)
    weights: dict[str, Any] = {
        "torchscript": {
            **_file("weights.torchscript.pt", files),
            "pytorch_version": torch.__version__.split("+")[0],
            "authors": authors,
            "comment": f"traced by napari-unet {__version__}; ends in a softmax over classes",
        }
    }
    if package.onnx:
        weights["onnx"] = {
            **_file("weights.onnx", files),
            "opset_version": ONNX_OPSET,
            "parent": "torchscript",
            "comment": f"exported by torch.onnx {torch.__version__.split('+')[0]} (dynamo)",
        }
    return {
        "format_version": BIOIMAGEIO_FORMAT_VERSION,
        "type": "model",
        "name": package.name,
        "description": _text(prov, "description", description),
        "authors": authors,
        "cite": [_CITATION],
        "license": _text(prov, "license", "CC-BY-4.0"),
        "documentation": _file("README.md", files)["source"],
        "covers": ["cover.png"],
        "tags": ["unet", "segmentation", "2d", "napari-unet", "pytorch", "semantic-segmentation"],
        "timestamp": _text(prov, "created", datetime.now(timezone.utc).isoformat()),
        "training_data": {
            "type": "dataset",
            "format_version": "0.3.0",
            "name": f"Training data of {package.name}"[:128],
            "description": f"{training} {summary}".strip(),
            "authors": authors,
            "cite": [_CITATION],
            "license": _text(prov, "license", "CC-BY-4.0"),
            "documentation": "README.md",
            "tags": ["napari-unet", "training-data"],
        },
        "inputs": [
            {
                "id": "raw",
                "description": "raw image, C x Y x X per sample",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": [f"c{i}" for i in range(cfg.in_channels)]},
                    *space,
                ],  # fmt: skip
                "data": {"type": "float32"},
                "test_tensor": _file("test_input.npy", files),
                "sample_tensor": _file("sample_input.tif", files),
                "preprocessing": steps,
            }
        ],  # fmt: skip
        "outputs": [
            {
                "id": "probabilities",
                "description": "softmax class probabilities; the border lost by valid "
                "convolutions is expressed by the size offset",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": _identifiers(md.class_names)},
                    *out_space,
                ],  # fmt: skip
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "test_tensor": _file("test_output.npy", files),
                "sample_tensor": _file("sample_output.tif", files),
            }
        ],  # fmt: skip
        "weights": weights,
        "config": {"napari_unet": json.loads(md.to_json())},
    }


def _export_bioimageio(model: UNet, package: _Package, sample: Any, out: Path) -> Path:
    cfg, size = package.metadata.architecture, package.size
    steps = _preprocessing(package.metadata.normalization)
    raw = _sample_tile(sample, cfg, size)
    net = _Probabilities(model).eval()
    with torch.no_grad():
        probs = net(torch.from_numpy(_apply(steps, raw))).numpy().astype(np.float32)
    files = {
        "weights.torchscript.pt": _jit_bytes(_trace(net, cfg, size)),
        "test_input.npy": _npy(raw),
        "test_output.npy": _npy(probs),
        "sample_input.tif": _tif(raw[0, 0] if cfg.in_channels == 1 else raw[0]),
        "sample_output.tif": _tif(probs[0]),
        "cover.png": _cover(_apply(steps, raw)[0], probs[0]),
        "README.md": _readme(package, steps),
    }
    if package.onnx:
        files["weights.onnx"] = _onnx_bytes(net, cfg, size, package.metadata, "probabilities")
    rdf = _rdf(package, steps, files)
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

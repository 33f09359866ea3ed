"""Tests for napari_unet.io.export: TorchScript, ONNX and bioimage.io packages.

ONNX files are run by onnxruntime, bioimage.io packages are checked by the bioimage.io tools
themselves (bioimageio.spec's validator and bioimageio.core's model test). These packages come
with the ``export`` extra; the tests fail, not skip, without them.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from pathlib import Path

import bioimageio.core
import bioimageio.spec
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml

from napari_unet.errors import InputError, ModelFileError, TileSizeError
from napari_unet.io import export
from napari_unet.io.export import default_tile, export_model, export_summary
from napari_unet.io.modelfile import ModelMetadata, save_model
from napari_unet.model import PRESETS, UNet, UNetConfig, border, min_input_size
from napari_unet.normalization import normalize_plane

VALID = UNetConfig(width=4, depth=2, norm="batch", dropout=0.2)
SMALL = PRESETS["small"]  # width 16, depth 3, valid padding, batch norm
SAME = UNetConfig(in_channels=2, num_classes=3, width=8, depth=2, padding="same", norm="group")
PERCENTILE = {"method": "percentile", "low": 1.0, "high": 99.8}
TRAINING_DATA = "Three phase-contrast planes of U373 cells, 96 x 96 px, painted in napari."

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save(
    folder: Path, cfg: UNetConfig, normalization: dict | None = None, name: str = "tiny"
) -> tuple[Path, UNet]:
    torch.manual_seed(0)
    model = UNet(cfg)
    metadata = ModelMetadata(
        architecture=cfg,
        normalization=PERCENTILE if normalization is None else normalization,
        class_names=["background", "cell wall", "1 nucleus"][: cfg.num_classes],
        provenance={
            "steps": 5,
            "planes": 3,
            "plane_shapes": [[cfg.in_channels, 96, 96]],
            "created": "2024-05-01T12:00:00",
        },  # fmt: skip
    )
    return save_model(folder / f"{name}.safetensors", model, metadata), model.eval()


def _jit_load(source) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(source)


def _ours(model: UNet, raw: np.ndarray) -> np.ndarray:
    """What napari-unet computes for raw N x C x Y x X tiles: its normalisation, the network,
    a softmax (predict.py's forward pass for one tile, no test-time augmentation)."""
    x = np.stack([normalize_plane(plane) for plane in raw])
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


def _valid_sizes(cfg: UNetConfig, up_to: int) -> list[int]:
    return list(range(min_input_size(cfg), up_to + 1, 2**cfg.depth))


@pytest.fixture
def valid_model(tmp_path):
    return _save(tmp_path, VALID)


# --------------------------------------------------------------------------------------------
# TorchScript and errors
# --------------------------------------------------------------------------------------------


def test_torchscript_matches_the_model(valid_model, tmp_path):
    path, model = valid_model
    out = export_model(path, "torchscript", tmp_path / "tiny.pt")
    scripted = _jit_load(str(out))
    size = min_input_size(VALID)
    for shape in [(1, 1, size, size), (2, 1, size + 8, size + 4)]:  # other valid sizes too
        x = torch.rand(shape)
        with torch.no_grad():
            assert torch.allclose(scripted(x), model(x), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt", "tiny.safetensors"]
    line = export_summary(path, "torchscript", out)
    assert "\n" not in line and "44 + 4k (44, 48, 52, ...)" in line and "40 px smaller" in line
    assert "torch.jit.load" in line


def test_export_errors(valid_model, tmp_path):
    path, _ = valid_model
    with pytest.raises(InputError, match="unknown export format"):
        export_model(path, "keras", tmp_path / "x")
    with pytest.raises(TileSizeError, match="nearest valid sizes"):
        export_model(path, "torchscript", tmp_path / "x", tile=min_input_size(VALID) + 1)
    with pytest.raises(ModelFileError, match="does not exist"):
        export_model(path, "torchscript", tmp_path / "nowhere" / "x.pt")
    with pytest.raises(InputError, match="overwrite"):
        export_model(path, "torchscript", path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="bad.safetensors"):
        export_model(bad, "bioimageio", tmp_path / "x.zip")
    with pytest.raises(ModelFileError, match="does not exist"):
        export_model(tmp_path / "absent.safetensors", "torchscript", tmp_path / "x.pt")
    package = tmp_path / "x.zip"
    with pytest.raises(InputError, match=r"sample plane is 50 x 50 px; the tile needs 104"):
        export_model(path, "bioimageio", package, sample=np.ones((50, 50)), onnx_weights=False)
    two, _ = _save(tmp_path, SAME, name="two")
    with pytest.raises(InputError, match=r"expects 2 channel\(s\)"):
        export_model(two, "bioimageio", package, sample=np.ones((3, 64, 64)), onnx_weights=False)
    with pytest.raises(InputError, match="NaN"):
        sample = np.full((120, 120), np.nan)
        export_model(path, "bioimageio", package, sample=sample, onnx_weights=False)
    assert not package.exists()


def test_onnx_without_packages_says_what_to_install(valid_model, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_missing_onnx", lambda: ["onnxscript"])
    with pytest.raises(ModelFileError, match=r"pip install 'napari-unet\[export\]'"):
        export_model(valid_model[0], "onnx", tmp_path / "tiny.onnx")
    assert not (tmp_path / "tiny.onnx").exists()
    # a bioimage.io package then holds TorchScript weights only
    out = export_model(valid_model[0], "bioimageio", tmp_path / "tiny.zip")
    rdf, files = _package(out)
    assert list(rdf["weights"]) == ["torchscript"] and "weights.onnx" not in files
    assert "TorchScript weights" in export_summary(valid_model[0], "bioimageio", out)


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    path, model = _save(folder, VALID)
    out = export_model(path, "onnx", folder / "tiny.onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return path, model, out, session


def _run(session: onnxruntime.InferenceSession, x: np.ndarray) -> np.ndarray:
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    return got


def test_onnx_export_is_valid_and_described(onnx_export):
    path, _, out, session = onnx_export
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["valid_tile_sizes"] == "44 + 4k (44, 48, 52, ...)"
    assert props["output"] == "logits" and '"class_names"' in props["napari_unet"]
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name) == ("input", "logits")
    assert all(isinstance(d, str) for d in (inp.shape[0], inp.shape[2], inp.shape[3]))  # dynamic
    line = export_summary(path, "onnx", out)
    assert "ONNX opset 18" in line and "onnx.checker.check_model" in line


def test_onnx_matches_torch_for_two_sizes_and_batches(onnx_export):
    _, model, _, session = onnx_export
    rng = np.random.default_rng(0)
    for height, width in [(default_tile(VALID), default_tile(VALID)), (60, 84)]:
        for batch in (1, 2):
            x = rng.random((batch, 1, height, width), dtype=np.float32)
            got = _run(session, x)
            with torch.no_grad():
                want = model(torch.from_numpy(x)).numpy()
            assert got.shape == (batch, 2, height - 40, width - 40)
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_onnx_takes_every_valid_tile_size(onnx_export):
    _, model, _, session = onnx_export
    sizes = _valid_sizes(VALID, 160)  # 44, 48, ..., 160: 30 sizes, each as height and width
    rng = np.random.default_rng(1)
    for height, width in zip(sizes, sizes[::-1], strict=True):
        x = rng.random((1, 1, height, width), dtype=np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(_run(session, x), want, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# bioimage.io
# --------------------------------------------------------------------------------------------


def _package(path: Path) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return yaml.safe_load(files["rdf.yaml"]), files


def _npy(files: dict[str, bytes], name: str) -> np.ndarray:
    return np.load(io.BytesIO(files[name]), allow_pickle=False)


def _check_package(rdf: dict, files: dict[str, bytes], model: UNet, cfg: UNetConfig) -> None:
    """Checks of our own, independent of the bioimage.io libraries."""
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    for entry in rdf["weights"].values():
        assert sha[entry["source"]] == entry["sha256"]
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    for tensor in (inp, out):
        assert sha[tensor["test_tensor"]["source"]] == tensor["test_tensor"]["sha256"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert inp["axes"][2]["size"] == {"min": min_input_size(cfg), "step": 2**cfg.depth}
    offset = -2 * border(cfg)
    assert out["axes"][3]["size"] == {"tensor_id": "raw", "axis_id": "x", "offset": offset}
    assert len(out["axes"][1]["channel_names"]) == cfg.num_classes
    assert all(name.isidentifier() for name in out["axes"][1]["channel_names"])
    assert "postprocessing" not in out  # the softmax is part of the weights
    raw = _npy(files, inp["test_tensor"]["source"])
    expected = _npy(files, out["test_tensor"]["source"])
    x = raw.astype(np.float64)
    for step in inp["preprocessing"]:  # the bioimage.io definitions
        kw = step["kwargs"]
        assert kw["axes"] == ["y", "x"]  # every channel of every sample on its own
        if step["id"] == "scale_range":
            q = [kw["min_percentile"], kw["max_percentile"]]
            lo, hi = np.percentile(x, q, axis=(2, 3), keepdims=True)
            x = (x - lo) / (hi - lo + kw["eps"])
        else:
            assert step["id"] == "zero_mean_unit_variance"
            mean, std = x.mean(axis=(2, 3), keepdims=True), x.std(axis=(2, 3), keepdims=True)
            x = (x - mean) / (std + kw["eps"])
    x = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        ours = torch.softmax(model(x), dim=1).numpy()
        scripted = _jit_load(io.BytesIO(files[rdf["weights"]["torchscript"]["source"]]))
        theirs = scripted(x).numpy()
    assert expected.shape == ours.shape
    np.testing.assert_allclose(expected, ours, atol=1e-5)
    np.testing.assert_allclose(expected, theirs, atol=1e-5)


def _validate(path: Path) -> bioimageio.spec.ValidationSummary:
    """bioimageio.spec's validator, with the file checks (hashes, readable tensors, images)."""
    description = bioimageio.spec.load_description(path, perform_io_checks=True)
    summary = description.validation_summary
    assert summary.status == "valid-format", summary.display() or summary.format()
    assert isinstance(description, bioimageio.spec.model.v0_5.ModelDescr)
    return summary


def _test_model(path: Path) -> bioimageio.spec.ValidationSummary:
    """bioimageio.core's model test: every weight format reproduces the test outputs from the
    test inputs, and runs for batch 1 and 2 at three tile sizes."""
    summary = bioimageio.core.test_model(path)
    assert summary.status == "passed", summary.format()
    names = [d.name for d in summary.details]
    for fmt in ("torchscript", "onnx"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in names
    return summary


@pytest.fixture(scope="module")
def small_package(tmp_path_factory):
    """The small preset, exported with a real-looking sample and the user's words."""
    from napari_unet.sample_data import CellSampleConfig, make_cell_stack

    folder = tmp_path_factory.mktemp("small")
    path, model = _save(folder, SMALL, name="small-preset")
    image, _ = make_cell_stack(1, CellSampleConfig(shape=(200, 200), n_cells=12), seed=3)
    out = export_model(
        path,
        "bioimageio",
        folder / "small.zip",
        training_data=TRAINING_DATA,
        authors=["Ada Lovelace", "Alan Turing"],
        sample=image * 3000.0,
    )
    return path, model, out


@pytest.fixture(scope="module")
def same_package(tmp_path_factory):
    """A 2-channel, 3-class, same-padding network with group norm."""
    folder = tmp_path_factory.mktemp("same")
    path, model = _save(folder, SAME, name="two-channels")
    return path, model, export_model(path, "bioimageio", folder / "same.zip", tile=32)


def test_bioimageio_small_preset_package(small_package):
    path, model, out = small_package
    rdf, files = _package(out)
    assert set(files) == {"rdf.yaml", "README.md", "cover.png", "weights.torchscript.pt",
                          "weights.onnx", "test_input.npy", "test_output.npy",
                          "sample_input.tif", "sample_output.tif"}  # fmt: skip
    assert rdf["format_version"] == "0.5.3" and rdf["type"] == "model"
    assert rdf["name"] == "small-preset"
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"  # Ronneberger et al. 2015
    assert "U-Net" in rdf["cite"][0]["text"]
    assert [a["name"] for a in rdf["authors"]] == ["Ada Lovelace", "Alan Turing"]
    assert rdf["training_data"]["description"].startswith(TRAINING_DATA)
    assert "3 annotated plane(s)" in rdf["training_data"]["description"]
    assert rdf["weights"]["onnx"]["parent"] == "torchscript"
    assert rdf["weights"]["onnx"]["opset_version"] == 18
    assert rdf["covers"] == ["cover.png"] and files["cover.png"].startswith(b"\x89PNG")
    readme = files[rdf["documentation"]].decode()
    for part in ("## Training data", TRAINING_DATA, "## Validation", "92 + 8k", "Ronneberger"):
        assert part in readme, part
    assert rdf["inputs"][0]["preprocessing"][0]["kwargs"]["max_percentile"] == 99.8
    assert rdf["config"]["napari_unet"]["class_names"] == ["background", "cell wall"]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "cell_wall"]
    tile = default_tile(SMALL)  # 156: output 68 px
    assert _npy(files, "test_input.npy").shape == (1, 1, tile, tile)
    assert _npy(files, "test_output.npy").shape == (1, 2, 68, 68)
    _check_package(rdf, files, model, SMALL)
    line = export_summary(path, "bioimageio", out)
    assert "TorchScript + ONNX weights" in line and line.endswith(f"bioimageio test {out}")


def test_bioimageio_small_preset_passes_the_bioimageio_tools(small_package):
    _, _, out = small_package
    summary = _validate(out)
    assert summary.format_version == "0.5.12"  # the validator's format; 0.5.3 is upgraded
    _test_model(out)


def test_bioimageio_two_channel_three_class_package(same_package):
    _, model, out = same_package
    rdf, files = _package(out)
    assert [a["channel_names"] for a in rdf["inputs"][0]["axes"][1:2]] == [["c0", "c1"]]
    names = rdf["outputs"][0]["axes"][1]["channel_names"]
    assert names == ["background", "cell_wall", "_1_nucleus"]
    assert _npy(files, "test_output.npy").shape == (1, 3, 32, 32)
    _check_package(rdf, files, model, SAME)
    _validate(out)
    _test_model(out)


@pytest.mark.parametrize("which", ["small", "same"])
def test_bioimageio_outputs_equal_ours(which, small_package, same_package):
    """bioimageio.core's prediction (its preprocessing, our weights) on a raw image of another
    valid size gives napari-unet's probabilities for the same raw image, for both weights."""
    _, model, out = small_package if which == "small" else same_package
    cfg = model.config
    height = default_tile(cfg) + 2 * 2**cfg.depth
    width = default_tile(cfg) + 3 * 2**cfg.depth
    rng = np.random.default_rng(5)
    raw = (rng.gamma(2.0, 300.0, (1, cfg.in_channels, height, width))).astype(np.float32)
    description = bioimageio.core.load_model_description(out)
    for fmt in ("torchscript", "onnx"):
        pipeline = bioimageio.core.create_prediction_pipeline(description, weight_format=fmt)
        sample = bioimageio.core.predict(model=pipeline, inputs={"raw": raw})
        theirs = sample.members["probabilities"].data.to_numpy()
        np.testing.assert_allclose(theirs, _ours(model, raw), atol=1e-4, rtol=0)


def test_bioimageio_zscore_and_trace_generalise(tmp_path):
    path, model = _save(tmp_path, SAME, normalization={"method": "zscore"})
    out = export_model(path, "bioimageio", tmp_path / "z.zip", tile=32, onnx_weights=False)
    rdf, files = _package(out)
    assert [step["id"] for step in rdf["inputs"][0]["preprocessing"]] == ["zero_mean_unit_variance"]
    _check_package(rdf, files, model, SAME)
    _validate(out)
    scripted = _jit_load(io.BytesIO(files["weights.torchscript.pt"]))
    x = torch.rand(2, 2, 48, 40)  # the trace generalises to other sizes
    with torch.no_grad():
        assert torch.allclose(scripted(x), torch.softmax(model(x), dim=1), atol=1e-5)


def test_bioimageio_without_normalization(tmp_path):
    path, model = _save(tmp_path, VALID, normalization={})
    out = export_model(path, "BioImageIO", tmp_path / "plain.zip", onnx_weights=False)
    rdf, files = _package(out)
    assert rdf["inputs"][0]["preprocessing"] == []
    assert rdf["training_data"]["description"].startswith("Not described by the exporter.")
    _check_package(rdf, files, model, VALID)


def test_bioimageio_refuses_unknown_normalization(tmp_path):
    path, _ = _save(tmp_path, VALID, normalization={"method": "histogram-equalize"})
    with pytest.raises(InputError, match="histogram-equalize"):
        export_model(path, "bioimageio", tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()

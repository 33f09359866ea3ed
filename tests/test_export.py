"""Tests for napari_unet.export: TorchScript, ONNX and bioimage.io packages."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_unet.errors import InputError, ModelFileError, TileSizeError
from napari_unet.export import default_tile, export_model
from napari_unet.model import UNet, UNetConfig, border, min_input_size
from napari_unet.modelfile import ModelMetadata, save_model

VALID = UNetConfig(width=4, depth=2, norm="batch", dropout=0.2)
SAME = UNetConfig(in_channels=2, num_classes=3, width=8, depth=2, padding="same", norm="group")
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))


def _save(tmp_path: Path, cfg: UNetConfig, normalization: dict | None = None) -> tuple[Path, UNet]:
    torch.manual_seed(0)
    model = UNet(cfg)
    metadata = ModelMetadata(
        architecture=cfg,
        normalization={"method": "percentile", "low": 1.0, "high": 99.8}
        if normalization is None
        else normalization,
        class_names=["background", "cell wall", "1 nucleus"][: cfg.num_classes],
        provenance={"steps": 5, "created": "2024-05-01T12:00:00"},
    )
    return save_model(tmp_path / "tiny.safetensors", model, metadata), model.eval()


def _jit_load(source) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(source)


@pytest.fixture
def valid_model(tmp_path):
    return _save(tmp_path, VALID)


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


@pytest.mark.skipif(HAS_ONNX, reason="onnx and onnxscript are installed")
def test_onnx_without_packages_says_what_to_install(valid_model, tmp_path):
    with pytest.raises(ModelFileError, match="pip install onnx onnxscript"):
        export_model(valid_model[0], "onnx", tmp_path / "tiny.onnx")
    assert not (tmp_path / "tiny.onnx").exists()


@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx and onnxscript")
def test_onnx_export_is_valid(valid_model, tmp_path):
    import onnx

    out = export_model(valid_model[0], "onnx", tmp_path / "tiny.onnx")
    onnx.checker.check_model(onnx.load(str(out)))
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        size = min_input_size(VALID) + 8  # a size other than the example's
        x = np.random.default_rng(0).random((3, 1, size, size), dtype=np.float32)
        (got,) = session.run(None, {session.get_inputs()[0].name: x})
        with torch.no_grad():
            want = valid_model[1](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


def _package(path: Path) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return yaml.safe_load(files["rdf.yaml"]), files


def _check_package(rdf: dict, files: dict[str, bytes], model: UNet, cfg: UNetConfig) -> None:
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    weights = rdf["weights"]["torchscript"]
    assert sha[weights["source"]] == weights["sha256"]
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    for tensor in (inp, out):
        assert sha[tensor["test_tensor"]["source"]] == tensor["test_tensor"]["sha256"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert inp["axes"][2]["size"] == {"min": min_input_size(cfg), "step": 2**cfg.depth}
    offset = -2 * border(cfg)
    assert out["axes"][3]["size"] == {"tensor_id": "raw", "axis_id": "x", "offset": offset}
    assert len(out["axes"][1]["channel_names"]) == cfg.num_classes
    assert all(name.isidentifier() for name in out["axes"][1]["channel_names"])
    raw = np.load(io.BytesIO(files[inp["test_tensor"]["source"]]), allow_pickle=False)
    expected = np.load(io.BytesIO(files[out["test_tensor"]["source"]]), allow_pickle=False)
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
    with torch.no_grad():
        ours = model(torch.from_numpy(x.astype(np.float32))).numpy()
        scripted = _jit_load(io.BytesIO(files[weights["source"]]))
        theirs = scripted(torch.from_numpy(x.astype(np.float32)))
    assert expected.shape == ours.shape
    np.testing.assert_allclose(expected, ours, atol=1e-5)
    np.testing.assert_allclose(expected, theirs.numpy(), atol=1e-5)


def test_bioimageio_package(valid_model, tmp_path):
    path, model = valid_model
    out = export_model(path, "bioimageio", tmp_path / "tiny.zip")
    rdf, files = _package(out)
    assert set(files) == {"rdf.yaml", "README.md", "weights.torchscript.pt",
                          "test_input.npy", "test_output.npy"}  # fmt: skip
    assert rdf["format_version"] == "0.5.3" and rdf["type"] == "model"
    for key in ("name", "description", "authors", "cite", "license", "documentation"):
        assert rdf[key], key
    assert rdf["documentation"] in files
    assert rdf["inputs"][0]["preprocessing"][0]["kwargs"]["max_percentile"] == 99.8
    assert rdf["config"]["napari_unet"]["class_names"] == ["background", "cell wall"]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "cell_wall"]
    tile = default_tile(VALID)
    assert np.load(io.BytesIO(files["test_input.npy"])).shape == (1, 1, tile, tile)
    _check_package(rdf, files, model, VALID)


def test_bioimageio_same_padding_with_zscore(tmp_path):
    path, model = _save(tmp_path, SAME, normalization={"method": "zscore"})
    out = export_model(path, "bioimageio", tmp_path / "same.zip", tile=32)
    rdf, files = _package(out)
    assert [step["id"] for step in rdf["inputs"][0]["preprocessing"]] == ["zero_mean_unit_variance"]
    names = rdf["outputs"][0]["axes"][1]["channel_names"]
    assert names == ["background", "cell_wall", "_1_nucleus"]
    assert np.load(io.BytesIO(files["test_output.npy"])).shape == (1, 3, 32, 32)
    _check_package(rdf, files, model, SAME)
    scripted = _jit_load(io.BytesIO(files["weights.torchscript.pt"]))
    x = torch.rand(2, 2, 48, 40)  # the trace generalises to other sizes
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_bioimageio_without_normalization(tmp_path):
    path, model = _save(tmp_path, VALID, normalization={})
    rdf, files = _package(export_model(path, "BioImageIO", tmp_path / "plain.zip"))
    assert rdf["inputs"][0]["preprocessing"] == []
    _check_package(rdf, files, model, VALID)


def test_bioimageio_refuses_unknown_normalization(tmp_path):
    path, _ = _save(tmp_path, VALID, normalization={"method": "histogram-equalize"})
    with pytest.raises(InputError, match="histogram-equalize"):
        export_model(path, "bioimageio", tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()

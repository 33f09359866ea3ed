"""Tests for napari_unet.io.export_check: the verdict shown after an export (CLI --check, 5 Export).

Real exports of a tiny network; a corrupted package and a file of another network must fail.
bioimage.io packages are exported without ONNX weights here to stay quick (test_export.py
covers them).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from napari_unet.cli import main
from napari_unet.io.export import export_model
from napari_unet.io.export_check import (
    ExportCheck,
    ExportRequest,
    check_export,
    export_job,
    own_bioimageio_check,
)
from napari_unet.io.modelfile import ModelMetadata, save_model
from napari_unet.model import UNet, UNetConfig

TINY = UNetConfig(width=4, depth=2, padding="same", norm="batch", dropout=0.0)
PERCENTILE = {"method": "percentile", "low": 1.0, "high": 99.8}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save(folder: Path, seed: int = 0, name: str = "tiny") -> Path:
    torch.manual_seed(seed)
    metadata = ModelMetadata(
        architecture=TINY,
        normalization=PERCENTILE,
        class_names=["background", "cell"],
        provenance={"steps": 5},
    )
    return save_model(folder / f"{name}.safetensors", UNet(TINY), metadata)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pkg")
    model = _save(folder)
    return model, export_model(model, "bioimageio", folder / "tiny.zip", onnx_weights=False)


def test_bioimageio_core_passes_our_package(package):
    result = check_export(package[1], "bioimageio")
    assert result.passed, result.details
    assert result.checker.startswith("bioimageio.core ") and "test_model" in result.checker
    assert result.verdict.startswith(f"{result.checker}: passed, all ")
    assert "every weight format reproduces the test output" in result.verdict


def test_own_check_passes_and_says_it_is_not_the_official_test(package):
    result = own_bioimageio_check(package[1], why="bioimageio.core is not installed")
    assert result.passed, result.details
    assert "not the official bioimage.io test" in result.verdict
    assert "bioimageio.core is not installed" in result.verdict
    assert "TorchScript weights reproduce the test output" in result.verdict


def test_own_check_catches_a_changed_file_and_other_weights(package, tmp_path):
    model, good = package
    with zipfile.ZipFile(good) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}

    def repack(name: str, **replace: bytes) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(out, "w") as archive:
            for member, data in {**members, **replace}.items():
                archive.writestr(member, data)
        return out

    changed = repack("changed.zip", **{"sample_output.tif": members["sample_output.tif"] + b"x"})
    result = own_bioimageio_check(changed)
    assert not result.passed and result.details == (
        "sample_output.tif: its SHA-256 differs from rdf.yaml's",
    )
    assert "FAILED" in result.verdict
    assert not check_export(changed, "bioimageio").passed  # bioimageio.core agrees
    del members["cover.png"]
    result = own_bioimageio_check(repack("no-cover.zip"))
    assert result.details == ("cover.png: listed in rdf.yaml but not in the package",)
    members["cover.png"] = b""  # back (its content is not checked: rdf.yaml gives no hash)

    # weights of another network with the hashes made to match: the test output is not reproduced
    other = export_model(_save(tmp_path, seed=1, name="other"), "bioimageio", tmp_path / "o.zip",
                         onnx_weights=False)  # fmt: skip
    with zipfile.ZipFile(other) as archive:
        weights = archive.read("weights.torchscript.pt")
    import hashlib

    rdf = members["rdf.yaml"].decode()
    old = hashlib.sha256(members["weights.torchscript.pt"]).hexdigest()
    swapped = repack(
        "swapped.zip",
        **{
            "weights.torchscript.pt": weights,
            "rdf.yaml": rdf.replace(old, hashlib.sha256(weights).hexdigest()).encode(),
        },
    )
    result = own_bioimageio_check(swapped)
    assert result.details == ("TorchScript weights do not reproduce the test output",)


def test_onnx_and_torchscript_are_compared_with_the_model(tmp_path):
    model = _save(tmp_path)
    other = _save(tmp_path, seed=1, name="other")
    onnx_file = export_model(model, "onnx", tmp_path / "tiny.onnx")
    result = check_export(onnx_file, "onnx", model)
    assert result.passed and "onnxruntime" in result.checker
    assert "its output equals the model's" in result.verdict
    assert not check_export(onnx_file, "onnx", other).passed

    script = export_model(model, "torchscript", tmp_path / "tiny.pt")
    assert check_export(script, "torchscript", model).passed
    failed = check_export(script, "torchscript", other)
    assert not failed.passed and "differs from the model's" in failed.verdict

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torchscript file")
    result = check_export(broken, "torchscript", model)
    assert isinstance(result, ExportCheck) and not result.passed  # a verdict, not a traceback


def test_export_job_yields_the_export_and_the_verdict(tmp_path):
    model = _save(tmp_path)
    messages = list(export_job(ExportRequest(model, "torchscript", tmp_path / "m.pt")))
    kinds = [m[0] for m in messages]
    assert kinds == ["status", "exported", "status", "checked"]
    assert messages[1][1] == tmp_path / "m.pt" and messages[3][1].passed
    bad = list(export_job(ExportRequest(model, "torchscript", tmp_path / "no" / "m.pt")))
    assert [m[0] for m in bad] == ["status", "error"]
    assert "does not exist" in str(bad[1][1])


def test_cli_export_check(tmp_path, capsys):
    model = _save(tmp_path)
    out = tmp_path / "m.pt"
    args = ["export", str(model), "--format", "torchscript", "--out", str(out), "--check"]
    assert main(args) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"wrote {out}")
    assert lines[1].startswith("check: torch.jit.load: passed, its output equals the model's")

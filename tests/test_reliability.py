"""Bad input, full disks, missing GPUs and out-of-memory: the library and CLI either handle it
correctly or stop with ONE clear line on stderr, a non-zero exit code, no traceback and nothing
half-written. docs/reliability.md lists every case with the test that checks it.

Most cases call :func:`napari_unet.cli.app.main` in-process (a subprocess costs seconds of torch
start-up); a few real subprocesses prove that the same holds for the installed command.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_unet.annotation.schema import IGNORE_LABEL, check_labels, training_planes
from napari_unet.cli import main
from napari_unet.errors import AnnotationError, InputError
from napari_unet.inference.batch import SegmentConfig, StackWriter, segment_stack
from napari_unet.inference.predictor import PredictConfig, predict_plane
from napari_unet.io.modelfile import ModelMetadata, load_model, save_model
from napari_unet.model import UNet, UNetConfig

TRAIN = [
    "--steps",
    "1",
    "--width",
    "2",
    "--depth",
    "2",
    "--tile",
    "44",
    "--batch-size",
    "1",
    "--quiet",
    "--device",
    "cpu",
]
NORM = {"method": "percentile", "low": 1.0, "high": 99.8}
CPU = SegmentConfig(predict=PredictConfig(device="cpu"))
PROGRESS = ("training ", "train [", "predict [")  # informational lines, not errors


# ----------------------------------------------------------------------------- helpers
def make_model(path: Path, channels: int = 1, seed: int = 0, width: int = 4) -> Path:
    torch.manual_seed(seed)
    net = UNet(UNetConfig(in_channels=channels, width=width, depth=2, dropout=0.0)).eval()
    with torch.no_grad():  # some foreground, some background, decisively (no knife-edge pixels
        net.head.weight.mul_(200.0)  # that rounding noise could flip between equal runs)
        net.head.bias[1] = 0.02
    meta = ModelMetadata(
        architecture=net.config,
        normalization=NORM,
        class_names=["background", "object"],
        provenance={},
    )
    return save_model(path, net, meta)


def run(capsys, *args) -> tuple[int, str, str]:
    """Call the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def hidden(folder: Path) -> list[str]:
    """Temporary files (ours start with '.') left in a folder."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def refused(capsys, folder: Path, *args, match: str, absent=(), code: int | None = None) -> str:
    """Assert a clean refusal: one error line matching ``match``, exit != 0, no traceback,
    no ``absent`` path and no temporary file left in ``folder``. Errors found after work began
    may follow the usual start-up / progress lines."""
    rc, _, err = run(capsys, *args)
    assert rc != 0, err
    if code is not None:
        assert rc == code
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("napari-unet: error: "), err
    assert all(line.startswith(PROGRESS) for line in lines[:-1]), err
    assert re.search(match, lines[-1]), lines[-1]
    for path in absent:
        assert not Path(path).exists(), path
    assert hidden(folder) == []
    return lines[-1]


def fill(template, tmp: Path, data: dict[str, Path]) -> list[str]:
    """A command line from a case table: ``{tmp}`` and ``{image}``-style names of ``data`` are
    filled in, ``"TRAIN"`` stands for the tiny-training options."""
    out: list[str] = []
    for part in template:
        out += TRAIN if part == "TRAIN" else [part.format(tmp=tmp, **data)]
    return out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from napari_unet.sample_data import CellSampleConfig, make_cell_stack

    folder = tmp_path_factory.mktemp("data")
    image, labels = make_cell_stack(
        3, CellSampleConfig(shape=(64, 64), n_cells=5, cell_radius=9), seed=2
    )
    labels = labels.astype(np.uint16)
    labels[2] = 0
    tifffile.imwrite(folder / "image.tif", image)
    tifffile.imwrite(folder / "labels.tif", labels)
    np.save(folder / "rgb.npy", np.stack([image, image // 2, image // 3], axis=-1))
    return {
        "dir": folder,
        "image": folder / "image.tif",
        "labels": folder / "labels.tif",
        "rgb": folder / "rgb.npy",
        "model": make_model(folder / "model.safetensors"),
        "model3": make_model(folder / "model3.safetensors", channels=3),
    }


@pytest.fixture
def arrays(data) -> tuple[np.ndarray, np.ndarray]:
    return tifffile.imread(data["image"]), tifffile.imread(data["labels"])


# ----------------------------------------------------------------------------- training input
def _labels_case(name: str, labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    labels = labels.astype(np.int32)
    if name == "no_annotated_plane":
        return np.zeros_like(labels), []
    if name == "no_background":
        out = np.zeros_like(labels)
        out[0] = 1  # one object filling the whole annotated plane
        return out, []
    if name == "no_foreground":
        return labels, ["--slices", "2"]  # an empty plane chosen explicitly
    if name == "scribbles_without_background":
        return np.where(labels > 0, 2, 0), ["--mode", "scribbles"]
    if name == "scribbles_without_foreground":
        return np.where(labels > 0, 1, 0), ["--mode", "scribbles"]
    if name == "shape_mismatch_yx":
        return labels[:, :50, :50], []
    if name == "shape_mismatch_planes":
        return labels[:2], []
    if name == "float_labels":
        return labels.astype(np.float32) + 0.5, []
    if name == "negative_labels":
        out = labels.copy()
        out[0, 0, 0] = -1
        return out, []
    if name == "huge_labels":
        out = labels.copy()
        out[0, 0, 0] = 70000
        return out, []
    raise AssertionError(name)


@pytest.mark.parametrize("case, message", [
    ("no_annotated_plane", "no annotated plane"),
    ("no_background", "no background"),
    ("no_foreground", "no foreground"),
    ("scribbles_without_background", "no background"),
    ("scribbles_without_foreground", "no foreground"),
    ("shape_mismatch_yx", r"shape \(3, 64, 64\) and labels shape \(3, 50, 50\) do not match"),
    ("shape_mismatch_planes", "do not match"),
    ("float_labels", "whole numbers"),
    ("negative_labels", "must not be negative"),
    ("huge_labels", "above 65535"),
], ids=["no_annotated_plane", "no_background", "no_foreground",
    "scribbles_without_background", "scribbles_without_foreground", "shape_mismatch_yx",
    "shape_mismatch_planes", "float_labels", "negative_labels", "huge_labels"])  # fmt: skip
def test_train_refuses_bad_annotations(capsys, tmp_path, data, arrays, case, message):
    labels, extra = _labels_case(case, arrays[1])
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "m.safetensors"
    refused(
        capsys,
        tmp_path,
        "train",
        data["image"],
        tmp_path / "labels.npy",
        "--out",
        out,
        *TRAIN,
        *extra,
        match=message,
        absent=[out, tmp_path / "m.ckpt"],
        code=2,
    )


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("args, absent", [
    pytest.param(["train", "{tmp}/image.npy", "{labels}", "--out", "{tmp}/m.st", "TRAIN"],
                 ["{tmp}/m.st"], id="train"),
    pytest.param(["predict", "{model}", "{tmp}/image.npy", "--out", "{tmp}/l.tif", "--quiet"],
                 ["{tmp}/l.tif"], id="predict-tif"),
    pytest.param(["predict", "{model}", "{tmp}/image.npy", "--out", "{tmp}/l.zarr", "--quiet"],
                 [], id="predict-zarr"),
    pytest.param(["predict", "{model}", "{tmp}/image.npy", "--out", "{tmp}/l.npy", "--quiet"],
                 ["{tmp}/l.npy"], id="predict-npy"),
])  # fmt: skip
def test_train_and_predict_refuse_non_finite_pixels(
    capsys, tmp_path, data, arrays, value, args, absent
):
    image = arrays[0].astype(np.float32)
    image[1, 5, 7] = value
    np.save(tmp_path / "image.npy", image)
    refused(
        capsys,
        tmp_path,
        *fill(args, tmp_path, data),
        match="NaN or infinite",
        absent=fill(absent, tmp_path, data),
    )


def test_a_failed_run_keeps_the_previous_result(capsys, tmp_path, data, arrays):
    previous = tmp_path / "labels.tif"
    tifffile.imwrite(previous, np.full((3, 64, 64), 7, np.uint32))
    image = arrays[0].astype(np.float32)
    image[2, 0, 0] = np.nan  # the last plane fails after two planes were segmented
    np.save(tmp_path / "image.npy", image)
    refused(
        capsys,
        tmp_path,
        "predict",
        data["model"],
        tmp_path / "image.npy",
        "--out",
        previous,
        "--quiet",
        match="NaN",
    )
    assert (tifffile.imread(previous) == 7).all()


@pytest.mark.parametrize("args, message", [
    (["--slices", "7"], "plane 7 does not exist: the stack has 3 planes"),
    (["--slices", "1-x"], "cannot read the plane list"),
    (["--slices", "-2"], "cannot read the plane list|must not be negative"),
    (["--val-slices", "5"], "plane 5 does not exist"),
    (["--tile", "61"], "tile size 61 is not valid .* nearest valid sizes: 60 or 64"),
    (["--tile", "8"], r"nearest valid sizes: 44 \(the smallest\)"),
    (["--resume", "{model}"], "not a napari-unet training checkpoint"),
    (["--resume", "{dir}/missing.ckpt"], "does not exist"),
    (["--init", "{dir}/missing.safetensors"], "does not exist"),
    (["--device", "tpu"], "unknown device 'tpu'"),
], ids=["slices-7", "slices-1-x", "slices-negative", "val-slices-5", "tile-61", "tile-8",
        "resume-a-model", "resume-missing", "init-missing", "device-tpu"])  # fmt: skip
def test_train_refuses_bad_options(capsys, tmp_path, data, args, message):
    args = [a.format(model=data["model"], dir=data["dir"]) for a in args]
    out = tmp_path / "m.safetensors"
    refused(
        capsys,
        tmp_path,
        "train",
        data["image"],
        data["labels"],
        "--out",
        out,
        *TRAIN,
        *args,
        match=message,
        absent=[out],
    )


def test_slices_on_a_2d_image(capsys, tmp_path, arrays):
    np.save(tmp_path / "i.npy", arrays[0][0])
    np.save(tmp_path / "l.npy", arrays[1][0])
    refused(
        capsys,
        tmp_path,
        "train",
        tmp_path / "i.npy",
        tmp_path / "l.npy",
        "--out",
        tmp_path / "m.st",
        *TRAIN,
        "--slices",
        "1",
        match="only plane 0",
    )


@pytest.mark.parametrize("args, message", [
    (["train", "{image}", "{labels}", "--out", "{tmp}/m.st", "--steps", "0"],
     "--steps: expected a positive"),
    (["train", "{image}", "{labels}", "--out", "{tmp}/m.st", "--steps", "-5"],
     "--steps: expected a positive"),
    (["train", "{image}", "{labels}", "--out", "{tmp}/m.st", "--steps", "ten"],
     "expected a whole number"),
    (["train", "{image}", "{labels}", "--out", "{tmp}/m.st", "--batch-size", "0"], "--batch-size"),
    (["train", "{image}", "{labels}", "--out", "{tmp}/m.st", "--lr", "-1"],
     "--lr: expected a positive"),
    (["train", "{image}", "{labels}", "--out", "{tmp}/m.st", "--checkpoint-every", "0"],
     "--checkpoint-every"),
    (["predict", "{model}", "{image}", "--out", "{tmp}/l.tif", "--no-such-option"],
     "unrecognized arguments"),
    (["predict", "{model}", "{image}"], "required: --out"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["weightmap", "{labels}", "--out", "{tmp}/w.tif", "--sigma", "0"], "--sigma"),
    (["export", "{model}", "--format", "caffe", "--out", "{tmp}/e"], "invalid choice: 'caffe'"),
    (["evaluate", "{labels}", "{labels}", "--metric", "accuracy"], "invalid choice: 'accuracy'"),
], ids=["steps-0", "steps-negative", "steps-ten", "batch-size-0", "lr-negative",
        "checkpoint-every-0", "unknown-option", "no-out", "unknown-command", "sigma-0",
        "export-format-caffe", "evaluate-metric-accuracy"])  # fmt: skip
def test_bad_usage_is_one_line_with_exit_2(capsys, tmp_path, data, args, message):
    args = [a.format(tmp=tmp_path, **{k: v for k, v in data.items()}) for a in args]
    line = refused(capsys, tmp_path, *args, match=message, code=2)
    assert "--help" in line
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- odd images
def test_one_pixel_image_is_segmented(capsys, tmp_path, data):
    np.save(tmp_path / "px.npy", np.full((1, 1), 200, np.uint8))
    assert (
        run(
            capsys,
            "predict",
            data["model"],
            tmp_path / "px.npy",
            "--out",
            tmp_path / "px.tif",
            "--quiet",
        )[0]
        == 0
    )
    labels = tifffile.imread(tmp_path / "px.tif")
    assert labels.shape == (1, 1) and labels.dtype == np.uint32


@pytest.mark.parametrize(
    "shape, tile", [((20, 30), None), ((20, 30), "60"), ((1, 80), "44"), ((70, 3), None)]
)
def test_image_smaller_than_a_tile_is_segmented(capsys, tmp_path, data, shape, tile):
    np.save(tmp_path / "s.npy", np.random.default_rng(0).random(shape).astype(np.float32))
    extra = ["--tile", tile] if tile else []
    assert (
        run(
            capsys,
            "predict",
            data["model"],
            tmp_path / "s.npy",
            "--out",
            tmp_path / "s.npy.tif",
            "--quiet",
            *extra,
        )[0]
        == 0
    )
    assert tifffile.imread(tmp_path / "s.npy.tif").shape == shape


@pytest.mark.parametrize("shape", [(2, 2, 64, 64), (1, 2, 2, 32, 32)])
def test_4d_and_5d_images_are_segmented_plane_by_plane(capsys, tmp_path, data, arrays, shape):
    image = np.resize(arrays[0][:, : shape[-2], : shape[-1]], shape)
    np.save(tmp_path / "nd.npy", image)
    assert (
        run(
            capsys,
            "predict",
            data["model"],
            tmp_path / "nd.npy",
            "--out",
            tmp_path / "nd.npy.npy",
            "--instances",
            "--quiet",
            "--device",
            "cpu",
        )[0]
        == 0
    )
    labels = np.load(tmp_path / "nd.npy.npy")
    assert labels.shape == shape
    # each plane equals the same plane segmented alone (before the instance-id offset)
    net, meta = load_model(data["model"])
    plane = segment_stack(net, meta, image.reshape((-1,) + shape[-2:])[1], CPU)
    flat = labels.reshape((-1,) + shape[-2:])[1]
    np.testing.assert_array_equal(flat > 0, plane > 0)


@pytest.mark.parametrize("extra, message, absent", [
    pytest.param([], r"looks like RGB\(A\) but the model takes 1 channel", ["{tmp}/l.tif"],
                 id="channels-found-last"),
    pytest.param(["--channel-axis", "-1"], "expects 1 channel.* has 3 on axis 3", [],
                 id="channel-axis-given"),
])  # fmt: skip
def test_rgb_image_with_a_one_channel_model_is_refused(
    capsys, tmp_path, data, extra, message, absent
):
    refused(
        capsys,
        tmp_path,
        *fill(["predict", "{model}", "{rgb}", "--out", "{tmp}/l.tif", "--quiet"], tmp_path, data),
        *extra,
        match=message,
        absent=fill(absent, tmp_path, data),
    )


def test_multichannel_images_with_a_matching_model(capsys, tmp_path, data, arrays):
    # RGB in the last axis is found by itself
    assert (
        run(capsys, "predict", data["model3"], data["rgb"], "--out", tmp_path / "a.npy", "--quiet")[
            0
        ]
        == 0
    )
    assert np.load(tmp_path / "a.npy").shape == (3, 64, 64)
    # channels in axis 1 of a (Z, C, Y, X) stack need --channel-axis
    image = np.moveaxis(np.load(data["rgb"]), -1, 1)
    np.save(tmp_path / "zcyx.npy", image)
    assert (
        run(
            capsys,
            "predict",
            data["model3"],
            tmp_path / "zcyx.npy",
            "--out",
            tmp_path / "b.npy",
            "--channel-axis",
            "1",
            "--quiet",
        )[0]
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.load(tmp_path / "a.npy"))


@pytest.mark.parametrize("args, message", [
    pytest.param(["{image}", "--out", "{tmp}/c.tif", "--channel-axis", "7"],
                 "channel axis 7 does not exist", id="channel-axis-7-of-3"),
    pytest.param(["{tmp}/gray2d.npy", "--out", "{tmp}/c.tif"], "expects 3 channels",
                 id="grayscale-2d"),
])  # fmt: skip
def test_multichannel_mismatch_is_refused(capsys, tmp_path, data, arrays, args, message):
    np.save(tmp_path / "gray2d.npy", arrays[0][0])
    refused(capsys, tmp_path, *fill(["predict", "{model3}", *args], tmp_path, data), match=message)


@pytest.mark.parametrize("args, message", [
    pytest.param(["{rgb}", "{labels}"],
                 "trained for 1 channel.* and 2 classes; these data have 3 and 2", id="rgb-data"),
    pytest.param(["{image}", "{tmp}/classes.npy", "--mode", "classes"], "these data have 1 and 4",
                 id="4-class-data"),
])  # fmt: skip
def test_model_for_other_channels_or_classes(capsys, tmp_path, data, arrays, args, message):
    labels = arrays[1].astype(np.int32)
    np.save(tmp_path / "classes.npy", np.where(labels > 0, (labels % 3) + 1, 0))  # 4 classes
    out = tmp_path / "m.safetensors"
    refused(
        capsys,
        tmp_path,
        *fill(["train", *args, "--init", "{model}", "--out", str(out), "TRAIN"], tmp_path, data),
        match=message,
        absent=[out],
    )


@pytest.mark.parametrize("kind, message", [
    ("unknown.xyz", "unknown file type '.xyz'"),
    ("corrupt.tif", "corrupt.tif: cannot be read"),
    ("truncated.tif", "truncated.tif: cannot be read"),
    ("empty.npy", r"holds no pixels \(shape \(0, 5\)\)"),
    ("oned.npy", "at least two axes"),
    ("text.npy", "<U1 values; expected real numbers"),
    ("complex.npy", "complex64 values"),
    ("pickled.npy", "cannot be read"),
    ("missing.tif", "no such file"),
    ("mixed_folder", "different shapes"),
    ("empty_folder", "holds no TIFF or PNG"),
    ("group.zarr", "zarr group, not an array"),
], ids=["unknown.xyz", "corrupt.tif", "truncated.tif", "empty.npy", "oned.npy", "text.npy",
    "complex.npy", "pickled.npy", "missing.tif", "mixed_folder", "empty_folder",
    "group.zarr"])  # fmt: skip
def test_unreadable_images(capsys, tmp_path, data, kind, message):
    import zarr

    src = tmp_path / "in" / kind
    src.parent.mkdir()
    if kind == "unknown.xyz":
        src.write_text("hello")
    elif kind == "corrupt.tif":
        src.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "truncated.tif":
        whole = data["image"].read_bytes()
        src.write_bytes(whole[: len(whole) // 2])
    elif kind == "empty.npy":
        np.save(src, np.zeros((0, 5), np.uint8))
    elif kind == "oned.npy":
        np.save(src, np.zeros(7))
    elif kind == "text.npy":
        np.save(src, np.array([["a", "b"], ["c", "d"]]))
    elif kind == "complex.npy":
        np.save(src, np.ones((8, 8), np.complex64))
    elif kind == "pickled.npy":
        np.save(src, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "mixed_folder":
        src.mkdir()
        tifffile.imwrite(src / "a.tif", np.zeros((10, 10), np.uint8))
        tifffile.imwrite(src / "b.tif", np.zeros((12, 10), np.uint8))
    elif kind == "empty_folder":
        src.mkdir()
    elif kind == "group.zarr":
        zarr.open_group(str(src), mode="w").create_array("x", shape=(4, 4), dtype="u1")
    out = tmp_path / "l.tif"
    refused(
        capsys,
        tmp_path,
        "predict",
        data["model"],
        src,
        "--out",
        out,
        "--quiet",
        match=message,
        absent=[out],
    )


# ----------------------------------------------------------------------------- model files
BAD_MODEL_FILES = {
    "truncated": "truncated or corrupt",
    "random": "no valid safetensors header",
    "npy": "it is a NumPy .npy file",
    "foreign": "safetensors file without napari-unet metadata",
    "empty": "the file is empty",
    "folder": "is a folder",
    "checkpoint": "holds tensors but no model metadata",
    "missing": "does not exist",
}
MODEL_USES = {  # every command that reads a model file; {path} is the bad one
    "predict": ["predict", "{path}", "{image}", "--out", "{tmp}/l.tif", "--quiet"],
    "export": ["export", "{path}", "--format", "torchscript", "--out", "{tmp}/e.pt"],
    "train": ["train", "{image}", "{labels}", "--init", "{path}", "--out", "{tmp}/m.st", "TRAIN"],
}
MODEL_OUTPUTS = {"predict": "l.tif", "export": "e.pt", "train": "m.st"}


@pytest.mark.parametrize("kind, use", [
    pytest.param(kind, use, id=f"{kind}-{use}")
    for kind in BAD_MODEL_FILES
    for use in (MODEL_USES if kind in ("truncated", "foreign") else ["predict"])
])  # fmt: skip
def test_bad_model_files(capsys, tmp_path, data, kind, use):
    from safetensors.numpy import save_file

    path = tmp_path / "models" / f"{kind}.safetensors"
    path.parent.mkdir()
    good = data["model"].read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) - 500])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(3000))
    elif kind == "npy":
        with open(path, "wb") as fh:
            np.save(fh, np.zeros(3))
    elif kind == "foreign":
        save_file({"w": np.zeros(3, np.float32)}, str(path))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "checkpoint":
        from napari_unet.io.modelfile import save_tensors

        save_tensors(path, {"w": torch.zeros(2)}, {"step": 1})
    out = tmp_path / MODEL_OUTPUTS[use]
    refused(
        capsys,
        tmp_path,
        *fill(MODEL_USES[use], tmp_path, dict(data, path=path)),
        match=BAD_MODEL_FILES[kind],
        absent=[out],
    )


def test_pickled_model_is_never_executed_by_the_cli(capsys, tmp_path, data):
    """A .pt file whose unpickling would create MARKER: refused in one line, MARKER absent.
    (Library-level: tests/test_modelfile.py::test_pickle_payloads_are_never_executed.)"""

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "MARKER"), "w"))

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": Payload()}, fh)
    torch.save({"state_dict": Payload()}, tmp_path / "evil_zip.pt")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_unet.cli",
            "predict",
            "evil.pt",
            str(data["image"]),
            "--out",
            "l.tif",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr == (
        "napari-unet: error: evil.pt is not a napari-unet model file: "
        "it is a Python pickle (napari-unet never unpickles files)\n"
    )
    for command in (
        ["predict", "evil_zip.pt", data["image"], "--out", "l.tif"],
        ["train", data["image"], data["labels"], "--init", "evil.pt", "--out", "m.st", *TRAIN],
        ["export", "evil_zip.pt", "--format", "torchscript", "--out", "e.pt"],
    ):
        refused(
            capsys,
            tmp_path,
            *(tmp_path / c if str(c).startswith("evil") else c for c in command),
            match="it is a Python pickle|it is a zip archive",
        )
    assert not (tmp_path / "e.pt").exists()
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "l.tif").exists()


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("target, message", [
    ("missing/l.tif", "the folder .*missing does not exist"),
    ("missing/l.zarr", "the folder .*missing does not exist"),
    ("missing/l.npy", "the folder .*missing does not exist"),
    ("a_file/l.tif", "the folder .*a_file is not a folder"),
    ("a_file/l.zarr", "a_file is not a folder"),
    ("l.png", "write labels as .tif, .tiff, .npy, .zarr"),
], ids=["missing/l.tif", "missing/l.zarr", "missing/l.npy", "a_file/l.tif", "a_file/l.zarr",
    "l.png"])  # fmt: skip
def test_unwritable_prediction_outputs(capsys, tmp_path, data, target, message):
    (tmp_path / "a_file").write_text("not a folder")
    refused(
        capsys,
        tmp_path,
        "predict",
        data["model"],
        data["image"],
        "--out",
        tmp_path / target,
        "--quiet",
        match=message,
        absent=[tmp_path / target],
    )


@pytest.mark.parametrize("args, message, absent", [
    pytest.param(["train", "{image}", "{labels}", "--out", "{tmp}/a_file/out.safetensors",
                  "TRAIN"], "a_file is not a folder", [], id="train-into-a-file"),
    pytest.param(["predict", "{model}", "{image}", "--out", "{tmp}/l.tif", "--probabilities",
                  "{tmp}/a_file/out.tif"], "a_file is not a folder", ["{tmp}/l.tif"],
                 id="predict-probabilities-into-a-file"),
    pytest.param(["predict", "{model}", "{image}", "--out", "{tmp}/l.tif", "--probabilities",
                  "{tmp}/p.zarr"], "write probabilities as .tif, .tiff, .npy", [],
                 id="predict-probabilities-as-zarr"),
    pytest.param(["weightmap", "{labels}", "--out", "{tmp}/a_file/out.tif"],
                 "a_file is not a folder", [], id="weightmap-into-a-file"),
    pytest.param(["weightmap", "{labels}", "--out", "{tmp}/w.png"], "write results as", [],
                 id="weightmap-as-png"),
    pytest.param(["export", "{model}", "--format", "torchscript", "--out", "{tmp}/a_file/out.pt"],
                 "a_file is not a folder", [], id="export-into-a-file"),
    # overwriting an input is refused before any work
    pytest.param(["predict", "{model}", "{image}", "--out", "{image}"],
                 "would overwrite an input", [], id="predict-over-its-image"),
    pytest.param(["export", "{model}", "--format", "torchscript", "--out", "{model}"],
                 "would overwrite the model file itself", [], id="export-over-its-model"),
])  # fmt: skip
def test_unwritable_outputs_of_other_commands(capsys, tmp_path, data, args, message, absent):
    (tmp_path / "a_file").write_text("x")
    refused(
        capsys,
        tmp_path,
        *fill(args, tmp_path, data),
        match=message,
        absent=fill(absent, tmp_path, data),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions"
)
def test_read_only_folder(capsys, tmp_path, data):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(
            capsys,
            tmp_path,
            "predict",
            data["model"],
            data["image"],
            "--out",
            locked / "l.npy",
            match="not writable|Permission denied",
        )
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_npy_labels(capsys, tmp_path, data, monkeypatch):
    real_save = np.save

    def half_then_full(fh, arr, **kwargs):
        fh.write(b"\x93NUMPY partial")
        _enospc()

    monkeypatch.setattr(np, "save", half_then_full)
    out = tmp_path / "l.npy"
    refused(
        capsys,
        tmp_path,
        "predict",
        data["model"],
        data["image"],
        "--out",
        out,
        "--quiet",
        match=r"l.npy: cannot be written \(No space left on device\)",
        absent=[out],
    )
    monkeypatch.setattr(np, "save", real_save)


def test_disk_full_while_streaming_a_tiff_stack(capsys, tmp_path, data, monkeypatch):
    real_write = StackWriter.write

    def full_on_second_plane(self, flat, index, plane, attrs=None):
        if flat == 1:
            _enospc()
        real_write(self, flat, index, plane, attrs)

    monkeypatch.setattr(StackWriter, "write", full_on_second_plane)
    out = tmp_path / "l.tif"
    refused(
        capsys,
        tmp_path,
        "predict",
        data["model"],
        data["image"],
        "--out",
        out,
        "--quiet",
        match="No space left on device",
        absent=[out],
        code=1,
    )


def test_disk_full_on_a_zarr_output_then_resume(capsys, tmp_path, data, monkeypatch):
    import zarr

    real_write = StackWriter.write
    monkeypatch.setattr(
        StackWriter,
        "write",
        lambda self, flat, *a: _enospc() if flat == 2 else real_write(self, flat, *a),
    )
    out = tmp_path / "l.zarr"
    refused(
        capsys,
        tmp_path,
        "predict",
        data["model"],
        data["image"],
        "--out",
        out,
        "--instances",
        "--quiet",
        "--device",
        "cpu",
        match="No space left on device",
    )
    assert zarr.open(str(out), mode="r").attrs["napari_unet_done"] == [0, 1]  # kept for the rerun
    monkeypatch.setattr(StackWriter, "write", real_write)
    assert (
        run(
            capsys,
            "predict",
            data["model"],
            data["image"],
            "--out",
            out,
            "--instances",
            "--quiet",
            "--device",
            "cpu",
        )[0]
        == 0
    )
    net, meta = load_model(data["model"])
    np.testing.assert_array_equal(
        zarr.open(str(out), mode="r")[:],
        segment_stack(net, meta, tifffile.imread(data["image"]), CPU),
    )


def test_disk_full_while_saving_the_model(capsys, tmp_path, data, monkeypatch):
    import napari_unet.io.modelfile as modelfile

    def partial(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        _enospc()

    monkeypatch.setattr(modelfile, "_st_save_file", partial)
    out = tmp_path / "m.safetensors"
    refused(
        capsys,
        tmp_path,
        "train",
        data["image"],
        data["labels"],
        "--out",
        out,
        *TRAIN,
        match="cannot write .*m.safetensors: No space left on device",
        absent=[out],
    )


def test_disk_full_while_writing_a_weight_map(capsys, tmp_path, data, monkeypatch):
    monkeypatch.setattr(tifffile, "imwrite", _enospc)
    refused(
        capsys,
        tmp_path,
        "weightmap",
        data["labels"],
        "--out",
        tmp_path / "w.tif",
        match="No space left on device",
        absent=[tmp_path / "w.tif"],
    )


def test_zarr_output_of_another_run_is_not_reused(capsys, tmp_path, data):
    """Resuming is keyed on model, settings and image: another model recomputes every plane."""
    import zarr

    other = make_model(tmp_path / "other.safetensors", seed=5, width=2)
    out = tmp_path / "l.zarr"
    assert (
        run(
            capsys,
            "predict",
            data["model"],
            data["image"],
            "--out",
            out,
            "--quiet",
            "--device",
            "cpu",
        )[0]
        == 0
    )
    assert (
        run(capsys, "predict", other, data["image"], "--out", out, "--quiet", "--device", "cpu")[0]
        == 0
    )
    net, meta = load_model(other)
    expected = segment_stack(
        net, meta, tifffile.imread(data["image"]), SegmentConfig(instances=False)
    )
    assert expected.any()
    np.testing.assert_array_equal(zarr.open(str(out), mode="r")[:], expected)


# ----------------------------------------------------------------------------- devices, cluster
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
@pytest.mark.parametrize("args, out", [
    pytest.param(["predict", "{model}", "{image}", "--out", "{tmp}/l.tif"], "l.tif", id="predict"),
    pytest.param(["train", "{image}", "{labels}", "--out", "{tmp}/m.st", "TRAIN"], "m.st",
                 id="train"),
])  # fmt: skip
def test_absent_accelerator_is_refused(capsys, tmp_path, data, device, args, out):
    from napari_unet.devices import available_devices

    if device.split(":")[0] in available_devices():
        pytest.skip(f"{device} is present here")
    message = "CUDA was requested but no CUDA GPU" if "cuda" in device else "MPS was requested"
    refused(
        capsys,
        tmp_path,
        *fill(args, tmp_path, data),
        "--device",
        device,
        match=message,
        absent=[tmp_path / out],
    )


@pytest.mark.parametrize(
    "address", ["tcp://127.0.0.1:{port}", "no-port-here", "tcp://nonexistent.invalid:8786"]
)
def test_unreachable_scheduler(capsys, tmp_path, data, address):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = address.format(port=port)
    out = tmp_path / "l.zarr"
    refused(
        capsys,
        tmp_path,
        "predict",
        data["model"],
        data["image"],
        "--out",
        out,
        "--scheduler",
        address,
        match=f"cannot reach the dask scheduler at {re.escape(address)}",
        absent=[out],
    )


# ----------------------------------------------------------------------------- library
def test_dask_arrays_with_odd_chunks(data, arrays):
    net, meta = load_model(data["model"])
    ref = segment_stack(net, meta, arrays[0], CPU)
    for chunks in ((1, 37, 53), (2, 64, 7), (3, 1, 64)):
        np.testing.assert_array_equal(
            segment_stack(net, meta, da.from_array(arrays[0], chunks=chunks), CPU), ref
        )


def test_read_only_arrays(data, arrays, tmp_path, capsys):
    image, labels = (a.copy() for a in arrays)
    image.flags.writeable = False
    labels.flags.writeable = False
    planes, classes = training_planes(image, labels)
    assert len(planes) == 2 and classes == 2
    net, meta = load_model(data["model"])
    np.testing.assert_array_equal(
        segment_stack(net, meta, image, CPU), segment_stack(net, meta, arrays[0], CPU)
    )
    classes = meta.architecture.num_classes
    assert predict_plane(net, image[0][None].astype(np.float32)).shape == (classes, 64, 64)
    # .npy files are memory-mapped read-only; evaluate used to crash on them (skimage relabelling)
    np.save(tmp_path / "gt.npy", arrays[1])
    code, out, err = run(capsys, "evaluate", tmp_path / "gt.npy", tmp_path / "gt.npy")
    assert code == 0 and '"seg": 1.0' in out and "Traceback" not in err


def test_label_values_that_are_accepted():
    assert check_labels(np.array([[0.0, 2.0]], np.float32)).dtype == np.int64  # whole-valued floats
    assert check_labels(np.array([[True, False]])).tolist() == [[1, 0]]
    assert check_labels(np.array([[0, IGNORE_LABEL]], np.int32)).max() == IGNORE_LABEL
    for bad in (
        np.array([[0.5]]),
        np.array([[np.nan]]),
        np.array([[-1]]),
        np.array([[IGNORE_LABEL + 1]]),
    ):
        with pytest.raises(AnnotationError):
            check_labels(bad)
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    labels = np.zeros((32, 32), np.uint16)
    labels[5:15, 5:15] = 1
    labels[20:, 20:] = IGNORE_LABEL  # ignored pixels get weight 0
    (plane,), _ = training_planes(image, labels)
    assert (plane.weight[20:, 20:] == 0).all() and plane.weight[0, 0] > 0
    with pytest.raises(InputError, match="do not match"):
        training_planes(image, labels[:, :20])


# ----------------------------------------------------------------------------- out of memory
def _oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_prediction_retries_with_smaller_tiles_after_oom(monkeypatch):
    import napari_unet.inference.predictor as predict

    torch.manual_seed(0)
    net = UNet(UNetConfig(width=2, depth=2, dropout=0.0)).eval()
    plane = np.random.default_rng(0).random((1, 150, 170)).astype(np.float32)
    expected = predict_plane(net, plane, PredictConfig(tile=124))
    real, tiles = predict._predict_tiled, []

    def limited(model, plane, tile, *args):
        tiles.append(tile)
        if max(tile) > 80:
            _oom()
        return real(model, plane, tile, *args)

    monkeypatch.setattr(predict, "_predict_tiled", limited)
    with pytest.warns(
        UserWarning, match=r"out of memory with tiles of \(124, 124\); retrying with \(80, 80\)"
    ):
        result = predict_plane(net, plane, PredictConfig(tile=124))
    assert tiles == [(124, 124), (80, 80)]
    np.testing.assert_allclose(result, expected, atol=1e-5)
    # RuntimeError("CUDA out of memory") (older torch) is recognised as well
    tiles.clear()
    monkeypatch.setattr(
        predict,
        "_predict_tiled",
        lambda m, p, tile, *a: (
            tiles.append(tile),
            (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
            if tile[0] > 60
            else real(m, p, tile, *a),
        )[1],
    )
    with pytest.warns(UserWarning, match="out of memory"):
        np.testing.assert_allclose(
            predict_plane(net, plane, PredictConfig(tile=124)), expected, atol=1e-5
        )
    # other errors are not swallowed
    monkeypatch.setattr(
        predict, "_predict_tiled", lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    with pytest.raises(RuntimeError, match="boom"):
        predict_plane(net, plane, PredictConfig(tile=124))


def test_cli_prediction_out_of_memory_even_at_the_smallest_tile(
    capsys, tmp_path, data, monkeypatch
):
    import napari_unet.inference.predictor as predict

    monkeypatch.setattr(predict, "_predict_tiled", _oom)
    out = tmp_path / "l.tif"
    rc, _, err = run(
        capsys, "predict", data["model"], data["image"], "--out", out, "--tile", "124", "--quiet"
    )
    assert rc == 1 and "Traceback" not in err and not out.exists() and hidden(tmp_path) == []
    lines = err.strip().splitlines()
    assert lines[-1].startswith(
        "napari-unet: error: out of accelerator memory even with the smallest tiles"
    )
    assert all(
        line.startswith("napari-unet: warning: out of memory with tiles of") for line in lines[:-1]
    )


def test_training_halves_the_batch_after_oom(capsys, tmp_path, data, monkeypatch):
    import napari_unet.model as model

    real_forward = model.UNet.forward

    def forward(self, x):
        if x.shape[0] > 1:
            _oom()
        return real_forward(self, x)

    monkeypatch.setattr(model.UNet, "forward", forward)
    out = tmp_path / "m.safetensors"
    args = [
        "train",
        data["image"],
        data["labels"],
        "--out",
        out,
        "--steps",
        "2",
        "--width",
        "2",
        "--depth",
        "2",
        "--tile",
        "44",
        "--batch-size",
        "4",
        "--quiet",
        "--device",
        "cpu",
    ]
    rc, _, err = run(capsys, *args)
    assert rc == 0, err
    assert "warning: out of cpu memory at step 0 with 4 tiles per step; continuing with 2" in err
    assert "continuing with 1" in err and "Traceback" not in err
    from napari_unet.io.modelfile import read_metadata

    assert read_metadata(out).provenance["training"]["batch_size"] == 1
    # out of memory even with one tile: checkpoint kept, one error line, no model
    monkeypatch.setattr(model.UNet, "forward", _oom)
    out2 = tmp_path / "m2.safetensors"
    rc, _, err = run(capsys, *args[:4], out2, *args[5:])
    assert rc == 1 and "Traceback" not in err and not out2.exists()
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "napari-unet: error: out of cpu memory at step 0 even with one 44 px tile per step"
        )
    )
    assert (tmp_path / "m2.ckpt").exists() and hidden(tmp_path) == []


# ----------------------------------------------------------------------------- tiling property
_NET: dict = {}
_VALID = [44 + 4 * k for k in range(21)]  # valid input edges of a depth-2 valid U-Net, 44..124


def _tiny_net() -> UNet:
    if "net" not in _NET:
        torch.manual_seed(3)
        _NET["net"] = UNet(UNetConfig(width=2, depth=2, dropout=0.0)).eval()
    return _NET["net"]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(1, 80),
    width=st.integers(1, 80),
    tiles=st.lists(st.sampled_from(_VALID), min_size=2, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_tiling_round_trip(height, width, tiles, seed):
    torch.set_num_threads(1)
    net = _tiny_net()
    plane = np.random.default_rng(seed).random((1, height, width)).astype(np.float32)
    a = predict_plane(net, plane, PredictConfig(tile=tiles[0]))
    b = predict_plane(net, plane, PredictConfig(tile=tiles[1]))
    assert a.shape == b.shape == (2, height, width)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a.sum(axis=0), 1.0, atol=1e-5)


def test_warnings_reach_the_cli_as_single_lines(capsys, tmp_path, data, monkeypatch):
    import napari_unet.cli.commands as commands

    def noisy(args):
        warnings.warn("first line\nsecond line", stacklevel=2)
        return 0

    monkeypatch.setattr(commands, "run_evaluate", noisy)
    rc, _, err = run(capsys, "evaluate", data["labels"], data["labels"])
    assert rc == 0 and err == "napari-unet: warning: first line\n"

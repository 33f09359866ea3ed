"""Tests for napari_unet.io.modelfile: safetensors + JSON model files, never pickle."""

from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_unet.errors import DeviceError, InputError, ModelFileError
from napari_unet.io import modelfile
from napari_unet.io.modelfile import (
    FORMAT,
    ModelMetadata,
    load_model,
    load_tensors,
    read_metadata,
    save_model,
    save_tensors,
)
from napari_unet.model import UNet, UNetConfig, count_parameters, min_input_size

TINY = UNetConfig(width=4, depth=2, norm="batch", dropout=0.1)


def _metadata(cfg: UNetConfig = TINY, **changes) -> ModelMetadata:
    fields = {
        "architecture": cfg,
        "normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
        "class_names": [f"class {i}" for i in range(cfg.num_classes)],
        "provenance": {"steps": 12, "data_shape": (3, 64, 64), "created": "2024-05-01",
                       "version": "0.1.0", "training": {"lr": 1e-3}, "parent": None},
    }  # fmt: skip
    fields.update(changes)
    return ModelMetadata(**fields)


def _model(cfg: UNetConfig = TINY, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(cfg)
    for _name, buffer in model.named_buffers():  # non-default batch-norm statistics
        if buffer.is_floating_point():
            buffer.copy_(torch.rand_like(buffer) + 0.5)
        else:
            buffer.fill_(7)
    return model


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, UNet, ModelMetadata]:
    model, metadata = _model(), _metadata()
    path = save_model(tmp_path / "tiny.safetensors", model, metadata)
    return path, model, metadata


def _raw(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _model_meta() -> dict[str, str]:
    return {"format": FORMAT, "napari_unet": _metadata().to_json()}


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


def test_round_trip_is_bit_exact(saved):
    path, model, metadata = saved
    loaded, meta2 = load_model(path)
    assert meta2 == metadata
    assert meta2.provenance["data_shape"] == [3, 64, 64]
    assert not loaded.training
    want, got = model.state_dict(), loaded.state_dict()
    assert list(want) == list(got)
    for name in want:
        assert want[name].dtype == got[name].dtype
        assert torch.equal(want[name], got[name]), name
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 1, min_input_size(TINY) + 8, min_input_size(TINY) + 4)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_paper_model_keeps_its_parameters(tmp_path):
    model = UNet(UNetConfig())
    path = save_model(tmp_path / "paper.safetensors", model, _metadata(UNetConfig()))
    assert path.stat().st_size > 31_030_658 * 4
    loaded, metadata = load_model(path)
    assert count_parameters(loaded) == 31_030_658
    assert metadata.architecture == UNetConfig()
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_read_metadata_does_not_load_weights(saved, monkeypatch):
    path, _, metadata = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(modelfile, "_st_load", forbidden)
    assert read_metadata(path) == metadata


def test_metadata_json_round_trip():
    metadata = _metadata()
    assert ModelMetadata.from_json(metadata.to_json()) == metadata
    json.loads(metadata.to_json())


def test_tensors_round_trip_for_checkpoints(tmp_path):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(1, 1, 44, 44)).sum().backward()
    optimizer.step()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        tensors.update({f"optim.{index}.{k}": torch.as_tensor(v) for k, v in state.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.numpy"] = torch.from_numpy(np.random.default_rng(1).bit_generator.random_raw(4))
    tensors["shared"] = tensors["model.head.weight"]  # shared memory must not trouble saving
    meta = {"step": 1, "lr": 1e-3, "names": ["a", "b"], "nested": {"x": None}}
    path = save_tensors(tmp_path / "ckpt.safetensors", tensors, meta)
    back, meta2 = load_tensors(path)
    assert meta2 == meta and set(back) == set(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    with pytest.raises(ModelFileError, match="no model metadata"):
        load_model(path)
    shells, meta3 = load_tensors(path, device="meta")  # header only
    assert meta3 == meta
    assert all(shells[k].is_meta and shells[k].shape == v.shape for k, v in tensors.items())


def test_save_tensors_refuses_bad_input(tmp_path):
    with pytest.raises(InputError, match="JSON"):
        save_tensors(tmp_path / "a", {"x": torch.zeros(2)}, {"bad": object()})
    with pytest.raises(InputError, match="JSON"):
        save_tensors(tmp_path / "a", {"x": torch.zeros(2)}, {"nan": float("nan")})
    with pytest.raises(InputError):
        save_tensors(tmp_path / "a", {"x": torch.zeros(2, dtype=torch.complex64)}, {})
    with pytest.raises(InputError):
        save_tensors(tmp_path / "a", {"__metadata__": torch.zeros(2)}, {})
    assert list(tmp_path.iterdir()) == []


def test_save_model_refuses_config_mismatch(tmp_path):
    with pytest.raises(InputError, match="differs"):
        save_model(tmp_path / "m", _model(), _metadata(TINY.with_(width=8)))


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def test_failed_replace_keeps_old_file_and_leaves_no_temp(saved, monkeypatch):
    path, _, _ = saved
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(ModelFileError, match="No space left"):
        save_model(path, _model(seed=1), _metadata())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_failed_write_keeps_old_file_and_leaves_no_temp(saved, monkeypatch):
    path, _, _ = saved
    before = path.read_bytes()

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("disk exploded")

    monkeypatch.setattr(modelfile, "_st_save_file", half_write)
    with pytest.raises(ModelFileError, match="disk exploded"):
        save_model(path, _model(seed=1), _metadata())
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_unwritable_destinations(tmp_path, monkeypatch):
    model, metadata = _model(), _metadata()
    with pytest.raises(ModelFileError, match="does not exist"):
        save_model(tmp_path / "missing" / "m.safetensors", model, metadata)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFileError, match="not a folder"):
        save_model(tmp_path / "file" / "m.safetensors", model, metadata)
    with pytest.raises(ModelFileError, match="is a folder"):
        save_model(tmp_path, model, metadata)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(ModelFileError, match="not writable"):
        save_model(tmp_path / "m.safetensors", model, metadata)


# --------------------------------------------------------------------------------------------
# Refusing unsafe and foreign files
# --------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates (opens for writing) the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payloads_are_never_executed(tmp_path, saved):
    control = tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(_Payload(control)))  # the payload really is armed
    assert control.exists()

    marker = tmp_path / "MARKER"
    payload = pickle.dumps(_Payload(marker))
    plain = tmp_path / "model.pt"
    with open(plain, "wb") as handle:
        pickle.dump(_Payload(marker), handle)
    zipped = tmp_path / "zipped.pt"
    torch.save({"state": _Payload(marker)}, zipped)
    appended = tmp_path / "appended.safetensors"
    appended.write_bytes(saved[0].read_bytes() + payload)
    n = len(payload)
    embedded = tmp_path / "embedded.safetensors"
    entry = {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}
    header = {"__metadata__": _model_meta(), "x": entry}
    embedded.write_bytes(_raw(header, payload))
    for path in (plain, zipped, appended, embedded):
        for loader in (load_model, read_metadata, load_tensors):
            if loader is not load_model and path == embedded:
                continue  # valid header and plain bytes: only the model check must refuse it
            with pytest.raises(ModelFileError, match=path.name):
                loader(path)
    assert "pickle" in str(pytest.raises(ModelFileError, load_model, plain).value)
    assert not marker.exists()


class _CountingFile:
    """A file handle that adds the number of bytes read to ``counter[0]``."""

    def __init__(self, handle, counter: list[int]) -> None:
        self._handle, self._counter = handle, counter

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._counter[0] += len(data)
        return data

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


ABSURD = {
    "huge": _raw(
        {"__metadata__": _model_meta(), "w": {"dtype": "F32", "shape": [10**12, 10**12],
                                              "data_offsets": [0, 4]}}, b"\0" * 4),
    "honest": _raw(
        {"__metadata__": _model_meta(), "w": {"dtype": "F32", "shape": [10**6, 10**6],
                                              "data_offsets": [0, 4 * 10**12]}}, b"\0" * 4),
    "long": struct.pack("<Q", 2**63) + b"{}",
    "deep": struct.pack("<Q", 100_000) + b"[" * 100_000,
}  # fmt: skip


@pytest.mark.parametrize("name", list(ABSURD))
def test_absurd_header_is_refused_from_the_header_alone(tmp_path, monkeypatch, name):
    """10^12 x 10^12 tensors, 4 TB of claimed data, a 2^63-byte header, 100 000 nested brackets:
    refused without reading past the header (a 1 MiB tail after it is never read) and without
    allocating what the header claims (< 50 MiB)."""
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(ABSURD[name] + b"\0" * 2**20)
    read = [0]
    monkeypatch.setattr(
        modelfile, "open", lambda *a, **k: _CountingFile(open(*a, **k), read), raising=False
    )
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=path.name):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0 < read[0] <= len(ABSURD[name]), f"{read[0]} bytes read"
    assert peak < 50 * 2**20


def test_truncated_file_is_refused(saved):
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(path)
    path.write_bytes(data[:20])
    with pytest.raises(ModelFileError, match="not a napari-unet model file"):
        load_model(path)


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "folder",
        "empty",
        "short",
        "zero",
        "random",
        "hdf5",
        "tiff",
        "npy",
        "foreign",
        "json",
    ],  # fmt: skip
)
def test_foreign_files_are_refused(tmp_path, kind):
    path = tmp_path / f"{kind}.safetensors"
    rng = np.random.default_rng(3)
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "short":
        path.write_bytes(b"\x05\0")
    elif kind == "zero":
        path.write_bytes(struct.pack("<Q", 0) + b"{}" + b"\0" * 64)
    elif kind == "random":
        path.write_bytes(rng.bytes(4096))
    elif kind == "hdf5":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + rng.bytes(512))
    elif kind == "tiff":
        path.write_bytes(b"II*\x00\x08\x00\x00\x00" + rng.bytes(512))
    elif kind == "npy":
        with open(path, "wb") as handle:
            np.save(handle, np.zeros(10))
    elif kind == "foreign":
        save_file({"w": torch.zeros(3)}, str(path), metadata={"creator": "someone"})
    elif kind == "json":
        path.write_bytes(_raw({"__metadata__": {"format": "napari-unet/9"}}))
    with pytest.raises(ModelFileError, match=path.name) as info:
        load_model(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelFileError, match=path.name):
        read_metadata(path)


def test_shape_and_name_mismatches_are_refused(tmp_path):
    tensors = {k: v.contiguous() for k, v in _model().state_dict().items()}
    no_bias = {k: v for k, v in tensors.items() if k != "head.bias"}
    wide = {"format": FORMAT, "napari_unet": _metadata(TINY.with_(width=8)).to_json()}
    cases = {
        "shapes": (tensors, wide, "expected"),
        "missing": (no_bias, _model_meta(), "missing"),
        "extra": ({**tensors, "evil": torch.zeros(1)}, _model_meta(), "unexpected"),
        "dtype": ({**tensors, "head.bias": tensors["head.bias"].double()}, _model_meta(), "F64"),
    }
    for name, (state, meta, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path), metadata=meta)
        with pytest.raises(ModelFileError, match=message):
            load_model(path)


def test_metadata_validation():
    good = json.loads(_metadata().to_json())
    with pytest.raises(InputError, match="unknown metadata keys: script"):
        ModelMetadata.from_json(json.dumps({**good, "script": "rm -rf /"}))
    with pytest.raises(InputError, match="missing"):
        ModelMetadata.from_json(json.dumps({k: v for k, v in good.items() if k != "class_names"}))
    with pytest.raises(InputError, match="unknown U-Net"):
        ModelMetadata.from_json(json.dumps({**good, "architecture": {"width": 4, "x": 1}}))
    with pytest.raises(InputError, match="NaN"):
        ModelMetadata.from_json(json.dumps(good).replace("99.8", "NaN"))
    with pytest.raises(InputError, match="duplicate"):
        ModelMetadata.from_json('{"class_names": [], "class_names": []}')
    with pytest.raises(InputError, match="format_version"):
        ModelMetadata.from_json(json.dumps({**good, "format_version": 2}))
    with pytest.raises(InputError):
        ModelMetadata.from_json("[1, 2]")
    with pytest.raises(InputError, match="2 unique class names"):
        _metadata(class_names=["a"])
    with pytest.raises(InputError, match="2 unique class names"):
        _metadata(class_names=["a", "a"])
    with pytest.raises(InputError, match="normalization"):
        _metadata(normalization={"method": {"nested": 1}})
    with pytest.raises(InputError, match="normalization"):
        _metadata(normalization={"low": True})
    with pytest.raises(InputError, match="JSON"):
        _metadata(provenance={"when": object()})
    diverged = _metadata(provenance={"loss": float("nan"), "history": [1.0, float("inf")]})
    assert diverged.provenance == {"loss": None, "history": [1.0, None]}


def test_unknown_metadata_keys_in_a_file_are_refused(tmp_path):
    data = json.loads(_metadata().to_json())
    data["extra"] = 1
    path = tmp_path / "extra.safetensors"
    state = {k: v.contiguous() for k, v in _model().state_dict().items()}
    save_file(state, str(path), metadata={"format": FORMAT, "napari_unet": json.dumps(data)})
    with pytest.raises(ModelFileError, match="unknown metadata keys: extra"):
        read_metadata(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_refused(saved):
    with pytest.raises(DeviceError):
        load_model(saved[0], device="cuda")


def test_header_lengths_that_look_like_magic_numbers_are_fine(tmp_path):
    """A 640-byte header starts with b"\\x80\\x02", like a pickle; it must still load."""
    for length in (0x280, 0x380):
        meta = _model_meta()
        text = json.dumps({"__metadata__": meta})
        meta["pad"] = " " * (length - len(text) - len(', "pad": ""'))
        path = tmp_path / f"{length}.safetensors"
        path.write_bytes(_raw({"__metadata__": meta}))
        assert path.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03")
        assert load_tensors(path)[1] == json.loads(meta["napari_unet"])

"""Killing real ``napari-unet`` processes: checkpoints stay loadable and resume, a zarr output
resumes to exactly the labels of an uninterrupted run, a TIFF output is whole or absent.

SIGKILL cannot be caught: these tests check what is on disk afterwards. SIGTERM (``kill``,
cluster schedulers) is handled like Ctrl+C: training writes a checkpoint, prediction removes its
temporary file. See docs/reliability.md, "Crash safety".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main

NORM = {"method": "percentile", "low": 1.0, "high": 99.8}
TRAIN = [
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
PREDICT = ["--instances", "--tta", "--quiet", "--device", "cpu"]


#: Deadline for an event a test waits for before it kills: generous, so that a busy machine
#: slows a test down but never fails it.
DEADLINE_S = 120.0
#: How often a file-system condition is re-checked while waiting (a new stderr line wakes the
#: wait at once). Only a poll interval: no test relies on how long anything takes.
POLL_S = 0.01


class Running:
    """A real ``python -m napari_unet.cli`` process. A thread collects its stderr lines, so a
    test can wait for a line (or a file) with a deadline and kill it right after the event."""

    def __init__(self, *args, cwd: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "napari_unet.cli", *map(str, args)],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def stderr(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def has_line(self, prefix: str) -> bool:
        with self._changed:
            return any(line.startswith(prefix) for line in self.lines)

    def wait_for(self, condition, what: str, timeout: float = DEADLINE_S) -> None:
        """Return once ``condition()`` holds; fail (and kill) if the process ends first or the
        event does not come within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                self._reader.join(timeout=10)
                raise AssertionError(
                    f"the process ended (exit {self.proc.returncode}) before {what}; "
                    f"stderr:\n{self.stderr()}"
                )
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"no {what} within {timeout:.0f} s; stderr so far:\n{self.stderr()}"
                )
            with self._changed:
                self._changed.wait(POLL_S)  # a poll interval, not a synchronisation

    def stop(self, sig: int) -> tuple[int, str]:
        """Send ``sig``; wait for the process to end: (exit code, all of its stderr)."""
        self.proc.send_signal(sig)
        self.proc.wait(timeout=DEADLINE_S)
        self._reader.join(timeout=DEADLINE_S)
        return self.proc.returncode, self.stderr()


def replaced(path: Path, times: int):
    """A condition: ``path`` exists and has been replaced (atomic rename: a new inode and
    modification time) at least ``times`` times since the first call."""
    seen: set[tuple[int, int]] = set()

    def check() -> bool:
        try:
            info = path.stat()
        except FileNotFoundError:
            return False
        seen.add((info.st_ino, info.st_mtime_ns))
        return len(seen) > times

    return check


def hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from napari_unet.io.modelfile import ModelMetadata, save_model
    from napari_unet.model import UNet, UNetConfig
    from napari_unet.sample_data import CellSampleConfig, make_cell_stack

    folder = tmp_path_factory.mktemp("crash")
    image, labels = make_cell_stack(
        2, CellSampleConfig(shape=(64, 64), n_cells=5, cell_radius=9), seed=4
    )
    tifffile.imwrite(folder / "image.tif", image)
    tifffile.imwrite(folder / "labels.tif", labels)
    stack, _ = make_cell_stack(
        12, CellSampleConfig(shape=(128, 128), n_cells=10, cell_radius=10), seed=5
    )
    tifffile.imwrite(folder / "stack.tif", stack)
    torch.manual_seed(0)
    net = UNet(UNetConfig(width=8, depth=2, dropout=0.0)).eval()
    with torch.no_grad():
        # decisive logits: an untrained net's ~0.5 probabilities would let rounding noise of the
        # order of 1e-7 flip whole planes between two otherwise identical runs
        net.head.weight.mul_(200.0)
        net.head.bias[1] = 0.02
    meta = ModelMetadata(
        architecture=net.config,
        normalization=NORM,
        class_names=["background", "object"],
        provenance={},
    )
    save_model(folder / "model.safetensors", net, meta)
    return folder


@pytest.fixture(scope="module")
def reference(data) -> np.ndarray:
    """Labels of an uninterrupted run (the same command, in-process, to .npy)."""
    out = data / "reference.npy"
    assert (
        main(
            [
                "predict",
                str(data / "model.safetensors"),
                str(data / "stack.tif"),
                "--out",
                str(out),
                *PREDICT,
            ]
        )
        == 0
    )
    return np.load(out)


# ----------------------------------------------------------------------------- training
def test_sigkill_during_training_leaves_a_loadable_checkpoint_that_resumes(data, tmp_path, capsys):
    from napari_unet.annotation.schema import training_planes
    from napari_unet.io.modelfile import read_metadata
    from napari_unet.model import UNet
    from napari_unet.training.checkpoint import read_checkpoint_metadata
    from napari_unet.training.trainer import TrainConfig, Trainer

    ckpt, out = tmp_path / "run.ckpt", tmp_path / "model.safetensors"
    proc = Running(
        "train",
        data / "image.tif",
        data / "labels.tif",
        "--out",
        out,
        "--steps",
        "100000",
        "--checkpoint",
        ckpt,
        "--checkpoint-every",
        "5",
        *TRAIN,
        cwd=tmp_path,
    )
    # the first checkpoint, then two more: checkpoints are being replaced every 5 steps, so the
    # kill may well land in the middle of one
    proc.wait_for(replaced(ckpt, 2), what="three checkpoints (steps 5, 10, 15)")
    code, _ = proc.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not out.exists()
    # a killed atomic write may leave its temporary file, never a damaged checkpoint
    assert all(p.name.startswith(".run.ckpt.tmp") for p in hidden(tmp_path)), hidden(tmp_path)

    meta = read_checkpoint_metadata(ckpt)
    image, labels = tifffile.imread(data / "image.tif"), tifffile.imread(data / "labels.tif")
    planes, _ = training_planes(image, labels)
    trainer = Trainer(
        UNet(meta.architecture), planes, TrainConfig(steps=100000, tile=44, batch_size=1)
    )
    trainer.load_checkpoint(ckpt)
    step = trainer.step
    assert step >= 15 and step % 5 == 0 and len(trainer.history) == step

    code = main(
        [
            "train",
            str(data / "image.tif"),
            str(data / "labels.tif"),
            "--out",
            str(out),
            "--resume",
            str(ckpt),
            "--checkpoint",
            str(ckpt),
            "--steps",
            str(step + 3),
            *TRAIN,
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert f"steps {step}->{step + 3}" in capsys.readouterr().err
    assert read_metadata(out).provenance["steps"] == step + 3
    assert read_checkpoint_metadata(ckpt).provenance["steps"] == step + 3


def test_sigterm_during_training_writes_a_checkpoint(data, tmp_path):
    from napari_unet.training.checkpoint import read_checkpoint_metadata

    ckpt, out = tmp_path / "m.ckpt", tmp_path / "m.safetensors"
    loud = [arg for arg in TRAIN if arg != "--quiet"]  # progress lines: the event to wait for
    proc = Running(
        "train",
        data / "image.tif",
        data / "labels.tif",
        "--out",
        out,
        "--steps",
        "100000",
        "--checkpoint-every",
        "100000",
        *loud,
        cwd=tmp_path,
    )
    # the first progress line is printed after the first step (SIGTERM is handled from the start
    # of main(), before the "training ..." line): the signal lands while training runs
    proc.wait_for(lambda: proc.has_line("train ["), what="the first training step")
    code, err = proc.stop(signal.SIGTERM)
    assert code == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("napari-unet: interrupted at step ") and f"--resume {ckpt}" in last, err
    step = int(last.split("at step ")[1].split(";")[0])
    assert step >= 1
    assert read_checkpoint_metadata(ckpt).provenance["steps"] == step
    assert not out.exists() and hidden(tmp_path) == []


# ----------------------------------------------------------------------------- prediction
def _done_planes(zarr_path: Path) -> list[int]:
    try:
        meta = json.loads((zarr_path / "zarr.json").read_text())
    except (OSError, ValueError):
        return []
    return meta.get("attributes", {}).get("napari_unet_done", [])


def test_sigkill_during_zarr_prediction_then_rerun_gives_identical_labels(
    data, tmp_path, reference, monkeypatch
):
    import zarr

    import napari_unet.inference.batch as batch

    out = tmp_path / "labels.zarr"
    args = ["predict", data / "model.safetensors", data / "stack.tif", "--out", out, *PREDICT]
    proc = Running(*args, cwd=tmp_path)
    proc.wait_for(lambda: len(_done_planes(out)) >= 2, what="two finished planes")
    code, _ = proc.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    done = _done_planes(out)
    assert 2 <= len(done) < 12, done

    calls = []
    real = batch.segment_plane
    monkeypatch.setattr(batch, "segment_plane", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    assert main([str(a) for a in args]) == 0  # the same command again
    assert len(calls) == 12 - len(done), f"{len(calls)} planes redone after {done} were done"
    result = zarr.open(str(out), mode="r")
    assert sorted(result.attrs["napari_unet_done"]) == list(range(12))
    differ = [int((a != b).sum()) for a, b in zip(result[:], reference, strict=False)]
    assert differ == [0] * 12, (
        f"pixels differing per plane {differ}; planes done before the kill {done}"
    )


def test_sigkill_during_tiff_prediction_keeps_the_destination_whole(data, tmp_path, reference):
    out = tmp_path / "labels.tif"
    tifffile.imwrite(out, reference)  # a complete result of an earlier run
    before = out.read_bytes()
    loud = [arg for arg in PREDICT if arg != "--quiet"]  # progress lines: the event to wait for
    proc = Running(
        "predict", data / "model.safetensors", data / "stack.tif", "--out", out, *loud, cwd=tmp_path
    )
    # "predict [...] 1/12" is printed after the first plane went into the temporary TIFF
    proc.wait_for(lambda: proc.has_line("predict ["), what="the first finished plane")
    assert hidden(tmp_path), "no temporary TIFF while planes are being written"
    code, _ = proc.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert out.read_bytes() == before  # untouched: the new result lives in a temporary file
    stale = hidden(tmp_path)
    assert len(stale) == 1 and stale[0].name.startswith(".labels.tif.")  # SIGKILL cannot clean up
    # a rerun writes the whole result
    out.unlink()
    assert (
        main(
            [
                "predict",
                str(data / "model.safetensors"),
                str(data / "stack.tif"),
                "--out",
                str(out),
                *PREDICT,
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(tifffile.imread(out), reference)


def test_sigterm_during_tiff_prediction_leaves_nothing(data, tmp_path):
    out = tmp_path / "labels.tif"
    proc = Running(
        "predict",
        data / "model.safetensors",
        data / "stack.tif",
        "--out",
        out,
        "--tta",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    # "predict [...] 1/12" is printed after the first plane went into the temporary TIFF
    proc.wait_for(lambda: proc.has_line("predict ["), what="the first finished plane")
    assert hidden(tmp_path), "no temporary TIFF while planes are being written"
    code, err = proc.stop(signal.SIGTERM)
    assert code == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "napari-unet: interrupted"
    assert list(tmp_path.iterdir()) == []

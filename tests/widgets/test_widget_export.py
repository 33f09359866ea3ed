"""5 Export in a real viewer: the model just trained as a bioimage.io package, a model file as
ONNX, the checker's verdict shown, and bad input as one notification each."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from widget_helpers import add_cells, train_tiny_model

from napari_unet._widgets import _session
from napari_unet._widgets.export import NO_MODEL
from napari_unet.inference.job import SOURCES
from napari_unet.io.modelfile import save_model

pytestmark = pytest.mark.viewer


def _errors(notifications) -> list[str]:
    return [m for severity, m in notifications if severity.lower() == "error"]


def _open(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "5 Export")
    return widget


def test_export_errors_are_one_notification(viewer, tmp_path, notifications, monkeypatch):
    export = _open(viewer)
    assert export.source.value == SOURCES[0] and export.format.value == "bioimageio"
    assert export.export() is None and export.worker is None  # nothing trained yet
    assert _errors(notifications) == [NO_MODEL]
    assert export.status.text() == f"not exported: {NO_MODEL}"

    export.source.value = SOURCES[1]  # a model file, but none chosen
    assert export.export() is None
    assert _errors(notifications)[-1] == "choose the model file to export"
    export.model_path.value = str(tmp_path / "missing.safetensors")
    assert export.export() is None
    assert _errors(notifications)[-1].endswith("missing.safetensors: no such model file")

    model, metadata = train_tiny_model(_cells(), steps=1)
    path = save_model(tmp_path / "m.safetensors", model, metadata)
    export.model_path.value = str(path)
    (tmp_path / "a-file").write_text("")
    assert export.export(out=tmp_path / "a-file" / "m.zip") is None  # its folder is a file
    assert _errors(notifications)[-1].endswith("is not a folder")
    assert export.export(out=tmp_path / "nowhere" / "m.zip") is None
    assert _errors(notifications)[-1].endswith("does not exist")

    # ONNX packages missing (they are installed here: their absence is simulated)
    from napari_unet.io import export as core

    monkeypatch.setattr(core, "_missing_onnx", lambda: ["onnxscript"])
    worker = export.export(fmt="onnx", out=tmp_path / "m.onnx")
    assert worker is not None
    _wait(export)
    message = _errors(notifications)[-1]
    assert message.startswith("ONNX export needs the onnxscript package(s): pip install")
    assert "Traceback" not in message and not (tmp_path / "m.onnx").exists()
    assert export.check is None and export.verdict.text() == ""
    assert len(_errors(notifications)) == 6  # one notification per attempt


def _cells():
    from napari_unet.sample_data import CellSampleConfig, make_cell_stack

    return make_cell_stack(3, CellSampleConfig(shape=(96, 96), n_cells=5), seed=1)


def _wait(export, qtbot=None, timeout_s: float = 90.0) -> None:
    from qtpy.QtCore import QCoreApplication

    from napari_unet._widgets._dock import wait_until

    def idle() -> bool:
        QCoreApplication.processEvents()
        return export.worker is None

    assert wait_until(idle, timeout_s, poll_s=0.05)


def test_export_the_model_just_trained_and_a_model_file(viewer, cells, tmp_path, notifications):
    image, _ = add_cells(viewer, cells)
    model, metadata = train_tiny_model(cells, steps=2)
    _session.set_trained(model, metadata, "trained on 'cells', 2 steps", stem="cells-run")
    export = _open(viewer)
    viewer.dims.set_point(0, 2.0)  # plane 2 on screen: the package's sample
    assert export.sample.value is image
    assert export.default_out_path().name == "cells.bioimageio.zip"
    assert export.out.value == export.default_out_path()  # suggested, following the choices
    export.onnx_weights.value = False  # quicker; ONNX is exported below
    export.training_data.value = "4 synthetic planes"
    export.authors.value = "A. B., C. D."
    out = tmp_path / "cells.zip"
    assert export.export(out=out) is not None
    assert not export.export_button.isEnabled()
    _wait(export)
    assert not _errors(notifications)
    assert export.exported == out and out.is_file()
    assert export.status.text().startswith(f"wrote {out} (bioimage.io package, TorchScript")
    # the verdict of the bioimage.io tools is shown
    check = export.check
    assert check.passed and check.checker.startswith("bioimageio.core")
    assert export.verdict.text() == f"✔ {check.verdict}"
    assert "passed" in export.verdict.text() and "bioimageio.core" in export.checker.text()
    with zipfile.ZipFile(out) as archive:
        test_input = np.load(io.BytesIO(archive.read("test_input.npy")))
        rdf = archive.read("rdf.yaml").decode()
    assert "4 synthetic planes" in rdf and "C. D." in rdf
    tile = test_input.shape[-1]
    top = (cells[0].shape[-1] - tile) // 2
    np.testing.assert_allclose(test_input[0, 0], cells[0][2, top : top + tile, top : top + tile])

    # a model file, as ONNX: the onnx checker and onnxruntime compare it with the model
    path = save_model(tmp_path / "cells.unet.safetensors", model, metadata)
    export.source.value = SOURCES[1]
    export.model_path.value = str(path)
    export.format.value = "onnx"
    assert not export.sample.visible and not export.onnx_weights.visible
    assert export.default_out_path() == tmp_path / "cells.onnx"
    assert export.out.value == tmp_path / "cells.onnx"  # the name chosen, with the new suffix
    export.out.value = str(tmp_path / "sub")  # a folder: the suggested name in it
    (tmp_path / "sub").mkdir()
    assert export.export() is not None
    _wait(export)
    assert not _errors(notifications)
    written = tmp_path / "sub" / "cells.onnx"
    assert written.is_file() and export.out.value == written and export.exported == written
    assert export.check.passed and "onnxruntime" in export.check.checker
    assert "its output equals the model's" in export.verdict.text()

"""5 Export: write the model just trained (or a model file) as a bioimage.io package, ONNX or
TorchScript, and show the checker's verdict.

The export is :func:`napari_unet.io.export.export_model`, the code behind ``napari-unet export``,
and the check :func:`napari_unet.io.export_check.check_export` (``napari-unet export --check``);
both run in a worker thread (:func:`napari_unet.io.export_check.export_job`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QLabel, QProgressBar, QWidget

from napari_unet._widgets import _common, _session
from napari_unet._widgets._dock import DockWidget, stopper, unless_deleted
from napari_unet._widgets._forms import layer_picker
from napari_unet.errors import InputError
from napari_unet.inference.job import SOURCES
from napari_unet.io.export import FORMATS, default_tile, onnx_available
from napari_unet.io.export_check import ExportCheck, ExportRequest, checker_note, export_job
from napari_unet.io.files import check_output_folder
from napari_unet.io.modelfile import read_metadata
from napari_unet.io.planes import read_plane
from napari_unet.model import min_input_size

SUFFIXES = {"bioimageio": ".bioimageio.zip", "onnx": ".onnx", "torchscript": ".pt"}
FORMAT_TIP = (
    "bioimageio: a zip for bioimage.io, deepImageJ, ilastik and other consumers (TorchScript "
    "and ONNX weights, normalisation and softmax included, test tensors, cover); onnx: the "
    "network alone (logits of normalised input); torchscript: the same for PyTorch"
)
NO_MODEL = "no model to export: train one in 3 Train, or choose 'model file...'"
STOP_WAIT_S = 30.0  # closing the widget waits this long for an export to end


class ExportWidget(DockWidget):
    """Export a model and show whether the result passed its check."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self.checkpoint_dir = Path(tempfile.gettempdir()) / "napari-unet"  # as 3 Train's
        self.exported: Path | None = None
        self._written, self._note = "", ""  # the export's summary line; a note on the sample
        self.check: ExportCheck | None = None
        self.source = ComboBox(
            label="model",
            choices=list(SOURCES),
            tooltip="the model trained last in 3 Train (this session) or a model file",
        )
        self.model_path = FileEdit(label="model file", mode="r", filter="*.safetensors")
        self.model_path.tooltip = "the napari-unet model file (.safetensors) to export"
        self.format = ComboBox(
            label="format", choices=list(FORMATS), value="bioimageio", tooltip=FORMAT_TIP
        )
        self.out = FileEdit(label="save as", mode="w")
        self.out.tooltip = (
            "the file to write (replaced if it exists); a folder: the suggested name in it"
        )
        self.sample = layer_picker(
            viewer,
            Image,
            "sample image",
            "bioimageio: the plane on screen of this image (its centre) becomes the package's "
            "test input and cover; none: a random test image",
            # images with an annotation layer (trained on; not a weight map or a probability
            # layer) are offered first
            prefer=lambda layer: bool(_common.annotation_layers(viewer, layer)),
            placeholder="none: a random test image",
        )
        self.training_data = LineEdit(label="training data")
        self.training_data.tooltip = "bioimageio: what the model was trained on, in your words"
        self.authors = LineEdit(label="authors")
        self.authors.tooltip = "bioimageio: who trained the model, separated by commas"
        self.onnx_weights = CheckBox(text="ONNX weights too", value=onnx_available())
        self.onnx_weights.tooltip = (
            "bioimageio: add ONNX weights beside the TorchScript ones (needs onnx and onnxscript)"
        )
        self.form = Container(widgets=[self.source, self.model_path, self.format, self.out])
        self.form.extend([self.sample, self.training_data, self.authors, self.onnx_weights])
        _common.add_buttons(self, export_button=("Export", self.export))
        self.export_button.setToolTip("export in the background, then check the file written")
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1)
        self.status, self.verdict = QLabel("", self), QLabel("", self)
        for label in (self.status, self.verdict):
            _common.wrap(label)
        self.checker = _common.hint(checker_note())
        _common.column(
            self.body,
            self.form,
            self.export_button,
            self.progress,
            self.status,
            self.verdict,
            self.checker,
            "The export is the command line's napari-unet export (the same code); the file "
            "written is then checked and the verdict shown above.",
        )
        self._suggested = ""
        for widget in (self.source, self.format, self.model_path, self.sample):
            widget.changed.connect(self._show_rows)
            widget.changed.connect(self._suggest_out)
        self.follow(_session.changed, self._suggest_out)
        self._show_rows()
        self._suggest_out()

    def out_text(self) -> str:
        """The file typed or chosen in 'save as' ("" when none)."""
        text = self.out.line_edit.value.strip()
        return "" if text in ("", ".") else text

    @unless_deleted
    def _suggest_out(self, *_args) -> None:
        """Follow the model and format with the suggested file name, unless the user chose one."""
        text = self.out_text()
        if text in ("", self._suggested):
            self._suggested = str(self.default_out_path())
            self.out.value = self._suggested
            return
        wanted = SUFFIXES[self.format.value]
        for suffix in (*SUFFIXES.values(), ".zip"):  # a chosen name keeps its stem
            if text.endswith(suffix) and not text.endswith(wanted):
                self.out.value = text.removesuffix(suffix) + wanted
                return

    def _show_rows(self, *_args) -> None:
        self.model_path.visible = self.source.value == SOURCES[1]
        package = self.format.value == "bioimageio"
        for widget in (self.sample, self.training_data, self.authors, self.onnx_weights):
            widget.visible = package
        self.checker.setVisible(package)

    # ------------------------------------------------------------------ what to export
    def model_file(self) -> Path:
        """The model file to export: the session's model (written to a file once) or the one
        chosen; raises :class:`InputError` when there is none."""
        if self.source.value == SOURCES[0]:
            entry = _session.trained()
            if entry is None:
                raise InputError(NO_MODEL)
            return entry.model_file(self.checkpoint_dir)
        text = self.model_path.line_edit.value.strip()
        if not text:
            raise InputError("choose the model file to export")
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(f"{path}: no such model file")
        return path

    def default_out_path(self, fmt: str | None = None) -> Path:
        """Where Export writes when 'save as' is empty: ``<name><suffix>`` next to the model file
        chosen, or for the model just trained next to the sample image's file (else in the
        working folder)."""
        fmt = fmt or self.format.value
        if self.source.value == SOURCES[1] and self.model_path.line_edit.value.strip():
            model = Path(self.model_path.line_edit.value.strip()).expanduser()
            stem = model.name.removesuffix(".safetensors").removesuffix(".unet")
            return model.parent / f"{stem}{SUFFIXES[fmt]}"
        image, entry = self.sample.value, _session.trained()
        stem = image.name if image is not None else (entry.stem if entry else "unet")
        return _common.beside(image, stem, SUFFIXES[fmt])

    def _sample(self, model_path: Path) -> tuple[np.ndarray | None, int | None, str]:
        """The plane on screen of the sample image (C x Y x X, or Y x X for one channel), the
        tile to cut from it, and a note when it cannot be used."""
        image = self.sample.value
        if image is None:
            return None, None, ""
        cfg = read_metadata(model_path).architecture
        axis = _common.channel_axis(image)
        n_lead = len(_common.spatial_shape(image, axis)) - 2
        index = _common.current_plane(self.viewer, image, n_lead)
        plane = read_plane(_common.layer_data(image), index, axis)
        if plane.shape[0] != cfg.in_channels:
            raise InputError(
                f"the model takes {cfg.in_channels} channel(s), '{image.name}' has "
                f"{plane.shape[0]}: choose another sample image (or none)"
            )
        edge, low, step = min(plane.shape[-2:]), min_input_size(cfg), 2**cfg.depth
        if edge < low:
            return None, None, f"'{image.name}' is smaller than one tile: random test image"
        tile = min(default_tile(cfg), low + (edge - low) // step * step)
        return (plane[0] if cfg.in_channels == 1 else plane), tile, ""

    def request(self, fmt: str | None = None, out: str | Path | None = None) -> ExportRequest:
        """What Export runs now (raises :class:`InputError` on a missing model or folder)."""
        fmt = fmt or self.format.value
        model_path = self.model_file()
        text = str(out) if out is not None else self.out_text()
        target = Path(text).expanduser() if text else self.default_out_path(fmt)
        if target.is_dir():  # a folder (an emptied field reads as the working folder)
            target = target / self.default_out_path(fmt).name
        check_output_folder(target)
        package = fmt == "bioimageio"
        sample, tile, self._note = self._sample(model_path) if package else (None, None, "")
        authors = [a.strip() for a in self.authors.value.split(",") if a.strip()]
        return ExportRequest(
            model_path=model_path,
            fmt=fmt,
            out=target,
            tile=tile,
            training_data=(self.training_data.value.strip() or None) if package else None,
            authors=(authors or None) if package else None,
            sample=sample,
            onnx_weights=bool(self.onnx_weights.value) if package else None,
        )

    # ------------------------------------------------------------------ running
    def export(self, fmt: str | None = None, out: str | Path | None = None):
        """Export in a worker and check the result; returns the worker, or None when it did not
        start (the reason is one notification and the status line)."""
        if self.worker is not None:
            return self.worker
        try:
            request = self.request(fmt, out)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            _common.report_error(exc)
            self.status.setText(f"not exported: {_common.error_message(exc)}")
            return None
        self.exported, self.check = None, None
        self.verdict.setText("")
        self.out.value = str(request.out)
        worker = create_worker(export_job, request, _start_thread=False)
        worker.yielded.connect(self._on_message)
        # closing stops after the step now running: the export, then the check
        return self.start_worker(worker, stopper(worker, worker.quit, "the export", STOP_WAIT_S))

    def _on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "status":
            self.status.setText(message[1])
        elif kind == "exported":
            self.exported = Path(message[1])
            note = f" ({self._note})" if self._note else ""
            self._written = message[2] + note
            self.status.setText(self._written)
        elif kind == "checked":
            self.check = check = message[1]
            self.status.setText(self._written)  # what was written stays above the verdict
            self.verdict.setText(("✔ " if check.passed else "✘ ") + check.verdict)
            self.verdict.setToolTip("\n".join(check.details) or check.verdict)
            if not check.passed:
                show_warning(f"{self.exported.name if self.exported else 'export'}: check failed: "
                             f"{check.verdict}")  # fmt: skip
        elif kind == "error":
            _common.report_error(message[1])
            self.status.setText(f"not exported: {_common.error_message(message[1])}")

    def set_running(self, running: bool) -> None:
        """A busy bar while exporting; full when a file was written."""
        self.export_button.setEnabled(not running)
        self.progress.setRange(0, 0 if running else 1)  # 0, 0: busy
        self.progress.setValue(1 if self.exported and not running else 0)

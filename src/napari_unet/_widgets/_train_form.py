"""The input fields of the Train widget and what they mean (architecture, TrainConfig)."""

from __future__ import annotations

from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible, QLabeledDoubleSlider

from ..augment import AugmentConfig
from ..devices import available_devices
from ..model import PRESETS, UNetConfig
from ..threads import gui_cpu_threads
from ..train import TrainConfig
from ._common import META_IMAGE, LayerCombo, form, hint, is_annotation_layer
from ._plot import LivePlot
from .annotate import layer_mode

MODEL_CHOICES = (
    "new: small preset",
    "new: paper U-Net",
    "new: custom (Advanced)",
    "fine-tune model file...",
)


def _spin(value: int, low: int, high: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


class TrainForm(QWidget):
    """Fields, buttons, progress bar and live plot of the Train widget (no behaviour)."""

    def __init__(self, viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._custom = PRESETS["small"]
        self.image_combo = LayerCombo(viewer, Image, self)
        self.labels_combo = LayerCombo(viewer, Labels, self, prefer=is_annotation_layer)
        self.schema = QLabel("", self)
        self.model_combo = QComboBox(self)
        self.model_combo.addItems(MODEL_CHOICES)
        self.model_path = QLineEdit(self)
        self.model_path.setPlaceholderText("model file (.safetensors)")
        self.browse_button = QPushButton("...", self)
        self.device = QComboBox(self)
        self.device.addItems(available_devices())
        self.steps = _spin(TrainConfig().steps, 1, 1_000_000)
        self.steps.setToolTip(
            "optimiser steps, each on a batch of augmented tiles; training "
            "ends here or when the time budget is spent"
        )
        self.minutes = QDoubleSpinBox(
            self, decimals=1, minimum=0.0, maximum=10_000.0, singleStep=1.0, suffix=" min"
        )
        self.minutes.setSpecialValueText("none")
        self.minutes.setToolTip(
            "training time budget in minutes (none: train for all steps); "
            "the learning rate anneals over the budget"
        )
        self.partial = QCheckBox("only some objects are painted per plane", self)
        self.partial.setToolTip(
            "partial annotations: unpainted pixels count as background only within one object "
            "diameter of a painted object, so unpainted cells are not taught as background"
        )
        self.lr = QDoubleSpinBox(self, decimals=5, singleStep=1e-4, maximum=1.0)
        self.lr.setSpecialValueText("default")
        self.optimizer = QComboBox(self)
        self.optimizer.addItems(["adam", "sgd"])
        self.batch_size = _spin(4, 1, 256)
        self.augment = QLabeledDoubleSlider(self)
        self.augment.setRange(0.0, 2.0)
        self.augment.setValue(1.0)
        self.hold_out = QLineEdit(self)
        self.hold_out.setPlaceholderText("none, or e.g. 3")
        self.width_spin, self.depth_spin = _spin(16, 1, 256), _spin(3, 1, 6)
        self.padding = QComboBox(self)
        self.padding.addItems(["valid", "same"])
        self.tile = _spin(0, 0, 4096)
        self.tile.setSpecialValueText("auto")
        self.preview_every = QDoubleSpinBox(self, value=3.0, maximum=3600.0, suffix=" s")
        self.threads = _spin(0, 0, 1024)
        self.threads.setSpecialValueText("auto (all cores but one)")
        self.preview_button = QPushButton("Preview augmentation", self)
        self.train_button = QPushButton("Train", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.resume_button = QPushButton("Resume", self)
        self.save_button = QPushButton("Save model...", self)
        self.progress = QProgressBar(self)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.plot = LivePlot(self)
        self._layout()
        self.browse_button.clicked.connect(self._browse_model)
        self.labels_combo.currentTextChanged.connect(self._on_labels_changed)
        self.model_combo.currentTextChanged.connect(self._on_model_choice)
        self._on_labels_changed()
        self._on_model_choice(self.model_combo.currentText())

    def _layout(self) -> None:
        path_row = QHBoxLayout()
        path_row.addWidget(self.model_path)
        path_row.addWidget(self.browse_button)
        self._path_row = path_row
        rows = self.rows = form(
            self,
            [
                ("image", self.image_combo),
                ("annotations", self.labels_combo),
                ("schema", self.schema),
                ("model", self.model_combo),
            ],
        )
        rows.addRow("model file", path_row)
        for label, field in (
            ("device", self.device),
            ("steps", self.steps),
            ("time budget", self.minutes),
            ("partial", self.partial),
            ("learning rate", self.lr),
            ("optimizer", self.optimizer),
            ("batch size", self.batch_size),
            ("augmentation", self.augment),
            ("hold out planes", self.hold_out),
        ):
            rows.addRow(label, field)
        advanced = QCollapsible("Advanced", self)
        inner = QWidget(advanced)
        inner.setLayout(
            form(
                inner,
                [
                    ("custom width", self.width_spin),
                    ("custom depth", self.depth_spin),
                    ("custom padding", self.padding),
                    ("tile (px)", self.tile),
                    ("live preview every", self.preview_every),
                    ("CPU threads", self.threads),
                ],
            )
        )
        advanced.addWidget(inner)
        buttons = QHBoxLayout()
        for button in (self.train_button, self.cancel_button, self.resume_button, self.save_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(rows)
        layout.addWidget(advanced)
        layout.addWidget(self.preview_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addWidget(
            hint(
                "Training runs in the background. The live prediction layer "
                "shows the plane on screen every few seconds; the plot shows the "
                "loss and, with hold-out planes, the validation IoU."
            )
        )
        layout.addStretch(1)

    def _on_labels_changed(self, *_args) -> None:
        layer = self.labels_combo.layer()
        if layer is None:
            return
        self.schema.setText(layer_mode(layer))
        if layer.metadata.get(META_IMAGE) in self.viewer.layers:
            self.image_combo.set_layer(layer.metadata[META_IMAGE])

    def _on_model_choice(self, choice: str) -> None:
        fine_tune = choice.startswith("fine-tune")
        label = self.rows.labelForField(self._path_row)
        for widget in (self.model_path, self.browse_button, label):
            widget.setVisible(fine_tune)

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model to fine-tune", "", "napari-unet models (*.safetensors)"
        )
        if path:
            self.model_path.setText(path)

    def set_custom_architecture(self, config: UNetConfig) -> None:
        """Choose "new: custom" with ``config`` (width, depth, padding shown in Advanced)."""
        self._custom = config
        self.width_spin.setValue(config.width)
        self.depth_spin.setValue(config.depth)
        self.padding.setCurrentText(config.padding)
        self.model_combo.setCurrentText(MODEL_CHOICES[2])

    def architecture(self) -> UNetConfig | None:
        """The architecture of a new network (None when fine-tuning a model file)."""
        choice = self.model_combo.currentText()
        if choice.startswith("fine-tune"):
            return None
        if choice == MODEL_CHOICES[0]:
            return PRESETS["small"]
        if choice == MODEL_CHOICES[1]:
            return PRESETS["paper"]
        return self._custom.with_(
            width=self.width_spin.value(),
            depth=self.depth_spin.value(),
            padding=self.padding.currentText(),
        )

    def train_config(self) -> TrainConfig:
        """The training settings shown in the widget."""
        steps = self.steps.value()
        return TrainConfig(
            steps=steps,
            minutes=self.minutes.value() or None,
            batch_size=self.batch_size.value(),
            tile=self.tile.value() or None,
            optimizer=self.optimizer.currentText(),
            lr=self.lr.value() or None,
            augment=AugmentConfig(strength=self.augment.value()),
            device=self.device.currentText(),
        )

    def cpu_threads(self) -> int | None:
        """PyTorch CPU threads for the run (None on a GPU); auto leaves one core to the viewer."""
        device = self.device.currentText()
        if device == "auto":
            device = available_devices()[0]
        if device != "cpu":
            return None
        return self.threads.value() or gui_cpu_threads()

    def set_running(self, running: bool, can_resume: bool, can_save: bool) -> None:
        """Enable the buttons that make sense now."""
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.resume_button.setEnabled(not running and can_resume)
        self.save_button.setEnabled(not running and can_save)
        self.preview_button.setEnabled(not running)

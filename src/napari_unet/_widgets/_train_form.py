"""The input fields of the Train widget and what they mean (architecture, TrainConfig)."""

from __future__ import annotations

from napari.layers import Image, Labels
from qtpy.QtCore import Qt
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

from napari_unet._widgets import _session
from napari_unet._widgets._common import (
    META_IMAGE,
    LayerCombo,
    form,
    hint,
    is_annotation_layer,
    set_tooltips,
)
from napari_unet._widgets._dock import DockWidget
from napari_unet._widgets._plot import LivePlot
from napari_unet._widgets.annotate import layer_mode
from napari_unet.defaults import default_steps
from napari_unet.devices import available_devices
from napari_unet.model import PRESETS, UNetConfig
from napari_unet.threads import gui_cpu_threads
from napari_unet.training.augment import AugmentConfig
from napari_unet.training.trainer import TrainConfig

#: The model choices, in the order shown: the new networks, then (after a separator) the two
#: ways to go on from a trained one. The first is the default: from scratch, which beat the
#: starting model on data it had not seen (docs/benchmarks.md, "Starting model").
MODEL_CHOICES = (
    "new: small preset, from scratch",
    "new: from the starting model",
    "new: paper U-Net",
    "new: custom (Advanced)",
    "continue: model just trained",
    "fine-tune model file...",
)
STARTING = MODEL_CHOICES[1]
CUSTOM = MODEL_CHOICES[3]
#: Fine-tune the session's model just trained (the human-in-the-loop round: segment, correct a
#: plane, continue, segment again); offered once a run has finished in this session.
CONTINUE = MODEL_CHOICES[4]
FINE_TUNE = MODEL_CHOICES[5]
NO_SESSION_MODEL = (
    "no model trained yet in this session: train one first (a 'new: ...' model), then continue it"
)


def _spin(value: int, low: int, high: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


class TrainForm(DockWidget):
    """Fields, buttons, progress bar and live plot of the Train widget (no behaviour)."""

    def __init__(self, viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self._custom = PRESETS["small"]
        self.image_combo = LayerCombo(viewer, Image, self)
        # only layers made (or imported) in 1 Annotate: a ground-truth layer opened with the
        # sample data is never trained on without the user saying so
        self.labels_combo = LayerCombo(viewer, Labels, self, accept=is_annotation_layer)
        self.labels_combo.setPlaceholderText("none: create one in 1 Annotate")
        self.schema = QLabel("", self)
        self.model_combo = QComboBox(self)
        self.model_combo.addItems(MODEL_CHOICES)
        self.model_combo.insertSeparator(MODEL_CHOICES.index(CONTINUE))
        self.model_path = QLineEdit(self)
        self.model_path.setPlaceholderText("model file (.safetensors)")
        self.browse_button = QPushButton("...", self)
        self.device = QComboBox(self)
        self.device.addItems(available_devices())
        self.steps = _spin(default_steps(False), 1, 1_000_000)
        # the steps each kind of run had last: a new model, or continuing the model just
        # trained (the field shows one; switching kind swaps them, so no typed value is lost)
        self._steps_of = {False: default_steps(False), True: default_steps(True)}
        self._continuing = False
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
        self.preview_every = QDoubleSpinBox(
            self, value=3.0, minimum=0.1, maximum=3600.0, suffix=" s"
        )
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
        self._set_tooltips()
        self._layout()
        self.browse_button.clicked.connect(self._browse_model)
        self.labels_combo.currentTextChanged.connect(self._on_labels_changed)
        self.model_combo.currentTextChanged.connect(self._on_model_choice)
        _session.changed.connect(self._on_session_changed)
        self._on_labels_changed()
        self._on_model_choice(self.model_combo.currentText())
        self._on_session_changed()

    def _layout(self) -> None:
        path_row = QHBoxLayout()
        path_row.addWidget(self.model_path)
        path_row.addWidget(self.browse_button)
        self._path_row = path_row
        rows = self.rows = form(
            self.body,
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
        advanced.setToolTip("network shape of a custom model, tile size, preview and CPU threads")
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
        layout = QVBoxLayout(self.body)
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

    def _set_tooltips(self) -> None:
        tips = {
            self.image_combo: "the image layer to learn from (chosen with the annotations)",
            self.labels_combo: "the annotation layer made in 1 Annotate; only its annotated "
            "planes are used (import ground truth there to train on it)",
            self.schema: "how the annotation values are read (set in 1 Annotate): instances, "
            "scribbles or classes; see docs/annotations.md",
            self.model_combo: "small preset from scratch (the default): 16 base channels, depth "
            "3, from random weights; from the starting model: fine-tune the same network as "
            "shipped with the plugin, pretrained on synthetic and public cell images (needs one "
            "channel and two classes, else it starts from scratch; better on phase contrast, "
            "worse on EM than from scratch in our benchmarks); paper U-Net: 64 channels, "
            "depth 4, 31 M parameters (use a GPU); custom: width/depth/padding from Advanced; "
            "continue: train the model just trained further on every annotated plane (after "
            f"correcting its segmentation; {default_steps(True)} steps by default, the plot goes "
            "on); fine-tune: start from a model file of yours",
            self.model_path: "the model file (.safetensors) to fine-tune; its architecture, "
            "normalisation and classes are kept",
            self.browse_button: "choose the model file to fine-tune",
            self.device: "where to train: auto picks CUDA, then Apple MPS, then the CPU",
            self.lr: "learning rate; default: 3e-3 for Adam from scratch, 3e-4 when "
            "fine-tuning, 1e-3 for SGD (the paper: SGD with momentum 0.99); it anneals to 5 %",
            self.optimizer: "adam (the default, learns fastest from few tiles) or sgd with "
            "momentum 0.99 (the paper)",
            self.batch_size: "tiles per optimiser step (default 4; the paper: 1 large tile)",
            self.augment: "strength of the augmentation: 1 = the paper's elastic deformation "
            "(3x3 grid, sigma 10 px) with rotations, flips and gray-value variation; "
            "0 switches all of it off; 2 doubles the deformation",
            self.hold_out: "annotated planes kept out of training to measure progress "
            "(validation IoU in the plot; the best validated weights are kept), "
            "e.g. 3 or 2, 5-7",
            self.width_spin: "custom network: channels of the first level (paper: 64)",
            self.depth_spin: "custom network: pooling steps (paper: 4)",
            self.padding: "custom network: valid (the paper: output smaller than the input "
            "tile, seamless overlap-tile prediction) or same (output as large as the input)",
            self.tile: "input tile edge in pixels; auto: the smallest valid size with an output "
            "of at least 96 px (the paper: 572 -> 388)",
            self.preview_every: "seconds between live predictions of the plane on screen "
            "(spaced out further when a preview is slow, so it takes at most a fifth of the run)",
            self.threads: "PyTorch CPU threads; auto leaves one core to the viewer",
            self.preview_button: "show four augmented versions of the annotated plane on "
            "screen, as training sees them (tiles and targets)",
            self.train_button: "start a new run on every annotated plane except those held out",
            self.cancel_button: "stop after the current step; a checkpoint is written, so the "
            "run can be resumed",
            self.resume_button: "continue the cancelled run from its checkpoint, up to 'steps'",
            self.save_button: "write the trained network (weights + settings) to a "
            ".safetensors model file for 4 Segment, the CLI or sharing",
            self.progress: "steps done, last loss and the estimated time left",
            self.status: "what the widget is doing, or why it stopped",
            self.plot: "training loss (blue, left axis) and validation IoU of the held-out "
            "planes (orange, right axis, 0..1)",
        }
        set_tooltips(tips)

    def _on_labels_changed(self, *_args) -> None:
        layer = self.labels_combo.layer()
        if layer is None:
            self.schema.setText("(no annotation layer)")
            return
        self.schema.setText(layer_mode(layer))
        if layer.metadata.get(META_IMAGE) in self.viewer.layers:
            self.image_combo.set_layer(layer.metadata[META_IMAGE])

    def _on_model_choice(self, choice: str) -> None:
        fine_tune = choice == FINE_TUNE
        label = self.rows.labelForField(self._path_row)
        for widget in (self.model_path, self.browse_button, label):
            widget.setVisible(fine_tune)
        # fine-tuning a model (the session's or a file) gets the short budget, as `train --init`
        continuing = choice in (CONTINUE, FINE_TUNE)
        if continuing != self._continuing:  # default_steps(True) to continue, else (False)
            self._steps_of[self._continuing] = self.steps.value()
            self.steps.setValue(self._steps_of[continuing])
            self._continuing = continuing
        if continuing and _session.trained() is None:
            self.status.setText(f"continue: {NO_SESSION_MODEL}")

    def _on_session_changed(self) -> None:
        """Offer "continue: model just trained" only while the session holds a model."""
        try:
            item = self.model_combo.model().item(self.model_combo.findText(CONTINUE))
        except RuntimeError:  # the widget was deleted; the session signal outlived it
            _session.changed.disconnect(self._on_session_changed)
            return
        entry = _session.trained()
        item.setEnabled(entry is not None)
        item.setData(
            f"continue training the model just trained ({entry.description})"
            if entry
            else NO_SESSION_MODEL,
            Qt.ItemDataRole.ToolTipRole,
        )
        if entry is None and self.is_continuing():
            self.status.setText(f"continue: {NO_SESSION_MODEL}")

    def stop_workers(self) -> None:
        """The widget is closing: stop following the session, then stop the workers."""
        _session.changed.disconnect(self._on_session_changed)  # psygnal: a no-op if gone
        super().stop_workers()

    def is_continuing(self) -> bool:
        """Whether the chosen model is "continue: model just trained"."""
        return self.model_combo.currentText() == CONTINUE

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
        self.model_combo.setCurrentText(CUSTOM)

    def architecture(self) -> UNetConfig | None:
        """The architecture of a new network (None when fine-tuning or continuing a model)."""
        choice = self.model_combo.currentText()
        if choice in (CONTINUE, FINE_TUNE):
            return None
        if choice in MODEL_CHOICES[:2]:
            return PRESETS["small"]
        if choice == MODEL_CHOICES[2]:
            return PRESETS["paper"]
        return self._custom.with_(
            width=self.width_spin.value(),
            depth=self.depth_spin.value(),
            padding=self.padding.currentText(),
        )

    def start(self) -> str:
        """Where a new network starts: ``scratch`` (the default choice) or ``starting-model``."""
        return "starting-model" if self.model_combo.currentText() == STARTING else "scratch"

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

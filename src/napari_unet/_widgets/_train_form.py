"""The input fields of the Train widget and what they mean (architecture, TrainConfig).

The fields are magicgui widgets built from the config dataclasses' field metadata
(:mod:`napari_unet._widgets._forms`); buttons, progress bar and live plot stay Qt.
"""

from __future__ import annotations

from magicgui.types import Separator
from magicgui.widgets import FileEdit, Label
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QProgressBar, QWidget
from superqt import QCollapsible

from napari_unet._widgets import _session
from napari_unet._widgets._common import (
    META_IMAGE,
    TIPS,
    add_buttons,
    column,
    is_annotation_layer,
    set_tooltips,
)
from napari_unet._widgets._dock import DockWidget
from napari_unet._widgets._forms import (
    Remembered,
    config_form,
    field_widget,
    layer_picker,
    widget_value,
)
from napari_unet._widgets._plot import LivePlot
from napari_unet._widgets.annotate import layer_mode
from napari_unet.annotation.schema import AnnotationConfig
from napari_unet.defaults import default_steps
from napari_unet.devices import available_devices
from napari_unet.model import PRESETS, UNetConfig
from napari_unet.threads import gui_cpu_threads
from napari_unet.training.augment import AugmentConfig
from napari_unet.training.job import TrainJob
from napari_unet.training.recipe import MODEL_CHOICES, TrainChoices
from napari_unet.training.trainer import TrainConfig

TRAIN_FIELDS = ("device", "steps", "minutes")
MORE_FIELDS = ("optimizer", "batch_size")
ARCH_FIELDS = ("width", "depth", "padding")
STARTING, CUSTOM, CONTINUE, FINE_TUNE = (MODEL_CHOICES[i] for i in (1, 3, 4, 5))
NO_SESSION_MODEL = (
    "no model trained yet in this session: train one first (a 'new: ...' model), then continue it"
)
SCHEMA_TIP = (
    "how the annotation values are read (set in 1 Annotate): instances, scribbles or classes; "
    "see docs/annotations.md"
)


class TrainForm(DockWidget):
    """Fields, buttons, progress bar and live plot of the Train widget (no behaviour)."""

    def __init__(self, viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self._custom = PRESETS["small"]
        self.image_combo = layer_picker(
            viewer, Image, "image", "the image layer to learn from (chosen with the annotations)"
        )
        # only layers made (or imported) in 1 Annotate: a ground-truth layer opened with the
        # sample data is never trained on without the user saying so
        self.labels_combo = layer_picker(
            viewer,
            Labels,
            "annotations",
            "the annotation layer made in 1 Annotate; only its annotated planes are used "
            "(import ground truth there to train on it)",
            accept=is_annotation_layer,
            placeholder="none: create one in 1 Annotate",
        )
        self.schema = Label(label="schema", tooltip=SCHEMA_TIP)
        choices = [*MODEL_CHOICES[:4], Separator, *MODEL_CHOICES[4:]]
        self.model_combo, self.hold_out = config_form(TrainChoices, model={"choices": choices})
        self.hold_out.native.setPlaceholderText("none, or e.g. 3")
        self.model_path = FileEdit(label="model file", mode="r", filter="*.safetensors")
        self.model_path.tooltip = (
            "the model file (.safetensors) to fine-tune; its architecture, normalisation and "
            "classes are kept"
        )
        devices = available_devices()  # the first is the default
        self.form = config_form(
            TrainConfig, TRAIN_FIELDS, device={"choices": devices, "value": devices[0]}
        )
        self.partial = field_widget(AnnotationConfig, "partial")
        self.lr = field_widget(TrainConfig, "lr")
        more = config_form(TrainConfig, MORE_FIELDS)
        self.augment = field_widget(AugmentConfig, "strength")
        small = {n: {"value": getattr(PRESETS["small"], n)} for n in ARCH_FIELDS}
        self.advanced = config_form(UNetConfig, ARCH_FIELDS, **small)
        self.advanced.append(field_widget(TrainConfig, "tile"))
        self.advanced.extend(config_form(TrainJob, ("preview_every_s", "cpu_threads")))
        remembered = [*self.form, self.partial, self.lr, *more, self.augment, *self.advanced]
        self._continuing = False  # see _steps_of
        self.settings = Remembered("train", remembered, skip=self._not_remembered)
        self.form.extend([self.partial, self.lr, *more, self.augment, self.hold_out])
        for widget in self.form:
            setattr(self, widget.name, widget)
        arch = self.advanced
        self.width_spin, self.depth_spin, self.padding = arch["width"], arch["depth"], arch[2]
        self.tile, self.preview_every, self.threads = arch[3], arch[4], arch[5]
        top = (self.image_combo, self.labels_combo, self.schema, self.model_combo, self.model_path)
        for index, widget in enumerate(top):
            self.form.insert(index, widget)
        # the steps each kind of run had last: a new model, or continuing the model just
        # trained (the field shows one; switching kind swaps them, so no typed value is lost)
        self._steps_of = {False: self.steps.value, True: default_steps(True)}
        add_buttons(
            self,
            preview_button="Preview augmentation",
            train_button="Train",
            cancel_button="Cancel",
            resume_button="Resume",
            save_button="Save model...",
        )
        self.progress, self.status, self.plot = QProgressBar(self), QLabel("", self), LivePlot(self)
        self.status.setWordWrap(True)
        set_tooltips(self, TIPS["train"])
        advanced = QCollapsible("Advanced", self)
        advanced.setToolTip("network shape of a custom model, tile size, preview and CPU threads")
        advanced.addWidget(self.advanced.native)
        column(
            self.body,
            self.form,
            advanced,
            self.settings.button,
            self.preview_button,
            (self.train_button, self.cancel_button, self.resume_button, self.save_button),
            self.progress,
            self.status,
            self.plot,
            "Training runs in the background. The live prediction layer shows the plane on "
            "screen every few seconds; the plot shows the loss and, with hold-out planes, the "
            "validation IoU.",
            stretch=True,
        )
        self.labels_combo.changed.connect(self._on_labels_changed)
        self.model_combo.changed.connect(self._on_model_choice)
        _session.changed.connect(self._on_session_changed)
        self._on_labels_changed()
        self._on_model_choice(self.model_combo.value)
        self._on_session_changed()

    def _not_remembered(self) -> set[str]:
        """Steps are remembered for new models only (continuing has its own default)."""
        return {"steps"} if self._continuing else set()

    def _on_labels_changed(self, *_args) -> None:
        layer = self.labels_combo.value
        if layer is None:
            self.schema.value = "(no annotation layer)"
            return
        self.schema.value = layer_mode(layer)
        if layer.metadata.get(META_IMAGE) in self.viewer.layers:
            self.image_combo.value = self.viewer.layers[layer.metadata[META_IMAGE]]

    def _on_model_choice(self, choice: str) -> None:
        self.model_path.visible = choice == FINE_TUNE
        # fine-tuning a model (the session's or a file) gets the short budget, as `train --init`
        continuing = choice in (CONTINUE, FINE_TUNE)
        if continuing != self._continuing:  # default_steps(True) to continue, else (False)
            self._steps_of[self._continuing] = self.steps.value
            self._continuing = continuing
            self.steps.value = self._steps_of[continuing]
        if continuing and _session.trained() is None:
            self.status.setText(f"continue: {NO_SESSION_MODEL}")

    def _on_session_changed(self) -> None:
        """Offer "continue: model just trained" only while the session holds a model."""
        try:
            combo = self.model_combo.native
            item = combo.model().item(combo.findText(CONTINUE))
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
        return self.model_combo.value == CONTINUE

    def model_file(self) -> str:
        """The model file to fine-tune, as typed or chosen ("" when none)."""
        return self.model_path.line_edit.value.strip()

    def set_custom_architecture(self, config: UNetConfig) -> None:
        """Choose "new: custom" with ``config`` (width, depth, padding shown in Advanced)."""
        self._custom = config
        for name in ARCH_FIELDS:
            self.advanced[name].value = getattr(config, name)
        self.model_combo.value = CUSTOM

    def architecture(self) -> UNetConfig | None:
        """The architecture of a new network (None when fine-tuning or continuing a model)."""
        choice = self.model_combo.value
        if choice in (CONTINUE, FINE_TUNE):
            return None
        if choice in MODEL_CHOICES[:2]:
            return PRESETS["small"]
        if choice == MODEL_CHOICES[2]:
            return PRESETS["paper"]
        return self._custom.with_(**{n: self.advanced[n].value for n in ARCH_FIELDS})

    def start(self) -> str:
        """Where a new network starts: ``scratch`` (the default choice) or ``starting-model``."""
        return "starting-model" if self.model_combo.value == STARTING else "scratch"

    def train_config(self) -> TrainConfig:
        """The training settings shown in the widget."""
        fields = (*TRAIN_FIELDS, *MORE_FIELDS, "lr")
        values = {n: widget_value(self.form[n], TrainConfig) for n in fields}
        return TrainConfig(
            **values,
            tile=widget_value(self.tile, TrainConfig),
            augment=AugmentConfig(strength=self.augment.value),
        )

    def cpu_threads(self) -> int | None:
        """PyTorch CPU threads for the run (None on a GPU); auto leaves one core to the viewer."""
        device = self.device.value
        if device == "auto":
            device = available_devices()[0]
        if device != "cpu":
            return None
        return self.threads.value or gui_cpu_threads()

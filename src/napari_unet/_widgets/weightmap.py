"""2 Weight map: show the U-Net loss weights (class balance + border term) of the annotations.

The layer shows what the border term adds: weights up to the class-balance weights of the plane
are transparent, the gaps between touching objects glow (orange to yellow up to the largest
weight), and a plane that is not annotated shows nothing.
"""

from __future__ import annotations

from dataclasses import asdict

import napari
import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.colormaps import Colormap
from qtpy.QtWidgets import QLabel, QWidget

from napari_unet._widgets import _common
from napari_unet._widgets._dock import DockWidget
from napari_unet._widgets._forms import Remembered, annotation_picker, config_form, read_config
from napari_unet._widgets.annotate import layer_mode, training_plane_list
from napari_unet.annotation.job import WeightSummary, weight_planes
from napari_unet.annotation.schema import AnnotationConfig
from napari_unet.annotation.weightmap import WeightMapConfig
from napari_unet.errors import AnnotationError
from napari_unet.io.plane_lists import plane_names

PAPER_FIELDS = ("w0", "sigma", "class_balance")
FALK_FIELDS = ("v_bal", "sigma_bal", "lam", "sigma_sep")
FIELDS = ("variant", *PAPER_FIELDS, *FALK_FIELDS)
#: Transparent at the contrast limits' low end (the base weight), then orange to pale yellow.
GLOW = Colormap(
    [[0.0, 0.0, 0.0, 0.0], [0.9, 0.3, 0.05, 0.85], [1.0, 1.0, 0.55, 1.0]],
    name="U-Net weights",
    controls=[0.0, 0.25, 1.0],
)


class WeightMapWidget(DockWidget):
    """Compute and display the loss weight map of an annotation layer."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self.summary = WeightSummary([])  # of the planes computed by the last run
        self.labels_combo = annotation_picker(
            viewer,
            "the annotation layer (from 1 Annotate) whose loss weights to show; training uses "
            "the settings chosen here for it",
        )
        self.form = config_form(WeightMapConfig, FIELDS)
        self.scope = ComboBox(
            name="scope",
            label="planes",
            choices=["current plane", "all annotated planes"],
            tooltip="current plane: the plane on screen; all annotated planes: every plane "
            "listed in 1 Annotate",
        )
        _common.add_buttons(self, compute_button=("Compute weight map", self.compute))
        self.settings = Remembered("weightmap", self.form)
        self.form.insert(0, self.labels_combo)
        self.form.extend([self.scope, self.settings.button])
        for name in FIELDS:
            setattr(self, name, self.form[name])
        self.status = QLabel("", self)
        _common.wrap(self.status)
        _common.set_tooltips(self, _common.TIPS["weightmap"])
        _common.column(
            self.body,
            self.form,
            self.compute_button,
            self.status,
            "paper: w = w_c + w0 exp(-(d1 + d2)^2 / 2 sigma^2) on background, d1, d2 the "
            "distances to the nearest and second-nearest object; falk: Falk et al. 2019. "
            "Shown: what the border term adds (the class-balance weights are transparent), so "
            "the gaps between touching objects glow. Training uses these settings.",
        )
        self.variant.changed.connect(self._show_variant_rows)
        self._show_variant_rows(self.variant.value)

    def _show_variant_rows(self, variant: str) -> None:
        for name in FIELDS[1:]:
            self.form[name].visible = (name in PAPER_FIELDS) == (variant == "paper")

    def config(self) -> WeightMapConfig:
        """The weight-map settings shown in the widget."""
        return read_config(self.form, WeightMapConfig)

    def compute(self, scope: str | None = None, layer: Labels | None = None):
        """Start computing; ``scope`` is "current plane" or "all annotated planes".

        Returns the thread worker (``self.worker`` until it finishes). A reason not to start
        (no layer, a plane not annotated) is raised and also replaces the status line.
        """
        if self.worker is not None:
            return self.worker
        try:
            return self._start(scope or self.scope.value, layer or self.labels_combo.value)
        except Exception as exc:
            self.status.setText(f"not computed: {_common.error_message(exc)}")
            raise

    def _start(self, scope: str, layer: Labels | None):
        if layer is None:
            raise AnnotationError("choose an annotation layer (create one in 1 Annotate)")
        config = self.config()
        layer.metadata[_common.META_WEIGHTMAP] = asdict(config)
        annotated = training_plane_list(layer)
        if scope.startswith("current"):
            planes = [_common.current_plane(self.viewer, layer, layer.ndim - 2)]
            if planes[0] not in annotated:
                raise AnnotationError(
                    f"plane {plane_names(planes)} is not annotated: it has no weights; paint or "
                    "import annotations there, or choose 'all annotated planes'"
                )
        else:
            planes = annotated
            if not planes:
                raise AnnotationError("no annotated plane yet: paint or import annotations first")
        output = self._output_layer(layer)
        annotation = AnnotationConfig(mode=layer_mode(layer), weight_map=config)
        worker = create_worker(weight_planes, layer.data, planes, annotation, _start_thread=False)
        worker.yielded.connect(lambda message: self._on_message(output, message))
        self.summary = WeightSummary(planes)
        self.status.setText(f"computing plane {plane_names(planes)} ...")
        return self.start_worker(worker, worker.quit)  # closing: stop after the plane computed

    def _output_layer(self, labels: Labels) -> Image:
        name, shape = f"{labels.name} weight map", tuple(labels.data.shape)
        output = _common.reusable_layer(self.viewer, name, Image, shape)
        if output is None:
            look = {"colormap": GLOW, "blending": "translucent", "contrast_limits": (0.0, 1.0)}
            where = {"scale": labels.scale, "translate": labels.translate}
            output = self.viewer.add_image(np.zeros(shape, np.float32), name=name, **look, **where)
            # under the annotations: objects keep their label colours, the gaps glow
            layers = self.viewer.layers
            layers.move(layers.index(output), layers.index(labels))
        return output

    def _on_message(self, output: Image, message: tuple) -> None:
        if message[0] == "error":
            _common.report_error(message[1])
            self.status.setText(f"failed: {_common.error_message(message[1])}")
            return
        _, index, weight, base = message
        output.data[index] = weight
        output.contrast_limits = self.summary.add(index, weight, base)
        output.refresh()
        self.status.setText(self.summary.text(index))

    def set_running(self, running: bool) -> None:
        """Compute is enabled while nothing is being computed."""
        self.compute_button.setEnabled(not running)

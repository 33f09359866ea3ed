"""magicgui forms built from the config dataclasses, remembered between napari sessions.

Labels, limits and tooltips live in one place: the ``metadata`` of the dataclass fields
(``label``, ``tooltip``, ``min``, ``max``, ``step``, ``choices``, ``widget_type``, plus
``special`` -- the text a spin box shows at its minimum, which stands for ``None`` --,
``suffix`` and ``placeholder``). :func:`config_form` turns fields into magicgui widgets,
:func:`read_config` reads them back. :class:`Remembered` keeps a form's values in a small JSON
file under the user's config dir (:func:`settings_dir`; ``NAPARI_UNET_SETTINGS_DIR`` overrides
it) and resets them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from magicgui.backends._qtpy.widgets import QBaseRangedWidget
from magicgui.widgets import ComboBox, Container, PushButton, Widget, create_widget
from napari.layers import Labels, Layer
from qtpy.QtWidgets import QSpinBox

from napari_unet._widgets._common import is_annotation_layer

log = logging.getLogger("napari_unet")
#: Overrides where the settings are kept (tests point it to a temporary folder).
SETTINGS_ENV = "NAPARI_UNET_SETTINGS_DIR"
NO_ANNOTATIONS = "none: create one in 1 Annotate"  # an annotation picker with nothing to offer
_QT_ONLY = ("special", "suffix", "none", "placeholder")
_NOT_OPTIONS = ("label", "tooltip", "widget_type", *_QT_ONLY)


def _field(cls: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


class _QtIntSpinBox(QBaseRangedWidget):
    """A magicgui backend on a plain ``QSpinBox`` (magicgui's integer spin box has no special
    value text and no suffix)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(QSpinBox, **kwargs)

    def _mgui_set_value(self, value: Any) -> None:
        super()._mgui_set_value(int(value))

    def _mgui_set_min(self, value: float) -> None:
        super()._mgui_set_min(int(value))

    def _mgui_set_max(self, value: float) -> None:
        super()._mgui_set_max(int(value))

    def _mgui_set_step(self, value: float) -> None:
        super()._mgui_set_step(int(value))


def field_widget(cls: type, name: str, **override: Any) -> Widget:
    """A magicgui widget for the field ``name`` of the dataclass ``cls`` (its metadata, updated
    by ``override``; ``value`` overrides the default). ``None`` is shown as the ``special``
    text at the spin box's minimum."""
    field = _field(cls, name)
    meta = {**field.metadata, **override}
    value = meta.pop("value", _default(field))
    annotation = typing.get_type_hints(cls).get(name)
    if value is None or "special" in meta:  # an optional number: None sits at the minimum
        annotation = float if "float" in str(annotation) else int
        value = meta.get("min", 0) if value is None else value
    if annotation is int and ("special" in meta or "suffix" in meta):
        meta.setdefault("widget_type", _QtIntSpinBox)
    widget = create_widget(
        value=value,
        annotation=None if "choices" in meta else annotation,
        name=name,
        label=meta.get("label", name),
        widget_type=meta.get("widget_type"),
        options={k: v for k, v in meta.items() if k not in _NOT_OPTIONS},
    )
    widget.tooltip = meta.get("tooltip")
    if "max" in meta:  # before min and value: a custom backend starts at Qt's 0..99
        widget.max, widget.min, widget.value = meta["max"], meta.get("min", 0), value
    native = widget.native
    native.setToolTip(meta.get("tooltip", ""))  # also over the parts of a labelled slider
    if "special" in meta:
        native.setSpecialValueText(meta["special"])
    if "suffix" in meta:
        native.setSuffix(meta["suffix"])
    if "placeholder" in meta:
        native.setPlaceholderText(meta["placeholder"])
    return widget


def config_form(cls: type, fields: Iterable[str] | None = None, **overrides: dict) -> Container:
    """A labelled magicgui form of ``fields`` (default: all) of the dataclass ``cls``.

    ``overrides`` maps a field name to metadata replacing the dataclass's (e.g. ``choices``).
    """
    names = [f.name for f in dataclasses.fields(cls)] if fields is None else list(fields)
    return Container(widgets=[field_widget(cls, n, **overrides.get(n, {})) for n in names])


def widget_value(widget: Widget, cls: type | None = None) -> Any:
    """A form widget's value as the config holds it (``None`` at a ``special`` minimum)."""
    value = widget.value
    special = cls is not None and "special" in _field(cls, widget.name).metadata
    return None if special and value == widget.min else value


def read_config(container: Container, cls: type, **extra: Any) -> Any:
    """An instance of ``cls`` from the form's widgets named like its fields, plus ``extra``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {w.name: widget_value(w, cls) for w in container if w.name in names}
    return cls(**{**values, **extra})


# ----------------------------------------------------------------------------- layer pickers
def layer_picker(
    viewer,
    kind: type[Layer],
    label: str,
    tooltip: str,
    accept: Callable[[Layer], bool] | None = None,
    prefer: Callable[[Layer], bool] | None = None,
    placeholder: str = "",
) -> ComboBox:
    """A combo box of the viewer's layers of type ``kind`` (e.g. ``napari.layers.Image``),
    following the layer list (added, removed, renamed, moved layers); ``value`` is the layer.

    ``accept`` filters the layers; ``prefer``-red layers come first and are chosen when they
    appear (e.g. a ground-truth layer over an annotation layer).
    """

    def choices(_widget) -> list[tuple[str, Layer]]:
        layers = [
            layer
            for layer in viewer.layers
            if isinstance(layer, kind) and (accept is None or accept(layer))
        ]
        if prefer is not None:
            layers.sort(key=lambda layer: not prefer(layer))
        return [(layer.name, layer) for layer in layers]

    picker = create_widget(annotation=kind, name=label, label=label, options={"choices": choices})
    picker.tooltip = tooltip
    if placeholder:
        picker.native.setPlaceholderText(placeholder)
    events = viewer.layers.events

    def refresh(event=None) -> None:
        try:
            shown = [picker.native.itemText(i) for i in range(picker.native.count())]
        except RuntimeError:  # the Qt widget is gone: stop following the viewer
            for emitter in (events.inserted, events.removed, events.moved):
                emitter.disconnect(refresh)
            return
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(refresh)
        wanted = choices(picker)
        before = picker.value
        if [name for name, _ in wanted] != shown:  # list them anew, in the viewer's order
            picker.native.blockSignals(True)
            picker.native.clear()
            picker.reset_choices()
            if any(layer is before for _, layer in wanted):
                picker.value = before
            picker.native.blockSignals(False)
        preferred = [layer for _, layer in wanted if prefer is not None and prefer(layer)]
        if preferred and picker.value not in preferred:
            picker.value = preferred[0]
        elif picker.value is not before:
            picker.changed.emit(picker.value)

    for emitter in (events.inserted, events.removed, events.moved):
        emitter.connect(refresh)
    for layer in viewer.layers:
        layer.events.name.connect(refresh)
    refresh()
    return picker


def annotation_picker(viewer, tooltip: str, placeholder: str = NO_ANNOTATIONS) -> ComboBox:
    """A :func:`layer_picker` of the annotation layers made (or opened) in 1 Annotate."""
    return layer_picker(
        viewer, Labels, "annotations", tooltip, accept=is_annotation_layer, placeholder=placeholder
    )


# ----------------------------------------------------------------------------- settings
def settings_dir() -> Path:
    """Where the widgets keep their settings: ``$NAPARI_UNET_SETTINGS_DIR`` or the user's
    config dir (``platformdirs``)."""
    if os.environ.get(SETTINGS_ENV):
        return Path(os.environ[SETTINGS_ENV])
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-unet", appauthor=False))


class Remembered:
    """The values of some form widgets, saved to ``<settings_dir>/<key>.json`` on every change,
    put back when the widget is created again, and reset to ``defaults`` (default: the values
    shown when it is made, i.e. the form's defaults) by :attr:`button`.

    ``skip()`` names widgets whose value is not to be saved now (e.g. steps while continuing).
    """

    def __init__(
        self,
        key: str,
        widgets: Iterable[Widget],
        defaults: dict[str, Any] | None = None,
        skip: Callable[[], set[str]] = set,
    ) -> None:
        self.path = settings_dir() / f"{key}.json"
        self.widgets = {w.name: w for w in widgets}
        self.defaults = (
            {n: w.value for n, w in self.widgets.items()} if defaults is None else defaults
        )
        self._skip = skip
        self._loading = False
        self.apply(self.load())
        for widget in self.widgets.values():
            widget.changed.connect(self.save)
        self.button = PushButton(text="Reset to defaults", name="reset")
        self.button.tooltip = "put the default settings back (the widget remembers the last ones)"
        self.button.changed.connect(self.reset)

    def load(self) -> dict[str, Any]:
        """The saved values ({} when none or unreadable)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def apply(self, values: dict[str, Any]) -> None:
        """Show ``values`` (an unknown or invalid one, e.g. a device gone, is left alone)."""
        self._loading = True
        try:
            for name, value in values.items():
                if name in self.widgets:
                    try:
                        self.widgets[name].value = value
                    except (ValueError, TypeError):
                        log.debug("napari-unet: setting %s=%r not restored", name, value)
        finally:
            self._loading = False
        self.save()

    def save(self, *_args) -> None:
        """Write the values shown now (best effort: a read-only config dir is no error)."""
        if self._loading:
            return
        old = self.load()
        skip = self._skip()
        values = {n: (old.get(n) if n in skip else w.value) for n, w in self.widgets.items()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({k: v for k, v in values.items() if v is not None}))
        except (OSError, TypeError) as exc:
            log.debug("napari-unet: settings not saved: %s", exc)

    def reset(self, *_args) -> None:
        """Put the defaults back."""
        self.apply(self.defaults)

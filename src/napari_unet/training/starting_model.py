"""The generalist starting model that ships inside the package.

A new model can be *fine-tuned* from this network instead of trained from random weights
(``TrainingRecipe(start="starting-model")``, ``train --from-starting-model``, the Train widget's
"new: from the starting model"). It is not the default: on sets it had not seen, fine-tuning it
was not better than training from scratch with the same budget on enough of them
(docs/benchmarks.md, "Starting model"). The file ``models/starting-model.safetensors`` is a
model file like any other (safetensors weights + JSON metadata, loaded without running code):
the small preset (16 channels, depth 3, batch norm), one input channel normalised by
percentiles (1, 99.8), two classes (background, object). Data with several channels (RGB)
fine-tune it widened to their channels (:func:`napari_unet.model.widen_input`).

It is made by ``scripts/make_starting_model.py`` from the package's synthetic generator
(fluorescence, phase contrast, DIC and EM looks, :mod:`napari_unet.sample_data`) and the shared
ISBI 2012, PhC-U373, Usiigaci and GOWT1 sets; that script states the data, their terms and the
steps, and reproduces the file. ``$NAPARI_UNET_STARTING_MODEL`` names another file (a lab's
own starting model). :func:`starting_model_for` decides whether a run can start from it.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from napari_unet.model import PRESETS, UNetConfig

STARTING_MODEL_FILE = "starting-model.safetensors"
#: The architecture new networks get by default: the starting model's (the small preset).
STARTING_ARCHITECTURE: UNetConfig = PRESETS["small"]


#: Names another starting model file (a lab's own, or a benchmark's leave-one-set-out model).
STARTING_MODEL_VARIABLE = "NAPARI_UNET_STARTING_MODEL"


def starting_model_path() -> Path | None:
    """The starting model file: ``$NAPARI_UNET_STARTING_MODEL`` when set, else the shipped one;
    None if that file does not exist."""
    chosen = os.environ.get(STARTING_MODEL_VARIABLE)
    path = (
        Path(chosen) if chosen else Path(str(files("napari_unet") / "models" / STARTING_MODEL_FILE))
    )
    return path if path.is_file() else None


def starting_model_for(
    architecture: UNetConfig, channels: int, classes: int
) -> tuple[Path | None, str]:
    """The starting model to fine-tune for a new run, or None with the reason to start anew.

    A run starts from the starting model file when it asks for that file's architecture (the
    shipped file: the small preset, the default; any channel or class count is filled in from
    the data) and its data have the classes the starting model was trained for: background and
    objects. Data with several channels (RGB) start from the model widened to their channels
    (:func:`napari_unet.model.widen_input`). The architecture is read from the file's header, so
    a lab's own starting model (``$NAPARI_UNET_STARTING_MODEL``) may have another one.
    """
    from napari_unet.errors import ModelFileError
    from napari_unet.io.modelfile import read_metadata

    path = starting_model_path()
    if path is None:
        return None, "this installation has no starting model file"
    try:
        own = read_metadata(path).architecture
    except ModelFileError as err:
        return None, f"the starting model file cannot be read ({err})"
    wanted = architecture.with_(in_channels=1, num_classes=2)
    if wanted != own.with_(in_channels=1, num_classes=2):
        return None, f"another architecture than the starting model's ({describe(own)})"
    if classes > 2:
        return None, f"the starting model knows 2 classes; these data have {classes}"
    return path, "fine-tuned from the starting model"


def describe(architecture: UNetConfig) -> str:
    """A short name for an architecture: ``small preset`` or ``width 16, depth 4``."""
    plain = architecture.with_(in_channels=1, num_classes=2)
    for name, preset in PRESETS.items():
        if plain == preset.with_(in_channels=1, num_classes=2):
            return f"{name} preset"
    return f"width {architecture.width}, depth {architecture.depth}"

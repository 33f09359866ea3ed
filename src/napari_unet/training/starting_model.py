"""The generalist starting model that ships inside the package.

A new model is *fine-tuned* from this network by default (``TrainingRecipe(start=
"starting-model")``, ``train`` without ``--from-scratch``, the Train widget's "new: from the
starting model"): on six real sets it had not seen, fine-tuned at the rate of a run from
scratch it scored higher than random weights in 10 of 12 comparisons (1 and 3 annotated planes)
and within the seeds' spread in the other two (docs/benchmarks.md, "Starting model").

The file ``models/starting-model.safetensors`` is a model file like any other (safetensors weights
+ JSON metadata, loaded without running code): the small preset (16 channels, depth 3, batch norm),
one input channel normalised by percentiles (1, 99.8), two classes (background, object). Data with
several channels (RGB) fine-tune it widened to their channels
(:func:`napari_unet.model.widen_input`).

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


#: Adam's learning rate when a new model is fine-tuned from the starting model and the user set
#: none: the rate of a run from scratch. The tenfold lower rate used to continue a model the user
#: trained (:class:`napari_unet.training.trainer.TrainConfig`) held the starting model's habits
#: (EM membranes, cells cut at dark lines) too long: at 400 steps from one plane it scored below
#: scratch on 4 of 6 sets it never saw; at 3e-3, fine-tuning scored higher than the tenfold
#: lower rate on all six and higher than scratch on 4 (docs/benchmarks.md, "Starting model").
STARTING_MODEL_LR = 3e-3

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

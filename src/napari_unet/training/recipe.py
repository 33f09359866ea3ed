"""The one way a training run is put together: what the CLI, the Train widget and the demo call.

:func:`prepare_run` takes an image, its annotations and a :class:`TrainingRecipe` and returns a
ready :class:`~napari_unet.training.trainer.Trainer`. It owns every decision the three fronts used
to make
on their own:

1. **Parent first.** When fine-tuning (``init``) or resuming (``resume``), the parent's
   architecture, normalisation and class names are read *before* any plane is normalised, so
   the planes are prepared exactly as the parent saw its data and the model file records what
   it was trained with.
2. **Planes** are read one at a time (dask and zarr stacks stay lazy): the listed planes, or
   every annotated plane that is not held out for validation.
3. **Seeding**: ``torch.manual_seed(seed)`` right before the network is built, so the same
   inputs and seed give bit-identical initial weights and model files from every front.
4. **Cadence**: validation and checkpoint intervals follow one rule
   (:func:`napari_unet.training.trainer.validation_interval`,
   :func:`~napari_unet.training.trainer.checkpoint_interval`)
   unless set explicitly.
5. **Settings derived from the annotations**
(:func:`napari_unet.annotation.derived.derive_settings`):
   the post-processing the model file recommends, e.g. the smallest object size kept.
6. **Where a new network starts**: fine-tuned from the shipped starting model
   (``start="starting-model"``, the default; :mod:`napari_unet.training.starting_model`) when
   the recipe asks for its architecture and the data fit it (two classes, the default
   normalisation; RGB widens its input), else -- and with ``start="scratch"`` -- from seeded
   random weights. Fine-tuning is the default because, on six real sets the starting model had
   never seen, it scored higher than from scratch in 10 of 12 comparisons (1 and 3 annotated
   planes) and within the seeds' spread in the other two
   (docs/benchmarks.md, "Starting model"). The trainer's ``start_note`` says which, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from napari_unet.annotation.derived import derive_settings
from napari_unet.annotation.schema import (
    INTERIOR_CLASSES,
    PAPER_CLASSES,
    AnnotationConfig,
    TrainingPlane,
    annotated_planes,
    training_planes,
)
from napari_unet.defaults import default_steps, form_field
from napari_unet.errors import AnnotationError, InputError
from napari_unet.io.plane_lists import plane_names
from napari_unet.io.planes import read_plane
from napari_unet.model import UNet, UNetConfig, widen_input
from napari_unet.normalization import Normalization
from napari_unet.training.checkpoint import read_checkpoint_metadata
from napari_unet.training.starting_model import (
    STARTING_ARCHITECTURE,
    STARTING_MODEL_LR,
    starting_model_for,
)
from napari_unet.training.trainer import TrainConfig, Trainer
from napari_unet.training.validation import score_text

PlaneIndex = tuple[int, ...]

#: The model choices of the Train widget, in the order shown: the new networks, then the two
#: ways to go on from a trained one. The first is the default: fine-tuned from the starting
#: model, which beat random weights on data it had not seen (docs/benchmarks.md, "Starting
#: model"). "continue"
#: fine-tunes the session's model just trained (the human-in-the-loop round), offered once a run
#: has finished in the session.
MODEL_CHOICES = (
    "new: from the starting model",
    "new: small preset, from scratch",
    "new: paper U-Net",
    "new: custom (Advanced)",
    "continue: model just trained",
    "fine-tune model file...",
)


#: With this many annotated planes or more, a new run with no hold-out typed keeps one of them
#: out of training to score the model on. Fewer: every plane trains, as before (the defaults
#: the benchmarks measure train on 2-3 planes and are unchanged).
AUTO_HOLD_OUT_MIN = 4


def auto_hold_out(annotated: list[PlaneIndex]) -> list[PlaneIndex]:
    """The plane a run holds out when the user typed none: the middle one of the annotated
    planes (in stack order) when there are at least :data:`AUTO_HOLD_OUT_MIN`, else none."""
    planes = sorted(annotated)
    if len(planes) < AUTO_HOLD_OUT_MIN:
        return []
    return [planes[len(planes) // 2]]


def accuracy_text(metadata, events, held_how: str = "", seen_before=()) -> str:
    """The accuracy line 3 Train shows after a finished run: the score on the held-out planes of
    the weights kept (from the run's validation ``events``), or why there is none.

    ``held_how``: how the hold-out was chosen (e.g. ", held out automatically (5 annotated
    planes)"); ``seen_before``: planes a continued model had trained on (a warning if held out).
    """
    held = metadata.planes("val_planes")
    if not held:
        trained = plane_names(metadata.planes("train_planes"))
        return (
            f"No accuracy figure: every annotated plane ({trained}) was trained on, so no "
            "unseen annotated plane is left to score on. To get one, type a plane in 'hold "
            f"out planes' (or annotate {AUTO_HOLD_OUT_MIN} or more planes: one is then held "
            "out automatically)."
        )
    scores = {e.step: e.metrics for e in events if e.kind == "validation" and e.metrics}
    if not scores:
        return f"No accuracy figure: plane {plane_names(held)} was not scored in this run."
    best = metadata.provenance.get("best_step")
    step = best if best in scores else max(scores)
    kept = f" (the weights of step {step}, the best score, are kept)" if best == step else ""
    text = (
        f"Accuracy on plane {plane_names(held)} (annotated, not trained on"
        f"{held_how}): {score_text(scores[step])}{kept}."
    )
    seen = [p for p in held if p in seen_before]
    if seen:
        text += (
            f" Careful: plane {plane_names(seen)} was trained on by the model continued, so "
            "this score is not on unseen data."
        )
    return text


@dataclass
class TrainChoices:
    """The Train widget's choices beside the recipe's settings: the model and the hold-out."""

    model: str = form_field(
        MODEL_CHOICES[0],
        "model",
        "from the starting model (the default): fine-tune the small network shipped with the "
        "plugin, pretrained on synthetic and public cell and EM images (data with more than "
        "two classes start from scratch); small preset from scratch: the same network (16 base "
        "channels, depth 3) from random weights; paper U-Net: 64 channels, depth 4, 31 M "
        "parameters (use a GPU); custom: width/depth/padding from Advanced; continue: train "
        "the model just trained further on every annotated plane but the hold-out (after "
        "correcting its segmentation; "
        f"{default_steps(True)} steps by default, the plot goes on); fine-tune: start from a "
        "model file of yours",
        choices=MODEL_CHOICES,
    )
    hold_out: str = form_field(
        "",
        "hold out planes",
        "annotated planes kept out of training to measure progress (validation IoU in the "
        "plot, an accuracy figure when the run ends; the best validated weights are kept), "
        f"e.g. 3 or 2, 5-7. Empty: with {AUTO_HOLD_OUT_MIN} or more annotated planes one is "
        "held out automatically (continuing a model keeps its hold-out); 'none': train on "
        "every annotated plane",
    )


@dataclass(frozen=True)
class TrainingRecipe:
    """Everything a training run needs besides the image and the annotations.

    annotation : label schema, weight map and normalisation (a parent's normalisation wins).
    training : steps, time budget, batch, optimiser, augmentation, seed, device.
    architecture : the network to build when neither ``init`` nor ``resume`` is given
        (channels and classes are filled in from the data).
    start : for a new network (no ``init``, no ``resume``): ``starting-model`` (default)
        fine-tunes the shipped starting model when the architecture is its own and the data fit
        it (else it starts from scratch); ``scratch`` starts from seeded random weights.
    init : a model file to fine-tune (its architecture, normalisation and class names are kept).
    resume : a training checkpoint to continue.
    checkpoint : where checkpoints are written (None: no checkpoints).
    planes : planes to train on (None: every annotated plane not in ``val_planes``).
    val_planes : annotated planes held out for validation (None: with 4 or more annotated
        planes and no ``planes`` given, the middle one, :func:`auto_hold_out`; ``()``: none).
        The CLI, the Train widget and the demo share this rule.
    channel_axis : image axis holding channels (None: guessed from the shapes).
    """

    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    architecture: UNetConfig = STARTING_ARCHITECTURE
    start: Literal["starting-model", "scratch"] = "starting-model"
    init: str | Path | None = None
    resume: str | Path | None = None
    checkpoint: str | Path | None = None
    planes: tuple[PlaneIndex, ...] | None = None
    val_planes: tuple[PlaneIndex, ...] | None = None
    channel_axis: int | None = None


@dataclass
class _Parent:
    architecture: UNetConfig | None = None
    normalization: Normalization | None = None
    class_names: list[str] | None = None
    name: str | None = None
    model: UNet | None = None


def _parent(recipe: TrainingRecipe) -> _Parent:
    """Architecture, normalisation and class names of the model or checkpoint continued."""
    if recipe.init is not None and recipe.resume is not None:
        raise InputError("give either a model to fine-tune or a checkpoint to resume, not both")
    if recipe.resume is not None:
        meta = read_checkpoint_metadata(recipe.resume)
        parent = meta.provenance.get("parent_model") or None
        return _Parent(
            meta.architecture,
            Normalization.from_dict(meta.normalization),
            list(meta.class_names),
            parent,
        )
    if recipe.init is not None:
        return _model_parent(recipe.init)
    return _Parent()


def _model_parent(path: str | Path) -> _Parent:
    from napari_unet.io.modelfile import load_model

    model, meta = load_model(path, device="cpu")
    return _Parent(
        model.config,
        Normalization.from_dict(meta.normalization),
        list(meta.class_names),
        Path(path).name,
        model,
    )


def _follow_parent(recipe: TrainingRecipe, parent: _Parent) -> AnnotationConfig:
    """The annotation schema of this run: a parent's normalisation and instance representation
    win, before any plane is prepared. A two-class parent (the paper's representation, also the
    shipped starting model) keeps being trained with two classes; a three-class one with
    interiors and border bands."""
    annotation = recipe.annotation
    if parent.normalization is not None:
        annotation = replace(annotation, normalization=parent.normalization)
    names = parent.class_names
    if names is None and recipe.start == "starting-model" and recipe.init is None:
        names = PAPER_CLASSES  # the shipped starting model's classes
    if annotation.mode == "instances" and names is not None:
        targets = "interiors" if list(names) == INTERIOR_CLASSES else "paper"
        annotation = replace(annotation, instance_targets=targets)
    return annotation


def _starting_parent(recipe: TrainingRecipe, annotation, channels: int, classes: int):
    """The starting model as parent of a new run, or None; and the sentence saying which."""
    if recipe.start == "scratch":
        return None, "trained from scratch"
    path, why = starting_model_for(recipe.architecture, channels, classes)
    if path is None:
        return None, f"trained from scratch: {why}"
    parent = _model_parent(path)
    if parent.normalization != annotation.normalization:
        return None, "trained from scratch: another normalisation than the starting model's"
    if channels != parent.architecture.in_channels:
        parent.model = widen_input(parent.model, channels)
        parent.architecture = parent.model.config
        why += f" (its one input channel shared out over these data's {channels})"
    return parent, why


def _lead(labels) -> tuple[int, ...]:
    return tuple(np.shape(labels)[:-2])


def _check_indices(labels, planes: list[PlaneIndex], what: str) -> list[PlaneIndex]:
    lead = _lead(labels)
    clean = []
    for index in planes:
        index = tuple(int(i) for i in np.atleast_1d(index)) if lead else ()
        inside = len(index) == len(lead) and all(
            0 <= i < n for i, n in zip(index, lead, strict=True)
        )
        if not inside:
            raise InputError(
                f"{what} {index} does not exist: the annotations have shape "
                f"{tuple(np.shape(labels))}"
            )
        clean.append(index)
    return clean


def gather_planes(
    image, labels, planes: list[PlaneIndex], annotation: AnnotationConfig, channel_axis: int | None
) -> tuple[list[TrainingPlane], int]:
    """Training planes for ``planes``, reading only those planes of the image and labels."""
    if not planes:
        return [], 2
    if channel_axis is None:
        from napari_unet.io.planes import guess_channel_axis

        channel_axis = guess_channel_axis(tuple(np.shape(image)), tuple(np.shape(labels)))
    images = np.stack([read_plane(image, p, channel_axis) for p in planes])
    stacked = np.stack([np.asarray(labels[p]) for p in planes])
    result, classes = training_planes(
        images, stacked, annotation, planes=[(i,) for i in range(len(planes))], channel_axis=1
    )
    for plane, index in zip(result, planes, strict=False):
        plane.index = index
    return result, classes


def _choose_planes(labels, recipe: TrainingRecipe) -> tuple[list[PlaneIndex], list[PlaneIndex]]:
    if recipe.val_planes is None:
        auto = recipe.planes is None
        val = auto_hold_out(annotated_planes(np.asarray(labels))) if auto else []
    else:
        val = _check_indices(labels, list(recipe.val_planes), "hold-out plane")
    if recipe.planes is not None:
        train = _check_indices(labels, list(recipe.planes), "plane")
    else:
        held = set(val)
        train = [p for p in annotated_planes(np.asarray(labels)) if p not in held]
    if not train:
        if val:
            raise AnnotationError(
                "every annotated plane is held out for validation: keep at "
                "least one annotated plane for training"
            )
        raise AnnotationError(
            "no annotated plane: paint at least one object and some background first"
        )
    empty = [p for p in val if not np.any(np.asarray(labels[p]))]
    if empty:
        raise AnnotationError(f"hold-out plane {empty[0]} has no annotations")
    return train, val


def prepare_run(image, labels, recipe: TrainingRecipe | None = None) -> Trainer:
    """A :class:`Trainer` ready to ``run()``; see the module docstring for what it decides."""
    recipe = recipe or TrainingRecipe()
    parent = _parent(recipe)
    annotation = _follow_parent(recipe, parent)
    train_idx, val_idx = _choose_planes(labels, recipe)
    train_set, classes = gather_planes(image, labels, train_idx, annotation, recipe.channel_axis)
    val_set, val_classes = gather_planes(image, labels, val_idx, annotation, recipe.channel_axis)
    classes = max(classes, val_classes)
    channels = train_set[0].image.shape[0]
    note = "fine-tuned from " + str(parent.name) if parent.architecture is not None else ""
    training = recipe.training
    if parent.architecture is None:  # a new network: the starting model where it fits
        starting, note = _starting_parent(recipe, annotation, channels, classes)
        parent = starting or parent
        if starting is not None and training.lr is None and training.optimizer == "adam":
            training = replace(training, lr=STARTING_MODEL_LR)

    if parent.architecture is not None:
        arch = parent.architecture
        source = recipe.init or recipe.resume
        if arch.in_channels != channels or arch.num_classes < classes:  # init/resume only
            raise InputError(
                f"{source} was trained for {arch.in_channels} channel(s) and {arch.num_classes} "
                f"classes; these data have {channels} and {classes}"
            )
    else:
        arch = recipe.architecture.with_(in_channels=channels, num_classes=max(classes, 2))
    torch.manual_seed(recipe.training.seed)  # the same seed gives the same initial weights
    model = parent.model if parent.model is not None else UNet(arch)

    trainer = Trainer(
        model,
        train_set,
        training,
        val_set,
        annotation,
        checkpoint_path=recipe.checkpoint,
        parent_model=parent.name,
        class_names=parent.class_names or annotation.class_names(),
        derived=derive_settings(train_set, annotation),
    )
    trainer.start_note = "resumed from " + Path(recipe.resume).name if recipe.resume else note
    if recipe.resume is not None:
        trainer.load_checkpoint(recipe.resume)
    return trainer

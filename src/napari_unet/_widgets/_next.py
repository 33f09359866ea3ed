"""The human-in-the-loop round of 4 Segment (issue #14), mixed into its widget.

"Annotate next" ranks the planes not annotated yet by how unsure the model is
(:mod:`napari_unet.inference.suggest`), least sure first, and fills "<image> uncertainty"; "Use
plane as annotation" copies the corrected plane of "<image> segmentation" into the annotation
layer (one Ctrl+Z undoes it); a new model from 3 Train segments (and ranks) again by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QListWidget

from napari_unet._widgets import _session
from napari_unet._widgets._common import (
    META_IMAGE,
    META_INSTANCES,
    add_buttons,
    clicked_plane,
    current_plane,
    error_message,
    fill_plane_list,
    go_to_plane,
    guarded,
    hint,
    is_annotation_layer,
    keeping_selection,
    layer_data,
    plane_names,
    report_error,
    spatial_shape,
)
from napari_unet._widgets.annotate import (
    add_annotation_layer,
    layer_mode,
    mark_planes,
    training_plane_list,
)
from napari_unet.annotation.imported import as_annotations
from napari_unet.annotation.schema import plane_as_annotation
from napari_unet.errors import InputError
from napari_unet.inference.job import rank_whole
from napari_unet.inference.suggest import PlaneScore, SuggestConfig

NOTHING_TO_RANK = "a single 2D image has one plane: there is nothing to rank"


@dataclass(frozen=True)
class Job:
    """What the worker now running does: segment (a scope) or rank, for which image and model.

    The round keeps the last segmentation's job to run it again when 3 Train gives a new model.
    """

    kind: str  # "segment" or "rank"
    scope: str  # the planes segmented ("current plane" or "whole stack"); "" for a ranking
    image: str
    model: object | None  # the session entry used (None: a model file)
    after_training: bool = False  # started because 3 Train gave a new model


class AnnotateNext:
    """The human-in-the-loop round, mixed into the Segment widget (see the module docstring).

    The widget calls :meth:`_build_next` (widgets and state), :meth:`_connect_next`,
    :meth:`_stop_next` (closing), :meth:`_after_segmentation` and :meth:`_on_ranked` (results),
    :meth:`_continue_round` (its worker finished) and :meth:`_drop_pending` (Cancel); it provides
    the viewer, its fields, its worker state and ``_launch`` / ``_start`` / ``_put``.
    """

    ranking: list[PlaneScore]  # the last ranking shown, least sure first
    _ranked_image: str | None  # the image that ranking belongs to
    _last_run: Job | None  # the last segmentation that gave layers
    _rank_pending: bool  # rank when the running segmentation ends
    _rerun_pending: Job | None  # segment again when the running work ends

    def _build_next(self) -> None:
        """Create the round's state and widgets (children of the Segment widget)."""
        self.ranking = []
        self._ranked_image = None
        self._last_run = None
        self._rank_pending = False
        self._rerun_pending = None
        self.resegment = QCheckBox("segment again when training ends", self)
        self.resegment.setChecked(True)
        add_buttons(self, use_plane_button="Use plane as annotation", rank_button="Rank planes")
        self.rank_after = QCheckBox("rank planes after a whole-stack run", self)
        self.rank_after.setChecked(True)
        self.next_list = QListWidget(self)
        self.next_list.setMaximumHeight(140)
        self.next_hint = hint("")

    def _connect_next(self) -> None:
        """Connect the buttons, the list, the image choice and the session's new models."""
        self.use_plane_button.clicked.connect(guarded(lambda: self.use_plane_as_annotation()))
        self.rank_button.clicked.connect(lambda: self.rank_planes())
        self.next_list.itemClicked.connect(self._on_next_clicked)
        self.image_combo.changed.connect(self._update_rank_state)
        _session.changed.connect(self._on_session_changed)

    def _stop_next(self) -> None:
        """The widget is closing: no more new models from the session, nothing pending."""
        _session.changed.disconnect(self._on_session_changed)  # psygnal: a no-op if gone
        self._drop_pending()

    def _drop_pending(self) -> None:
        """Forget the ranking or re-run planned for when the running work ends."""
        self._rank_pending = False
        self._rerun_pending = None

    # ------------------------------------------------------------------ annotate next
    def _rankable(self, image: Image | None = None) -> bool:
        """Whether ``image`` (default: the chosen one) has more than one plane to rank."""
        image = image or self.image_combo.value
        return image is not None and int(np.prod(spatial_shape(image)[:-2])) > 1

    def _update_rank_state(self, *_args) -> None:
        """Grey out ranking for a single plane (or while the worker runs); set the hint."""
        image = self.image_combo.value
        single = image is not None and not self._rankable(image)
        self.rank_after.setEnabled(not single)
        self.next_list.setEnabled(not single)
        self.rank_button.setEnabled(not single and image is not None and self.worker is None)
        self.next_hint.setText(
            NOTHING_TO_RANK
            if single
            else "Planes not annotated yet, least sure first. Click one to go there, correct "
            "its segmentation and press Use plane as annotation."
        )

    def rank_planes(self, auto: bool = False):
        """Rank the chosen image's planes not annotated yet, least sure first, in a worker.

        The result fills :attr:`next_list` and the "<image> uncertainty" layer. Errors become
        notifications; with ``auto`` (after a whole-stack run) a plain reason such as "every
        plane is annotated" only goes to the status line.
        """
        return self._guarded_start(self._start_ranking, quiet=auto)

    def _start_ranking(self):
        """Check the chosen image and start ranking its planes not annotated yet."""
        if self.worker is not None:
            raise InputError("wait until the segmentation ends (or Cancel it)")
        image = self.image_combo.value
        if image is None:
            raise InputError("choose an image layer to rank")
        if not self._rankable(image):
            raise InputError(NOTHING_TO_RANK)
        source = self.model_source()
        config = self.segment_config(source.read_metadata(), image)
        target = self.annotation_layer(image)
        exclude = set(training_plane_list(target)) if target is not None else set()
        lead = spatial_shape(image)[:-2]
        if all(index in exclude for index in np.ndindex(*lead)):
            raise InputError(f"every plane of '{image.name}' is annotated: nothing left to rank")
        device = self.device.value
        args = (
            source,
            device,
            layer_data(image),
            SuggestConfig(segment=config),
            sorted(exclude),
            self._progress.changed.emit,
        )
        job = Job("rank", "", image.name, self._session_entry(source))
        return self._launch(rank_whole, args, device, image, job, counted=True)

    def _on_ranked(self, image: Image, result: tuple) -> None:
        """A ranking returned: show it, or say why not (the list is then unchanged)."""
        kind = result[0]
        if kind == "ranked":
            self._show_ranking(image, result[1], result[2])
        elif kind == "cancelled":
            self.status.setText("ranking cancelled; the list was not changed")
        elif kind == "error":
            report_error(result[1])
            self.status.setText(f"ranking failed: {error_message(result[1])}")

    def _show_ranking(self, image: Image, scores: list[PlaneScore], maps: np.ndarray) -> None:
        """Keep the ranking, fill "<image> uncertainty" and the list; the selection stays."""
        self.ranking = list(scores)
        self._ranked_image = image.name
        with keeping_selection(self.viewer):  # e.g. the segmentation being corrected
            layer = self._put(image, "uncertainty", maps, "image")
        layer.contrast_limits = (0.0, max(float(maps.max()), 1e-3))
        self._fill_next_list()
        took = time.perf_counter() - self._started
        first = plane_names([scores[0].index]) if scores else "-"
        self.status.setText(
            f"ranked {len(scores)} planes in {took:.1f} s; least sure: plane {first}"
        )

    def _fill_next_list(self) -> None:
        """One row per plane of :attr:`ranking`: plane, score, objects found."""
        rows = [
            (
                f"plane {plane_names([e.index])}   {e.score:.3f}   "
                f"({e.objects} object{'' if e.objects == 1 else 's'})",
                e.index,
            )
            for e in self.ranking
        ]
        fill_plane_list(self.next_list, rows)

    def _on_next_clicked(self, item) -> None:
        """Go to the plane of the row clicked."""
        for what in ("uncertainty", "segmentation"):
            name = f"{self._ranked_image} {what}"
            if name in self.viewer.layers:
                go_to_plane(self.viewer, self.viewer.layers[name], clicked_plane(item))
                return

    def _drop_from_ranking(self, image: Image, index: tuple[int, ...]) -> None:
        """``index`` of ``image`` is annotated now: it leaves the "Annotate next" list."""
        if image.name == self._ranked_image and any(e.index == index for e in self.ranking):
            self.ranking = [entry for entry in self.ranking if entry.index != index]
            self._fill_next_list()

    # ------------------------------------------------------------------ correct in place
    def annotation_layer(self, image: Image | None = None) -> Labels | None:
        """The annotation layer of ``image`` (default: the chosen one), or None.

        Among several, the selected one, else the top one in the layer list.
        """
        image = image or self.image_combo.value
        if image is None:
            return None
        mine = [
            layer
            for layer in self.viewer.layers
            if is_annotation_layer(layer) and layer.metadata.get(META_IMAGE) == image.name
        ]
        active = self.viewer.layers.selection.active
        if active in mine:
            return active
        return mine[-1] if mine else None

    def use_plane_as_annotation(self) -> tuple[int, ...]:
        """Copy the plane on screen of "<image> segmentation" into the image's annotations.

        The (corrected) plane replaces that plane of the annotation layer, in the layer's schema
        (:func:`~napari_unet.annotation.schema.plane_as_annotation`); other planes are never
        touched. The write goes through ``Labels.data_setitem``, so one Ctrl+Z on the layer
        undoes it. An empty plane is marked as annotated in the layer's metadata; without an
        annotation layer one is created (instances). Returns the plane index.
        """
        image = self.image_combo.value
        if image is None:
            raise InputError("choose the image whose segmentation you corrected")
        result = self.result_layer(image)
        if not isinstance(result, Labels):
            raise InputError(
                f"segment '{image.name}' first: there is no labels layer '{image.name} "
                "segmentation' to copy from"
            )
        target = self.annotation_layer(image)
        expected = tuple(target.data.shape) if target is not None else spatial_shape(image)
        if tuple(result.data.shape) != expected:
            where = f"the annotation layer '{target.name}'" if target else f"'{image.name}'"
            raise InputError(
                f"'{result.name}' has planes of shape {tuple(result.data.shape)} but {where} "
                f"has shape {expected}: segment '{image.name}' again, then copy the plane"
            )
        index = current_plane(self.viewer, result, result.ndim - 2)
        name = plane_names([index])
        instances = bool(result.metadata.get(META_INSTANCES, True))
        new, objects = plane_as_annotation(
            np.asarray(layer_data(result)[index]), layer_mode(target), instances, name
        )
        notes = []
        if target is None:
            target = add_annotation_layer(self.viewer, image)
            notes.append(f"created the annotation layer '{target.name}'")
        new = as_annotations({index: new}, target.data.dtype, "instances")[index]
        old = np.asarray(target.data[index])
        if old.any() and not np.array_equal(old, new):
            notes.append("it replaced the annotations that plane held")
        changed = np.nonzero(old != new)
        if changed[0].size:
            where = tuple(np.full(changed[0].size, i, np.intp) for i in index) + changed
            # napari 0.9 gives a hidden labels layer an empty slice, and data_setitem's display
            # update then fails: show the layer for the write (users hide it to correct)
            hidden, target.visible = not target.visible, True
            try:
                target.data_setitem(where, new[changed])
            finally:
                target.visible = not hidden
        if not new.any():  # an empty plane is annotated only when marked
            mark_planes(target, [index])
            target.events.paint(value=[])  # the Annotate widget refreshes its plane list
        self._drop_from_ranking(image, index)
        notes.insert(
            0,
            f"plane {name} of '{result.name}' is now an annotated plane of '{target.name}' "
            f"({objects} object{'' if objects == 1 else 's'})",
        )
        show_info("; ".join([*notes, "to undo: select the annotation layer and press Ctrl+Z"]))
        self.status.setText(notes[0])
        return index

    # ------------------------------------------------------------------ after training
    def _on_session_changed(self, *_args) -> None:
        """3 Train finished a model: segment the last plane or stack again with it."""
        entry = _session.trained()
        if entry is None or self._shut_down:
            return
        try:
            wanted = self.resegment.isChecked() and self._uses_trained_model()
        except RuntimeError:  # widget deleted; the session signal outlived it
            _session.changed.disconnect(self._on_session_changed)
            return
        job = self._job
        again = job if job is not None and job.kind == "segment" else self._last_run
        if not wanted or again is None:
            return
        if job is not None:
            if job.model is entry:
                return  # already running with the new model
            self._rerun_pending = again
            self._rank_pending = False
            self._cancel.set()
            self.status.setText("a new model: stopping, then segmenting again with it ...")
            return
        self._segment_again(again)

    def _segment_again(self, last: Job) -> None:
        """Run ``last`` again with the model now chosen (its image may be gone)."""
        if last.image not in self.viewer.layers:
            return
        image = self.viewer.layers[last.image]
        self._guarded_start(lambda: self._start(last.scope, image, after_training=True), False)

    # ------------------------------------------------------------------ after a run
    def _after_segmentation(self, job: Job | None, image: Image, whole: bool) -> None:
        """Remember the run (to repeat it after training) and decide whether to rank next.

        ``whole``: the run segmented the whole stack (else the current plane).
        """
        if job is None:
            return
        self._last_run = job
        ranked_before = bool(self.ranking) and self._ranked_image == image.name
        self._rank_pending = (
            self.rank_after.isChecked()
            and self._rankable(image)
            and (whole or (job.after_training and ranked_before))
        )

    def _continue_round(self) -> None:
        """The worker has finished: segment again (a new model came) or rank, if pending."""
        rerun, self._rerun_pending = self._rerun_pending, None
        rank, self._rank_pending = self._rank_pending, False
        if self._shut_down:
            return
        if rerun is not None:
            self._segment_again(rerun)
        elif rank:
            self.rank_planes(auto=True)

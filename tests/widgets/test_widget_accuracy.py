"""3 Train's accuracy figure (#21): a score on annotated planes the model did not train on, or a
plain sentence saying there is none. A real viewer, a tiny network, a few steps."""

from __future__ import annotations

import pytest
from widget_helpers import add_cells, configure_tiny, wait_idle

from napari_unet._widgets import _session

pytestmark = pytest.mark.viewer


def _open(viewer, cells, planes):
    _, truth = add_cells(viewer, cells)
    _, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "1 Annotate")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "3 Train")
    annotate.import_labels(truth, planes)
    configure_tiny(train, steps=4)
    return annotate, train


def _errors(notifications) -> list[str]:
    return [m for severity, m in notifications if severity.lower() == "error"]


def test_no_unseen_plane_says_so(viewer, cells, qtbot, notifications):
    _, train = _open(viewer, cells, [0, 2])
    train.start_training()
    assert train.job.recipe.val_planes == ()  # fewer than 4 planes: every one trains
    wait_idle(qtbot, train)
    assert not _errors(notifications)
    text = train.accuracy.text()
    assert text.startswith("No accuracy figure: every annotated plane (0, 2) was trained on")
    assert "type a plane in 'hold out planes'" in text
    assert _session.trained().metadata.provenance["train_planes"] == [[0], [2]]


def test_four_planes_hold_one_out_and_score_it(viewer, cells, qtbot, notifications):
    _, train = _open(viewer, cells, [0, 1, 2, 3])
    assert train.hold_out.value == ""
    train.start_training()
    recipe = train.job.recipe
    assert recipe.val_planes == ((2,),) and recipe.planes == ((0,), (1,), (3,))
    wait_idle(qtbot, train)
    assert not _errors(notifications)
    scored = [e for e in train.events if e.kind == "validation"]
    assert scored and set(scored[-1].metrics) == {"val_iou", "val_f1", "val_ap"}
    text = train.accuracy.text()
    assert text.startswith("Accuracy on plane 2 (annotated, not trained on, held out "
                           "automatically (4 annotated planes)): objects F1 ")  # fmt: skip
    step = _session.trained().metadata.provenance.get("best_step") or 4
    metrics = next(e.metrics for e in scored if e.step == step)
    assert f"AP@0.5 {metrics['val_ap']:.2f}; foreground IoU {metrics['val_iou']:.2f}" in text
    provenance = _session.trained().metadata.provenance
    assert provenance["val_planes"] == [[2]] and provenance["seen_planes"] == [[0], [1], [3]]

    # continuing keeps the same plane out, so the figure stays on a plane never trained on
    train.continue_training(steps=2)
    assert train.job.recipe.val_planes == ((2,),)
    wait_idle(qtbot, train)
    assert "held out as for the model continued" in train.accuracy.text()
    assert "Careful" not in train.accuracy.text()

    # a plane the model continued trained on is scored, but the line says it is not unseen
    train.hold_out.value = "1"
    train.continue_training(steps=2)
    wait_idle(qtbot, train)
    assert train.accuracy.text().startswith("Accuracy on plane 1 (annotated, not trained on)")
    assert "Careful: plane 1 was trained on by the model continued" in train.accuracy.text()

    # 'none' trains on every annotated plane
    train.hold_out.value = "none"
    train.set_custom_architecture(train.architecture() or train._custom)
    train.steps.value = 2
    train.start_training()
    assert train.job.recipe.val_planes == ()
    wait_idle(qtbot, train)
    assert train.accuracy.text().startswith("No accuracy figure: every annotated plane "
                                            "(0, 1, 2, 3) was trained on")  # fmt: skip
    assert not _errors(notifications)

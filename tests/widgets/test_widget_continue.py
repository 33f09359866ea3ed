"""The human-in-the-loop round of 3 Train (#14): train, then "continue: model just trained".

A real viewer, the widgets opened as from the Plugins menu, a tiny network and a few steps.
"""

from __future__ import annotations

import pytest
from widget_helpers import TINY, add_cells, configure_tiny, wait_idle

from napari_unet._widgets import _session
from napari_unet._widgets.train import CONTINUE, MODEL_CHOICES
from napari_unet.defaults import default_steps
from napari_unet.io.modelfile import read_metadata

pytestmark = pytest.mark.viewer


def _open(viewer, cells):
    """Annotate and Train from the Plugins menu, with ground truth imported on planes 0 and 2."""
    _, truth = add_cells(viewer, cells)
    _, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "1 Annotate")
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "3 Train")
    annotate.import_labels(truth, [0, 2])
    return train


def _continue_offered(train) -> bool:
    combo = train.model_combo.native
    return combo.model().item(combo.findText(CONTINUE)).isEnabled()


def _errors(notifications) -> list[str]:
    return [m for severity, m in notifications if severity.lower() == "error"]


def test_continue_without_a_model_just_trained_says_so(viewer, cells, notifications):
    train = _open(viewer, cells)
    assert train.model_combo.value == MODEL_CHOICES[0]  # the default is unchanged
    assert not _continue_offered(train)  # greyed out until a run has finished

    train.model_combo.value = CONTINUE  # e.g. chosen before the session was cleared
    assert train.steps.value == default_steps(True)
    assert "no model trained yet in this session" in train.status.text()
    assert train.start_training() is None and train.worker is None
    message = _errors(notifications)[-1]
    assert message.startswith("no model trained yet in this session")
    assert "Error" not in message and "Traceback" not in message  # a sentence, not a bug
    assert train.status.text() == f"not started: {message}"
    assert train.continue_training(steps=2) is None  # the same from code
    assert _errors(notifications)[-1] == message and train.worker is None


def test_continue_the_model_just_trained(viewer, cells, qtbot, notifications):
    train = _open(viewer, cells)
    configure_tiny(train, steps=6)
    train.start_training()
    wait_idle(qtbot, train)
    first = _session.trained()
    assert first is not None and first.chain_steps == 6
    assert _continue_offered(train)
    first_curve = list(train.plot.steps)
    assert first_curve[-1] == 6

    # choosing "continue" proposes the short budget of one round; the new-model value comes back
    train.model_combo.value = CONTINUE
    assert train.steps.value == default_steps(True)
    assert train.architecture() is None
    train.steps.value = 4  # keep the test fast
    train.start_training()
    wait_idle(qtbot, train)
    assert not _errors(notifications)
    assert train.events[-1].kind == "done"

    # the continued model: the session's model, fine-tuned; its file names the parent
    second = _session.trained()
    assert second is not first and second.chain_steps == 6 + 4
    assert first.path is not None and first.path.parent == train.checkpoint_dir
    parent = read_metadata(first.path)
    assert second.metadata.provenance["parent_model"] == first.path.name
    assert second.metadata.provenance["steps"] == 4
    assert second.metadata.architecture == parent.architecture == first.metadata.architecture
    assert second.metadata.architecture.width == TINY.width
    assert second.metadata.class_names == first.metadata.class_names
    assert "continued from" in second.description and "6 + 4 steps" in second.description
    assert train.result[1].provenance["parent_model"] == first.path.name  # Save model... too

    # the loss curve went on after the first run's last step instead of starting again
    steps = train.plot.steps
    assert steps[: len(first_curve)] == first_curve
    assert steps[-1] == 6 + 4 and all(s > 6 for s in steps[len(first_curve) :])
    assert [line.get_xdata()[0] for line in train.plot.continuations] == [6]
    # the progress bar counts the same steps as the plot's x axis, and says so (#21)
    bar = train.progress
    assert (bar.value(), bar.maximum()) == (steps[-1], 6 + 4)
    assert "continued from 6" in bar.format() and "all runs" in train.plot.ax.get_xlabel()

    # each kind of run keeps its own steps: the new-model value comes back, and the 4
    train.model_combo.value = MODEL_CHOICES[1]
    assert train.steps.value == 6
    train.model_combo.value = CONTINUE
    assert train.steps.value == 4

    # a new model clears the plot
    train.set_custom_architecture(TINY)
    train.steps.value = 2
    train.start_training()
    wait_idle(qtbot, train)
    assert train.plot.steps == [1, 2] and not train.plot.continuations
    assert _session.trained().chain_steps == 2

    # a Train dock closed and opened again draws the model's curve again (#21)
    curve = (list(train.plot.steps), list(train.plot.losses))
    train.parent().titleBarWidget().close_button.click()
    qtbot.waitUntil(lambda: train._shut_down, timeout=10000)
    _, train = viewer.window.add_plugin_dock_widget("napari-unet", "3 Train")
    assert (train.plot.steps, train.plot.losses) == curve and len(curve[0]) == 2

    _session.clear()  # the session forgets its model: continue is greyed out again
    assert not _continue_offered(train)

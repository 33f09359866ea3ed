"""Make the screenshots of docs/user-guide.md with a real napari viewer.

Run from the repository root (takes four to five minutes on two CPU cores)::

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py

It opens the "Touching cells stack" sample, drives the four widgets the way a user would (through
their methods, opened from the plugin manifest) and saves ``annotate.png``, ``weightmap.png``,
``train.png``, ``segment.png`` and ``all-widgets.png`` (the four docked at once) to
``docs/images/``; then it plays one human-in-the-loop round (issue #14) and saves
``loop-rank.png`` (the "Annotate next" ranking and the uncertainty layer after the whole-stack
run), ``loop-continue.png`` (3 Train continuing the model just trained: the loss curve goes on)
and ``loop-next.png`` (segmented and ranked again with the new model; the corrected plane has
left the list). Not part of the test run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import imageio.v3 as iio
import napari
from napari._qt.dialogs.qt_notification import NapariQtNotification
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).parent / "images"
SIZE = (1600, 1000)


def wait(predicate, timeout_s: float = 600.0) -> None:
    """Process Qt events until ``predicate()`` is true."""
    app = QApplication.instance()
    start = time.perf_counter()
    while not predicate():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("the widget did not finish in time")


def settle(seconds: float = 0.5) -> None:
    """Let the window redraw."""
    end = time.perf_counter() + seconds
    wait(lambda: time.perf_counter() > end)


def shoot(viewer, name: str) -> None:
    """Save a screenshot of the whole window (the image fitted to the canvas, no toasts)."""
    settle()
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # e.g. "plane 7 ... is now an annotated plane": it covers the canvas
    viewer.reset_view()
    settle()
    image = viewer.screenshot(canvas_only=False, flash=False)
    iio.imwrite(OUT / name, image[..., :3])
    print(f"wrote {OUT / name} {image.shape[1]}x{image.shape[0]}", file=sys.stderr)


def only(viewer, name: str):
    """Show one plugin widget (closing the others); returns it."""
    viewer.window.remove_dock_widget("all")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", name)
    return widget


def show_only(viewer, *widgets) -> None:
    """Show the docks of ``widgets`` and hide the plugin's other docks.

    Unlike :func:`only`, a hidden widget stays alive: the Train widget keeps its plot for
    "continue", the Segment widget keeps its ranking and segments again when training ends.
    """
    for widget in viewer.window.dock_widgets.values():
        widget.parent().setVisible(any(widget is w for w in widgets))


def to_bottom(viewer, widget) -> None:
    """Show ``widget``'s (hidden) dock again, below the other docks of the right area."""
    window, dock = viewer.window._qt_window, widget.parent()
    window.removeDockWidget(dock)  # the widget stays in its dock: it is not closed
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    dock.show()


def click_first(segment) -> tuple[int, ...]:
    """Click the first row of "Annotate next" (the viewer goes to that plane); its index."""
    item = segment.next_list.item(0)
    segment.next_list.setCurrentItem(item)
    segment.next_list.itemClicked.emit(item)
    return tuple(item.data(Qt.ItemDataRole.UserRole))


def go_to(viewer, layer, plane: int) -> None:
    viewer.dims.set_point(0, layer.data_to_world((plane, 0, 0))[0])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari U-Net")
    viewer.window.resize(*SIZE)
    viewer.open_sample("napari-unet", "cells-stack")
    image, truth = viewer.layers["cells stack"], viewer.layers["cells stack ground truth"]

    # 1 Annotate: a new annotation layer; the ground truth of planes 0 and 4 as annotations
    annotate = only(viewer, "1 Annotate")
    annotate.new_annotation_layer()
    annotate.import_labels(truth, [0, 4])
    labels = annotate.annotation_layer()
    labels.data[4, 200:240, 10:70] = 65535  # an "ignore" patch, shown grey
    labels.refresh()
    truth.visible = False
    go_to(viewer, image, 4)
    annotate.refresh_planes()
    annotate.use_ignore_label()
    shoot(viewer, "annotate.png")

    # 2 Weight map of all annotated planes
    weights = only(viewer, "2 Weight map")
    weights.labels_combo.value = labels
    weights.scope.value = "all annotated planes"
    weights.compute()
    wait(lambda: weights.worker is None)
    viewer.layers.selection.active = viewer.layers["cells stack annotations weight map"]
    shoot(viewer, "weightmap.png")  # drawn under the annotations: the gaps glow
    viewer.layers["cells stack annotations weight map"].visible = False

    # 3 Train a small network, holding plane 4 out for validation; screenshot mid-run
    train = only(viewer, "3 Train")
    train.labels_combo.value = labels
    train.steps.value = 600  # the small preset and every default but the step count
    train.hold_out.value = "4"
    labels.visible = False
    go_to(viewer, image, 2)
    train.start_training()
    wait(lambda: len(train.plot.steps) >= 400 or not train.is_running)
    settle(1.5)
    shoot(viewer, "train.png")
    wait(lambda: not train.is_running)
    print(train.status.text(), file=sys.stderr)

    # 4 Segment the whole stack with the model just trained (3 Train stays open, hidden: the
    # loop round below continues its model and its plot)
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "4 Segment")
    show_only(viewer, segment)
    preview = viewer.layers["cells stack live prediction"]
    preview.visible = False
    segment.image_combo.value = image
    segment.scope.value = "whole stack"  # every other setting: the defaults
    segment.run()
    wait(lambda: not segment.is_running)  # segmented, then ranked (rank_after is on)
    print(segment.status.text(), file=sys.stderr)
    result = viewer.layers["cells stack segmentation"]
    uncertainty = viewer.layers["cells stack uncertainty"]
    uncertainty.visible = False  # shown in the loop round below
    go_to(viewer, image, 6)
    result.contour = 2
    shoot(viewer, "segment.png")
    # all four docked at once on the 1600 x 1000 screen: each scrolls, the window fits
    for name in ("1 Annotate", "2 Weight map"):
        viewer.window.add_plugin_dock_widget("napari-unet", name)
    to_bottom(viewer, train)
    settle()
    train.share_height()
    shoot(viewer, "all-widgets.png")

    # the human-in-the-loop round (#14), as the benchmark's simulated annotator plays it
    # 1 go to the plane the model is least sure of (first row of Annotate next)
    show_only(viewer, segment)
    viewer.layers.move(viewer.layers.index(uncertainty), viewer.layers.index(result))
    uncertainty.visible = True  # under the outlines: bright where the model hesitates
    uncertainty.gamma, uncertainty.opacity = 1.5, 0.6  # the hot spots, not a haze over the cells
    viewer.layers.selection.active = result  # the label tools, to correct the plane
    plane = click_first(segment)
    shoot(viewer, "loop-rank.png")
    # "correct" it: its ground truth replaces its segmentation, then Use plane as annotation
    result.data[plane] = truth.data[plane]
    result.refresh()
    # the annotation layer must be visible: napari's Labels.data_setitem fails on a hidden one
    labels.visible = True
    settle()
    segment.use_plane_as_annotation()
    labels.visible = False
    print(segment.status.text(), file=sys.stderr)
    ranked = segment.ranking

    # 2 continue the model just trained on every annotated plane (the short default budget)
    show_only(viewer, train)
    result.visible = uncertainty.visible = False
    preview.visible = True  # what the network now predicts for the corrected plane
    train.continue_training()
    wait(lambda: train.progress.value() >= 200 or not train.is_running)
    settle(1.5)
    shoot(viewer, "loop-continue.png")
    wait(lambda: not train.is_running)
    print(train.status.text(), file=sys.stderr)

    # 3 4 Segment segments the stack again with the new model and ranks it again by itself
    wait(lambda: segment.ranking is not ranked and not segment.is_running)
    print(segment.status.text(), file=sys.stderr)
    show_only(viewer, segment)
    preview.visible = False
    result.visible = uncertainty.visible = True
    click_first(segment)
    shoot(viewer, "loop-next.png")
    if len(sys.argv) > 1:  # keep the model, e.g. to try post-processing settings
        train.save_model(sys.argv[1])
    viewer.close()


if __name__ == "__main__":
    main()

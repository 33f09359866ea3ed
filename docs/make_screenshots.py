"""Make the screenshots of docs/user-guide.md with a real napari viewer.

Run from the repository root (takes one to three minutes on a laptop CPU)::

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py

It opens the "Touching cells stack" sample, drives the four widgets the way a user would (through
their methods, opened from the plugin manifest) and saves ``annotate.png``, ``weightmap.png``,
``train.png``, ``segment.png`` and ``all-widgets.png`` (the four docked at once) to
``docs/images/``. Not part of the test run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import imageio.v3 as iio
import napari
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
    """Save a screenshot of the whole window (the image fitted to the canvas)."""
    settle()
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
    weights.labels_combo.set_layer(labels)
    weights.scope.setCurrentText("all annotated planes")
    weights.compute()
    wait(lambda: weights.worker is None)
    viewer.layers.selection.active = viewer.layers["cells stack annotations weight map"]
    shoot(viewer, "weightmap.png")  # drawn under the annotations: the gaps glow
    viewer.layers["cells stack annotations weight map"].visible = False

    # 3 Train a small network, holding plane 4 out for validation; screenshot mid-run
    train = only(viewer, "3 Train")
    train.labels_combo.set_layer(labels)
    train.steps.setValue(600)  # the small preset and every default but the step count
    train.hold_out.setText("4")
    labels.visible = False
    go_to(viewer, image, 2)
    train.start_training()
    wait(lambda: len(train.plot.steps) >= 400 or not train.is_running)
    settle(1.5)
    shoot(viewer, "train.png")
    wait(lambda: not train.is_running)
    print(train.status.text(), file=sys.stderr)

    # 4 Segment the whole stack with the model just trained
    segment = only(viewer, "4 Segment")
    viewer.layers["cells stack live prediction"].visible = False
    segment.image_combo.set_layer(image)
    segment.scope.setCurrentText("whole stack")  # every other setting: the defaults
    segment.run()
    wait(lambda: not segment.is_running)
    go_to(viewer, image, 6)
    viewer.layers["cells stack segmentation"].contour = 2
    shoot(viewer, "segment.png")
    print(segment.status.text(), file=sys.stderr)
    # all four docked at once on the 1600 x 1000 screen: each scrolls, the window fits
    for name in ("1 Annotate", "2 Weight map", "3 Train"):
        viewer.window.add_plugin_dock_widget("napari-unet", name)
    shoot(viewer, "all-widgets.png")
    if len(sys.argv) > 1:  # keep the model, e.g. to try post-processing settings
        train.save_model(sys.argv[1])
    viewer.close()


if __name__ == "__main__":
    main()

"""Make the screenshots of docs/user-guide.md with a real napari viewer.

Run from the repository root::

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py

Two parts, each in its own viewer (``--only day`` or ``--only loop`` makes one of them;
``--only annotate`` makes ``annotate.png`` alone, the start of the loop part, in seconds):

* **day** (about a minute on two CPU cores): the stack of the "Touching cells stack" sample is
  written to a temporary folder as ``cells.tif`` with the ground truth of four planes as the
  Cell Tracking Challenge's per-frame mask files (``man_seg000.tif``, ...); the stack is opened
  as File > Open does, the five widgets from the Plugins menu, and it saves
  ``import-masks.png`` (1 Annotate after importing the mask files), ``annotation-file.png``
  (the annotations saved and opened again), ``weightmap.png`` (2 Weight map: the gaps between
  touching cells glow over the image), ``train-accuracy.png`` (3 Train after a tiny run: the
  accuracy line on the plane held out automatically), ``export.png`` (5 Export after a
  bioimage.io export: the checker's verdict) and ``all-widgets.png`` (the five docked at once).
* **loop** (four to five minutes): it opens the sample, drives 1 Annotate, 3 Train and
  4 Segment and saves ``annotate.png``, ``train.png`` and ``segment.png``; then it plays one
  human-in-the-loop round (issue #14) and saves ``loop-rank.png`` (the "Annotate next" ranking
  and the uncertainty layer after the whole-stack run), ``loop-continue.png`` (3 Train
  continuing the model just trained: the loss curve goes on) and ``loop-next.png`` (segmented
  and ranked again with the new model; the corrected plane has left the list). A model file
  path after the options keeps that part's model.

The widgets are driven through their methods, the way a user's clicks call them. Not part of
the test run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import napari
import numpy as np
import tifffile
from napari._qt.dialogs.qt_notification import NapariQtNotification
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_unet._widgets._forms import SETTINGS_ENV
from napari_unet.model import UNetConfig
from napari_unet.sample_data import make_cell_stack

OUT = Path(__file__).parent / "images"
SIZE = (1600, 1000)
WIDGETS = ("1 Annotate", "2 Weight map", "3 Train", "4 Segment", "5 Export")
MASK_PLANES = (0, 2, 4, 6)  # the planes with a man_segNNN.tif file; 4 is held out by itself
TINY = UNetConfig(width=8, depth=2, padding="same", norm="batch", dropout=0.0)  # seconds a run
TINY_STEPS = 60


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


def shoot(viewer, name: str, toasts: bool = False) -> None:
    """Save a screenshot of the whole window (the image fitted to the canvas, no toasts unless
    ``toasts``)."""
    settle()
    if not toasts:
        close_toasts(viewer)
    viewer.reset_view()
    settle()
    image = viewer.screenshot(canvas_only=False, flash=False)
    iio.imwrite(OUT / name, image[..., :3])
    print(f"wrote {OUT / name} {image.shape[1]}x{image.shape[0]}", file=sys.stderr)


def close_toasts(viewer) -> None:
    """Close the notifications (e.g. "plane 7 ... is now an annotated plane": they cover the
    canvas)."""
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


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


def click_first(segment) -> tuple[int, ...]:
    """Click the first row of "Annotate next" (the viewer goes to that plane); its index."""
    item = segment.next_list.item(0)
    segment.next_list.setCurrentItem(item)
    segment.next_list.itemClicked.emit(item)
    return tuple(item.data(Qt.ItemDataRole.UserRole))


def go_to(viewer, layer, plane: int) -> None:
    viewer.dims.set_point(0, layer.data_to_world((plane, 0, 0))[0])


def scroll_to(widget, *children) -> None:
    """Scroll a plugin widget's dock so that ``children`` are in view."""
    settle(0.2)
    for child in children:
        widget.scroll.ensureWidgetVisible(getattr(child, "native", child), 0, 10)
    settle(0.2)


def write_day_files(folder: Path) -> tuple[Path, list[Path]]:
    """The sample stack as ``cells.tif`` and the masks of :data:`MASK_PLANES` as the Cell
    Tracking Challenge names them (``man_seg000.tif``, ...)."""
    images, truth = make_cell_stack(8)  # the "Touching cells stack" sample
    stack = folder / "cells.tif"
    tifffile.imwrite(stack, images)
    masks = [folder / f"man_seg{i:03d}.tif" for i in MASK_PLANES]
    for i, path in zip(MASK_PLANES, masks, strict=True):
        tifffile.imwrite(path, truth[i].astype(np.uint16))
    return stack, masks


def day() -> None:
    """The new steps of a day (#21): import mask files, save/open the annotations, the weight
    map, a tiny training with its accuracy line, a bioimage.io export, the five widgets."""
    folder = Path(tempfile.gettempdir()) / "napari-unet-docs"  # a short path on the pictures
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    stack, masks = write_day_files(folder)
    viewer = napari.Viewer(title="napari U-Net")
    viewer.window.resize(*SIZE)
    (image,) = viewer.open(str(stack))  # as File > Open
    docks = {n: viewer.window.add_plugin_dock_widget("napari-unet", n)[1] for n in WIDGETS}
    annotate, weights, train, segment, export = docks.values()

    # 1 Annotate: the mask files chosen under "mask files", then Import mask files
    show_only(viewer, annotate)
    annotate.mask_files.value = masks
    annotate.import_mask_files(masks)
    labels = annotate.annotation_layer()
    go_to(viewer, image, 2)
    scroll_to(annotate, annotate.masks_button, annotate.import_status)
    shoot(viewer, "import-masks.png")  # the status line under the button confirms it
    print(annotate.import_status.value, file=sys.stderr)

    # Save annotations..., the layer removed, Open annotations... brings it back
    saved = annotate.save_annotations(folder / "cells", labels)
    scroll_to(annotate, annotate.import_status, annotate.save_button)
    shoot(viewer, "annotation-file.png")
    print(annotate.import_status.value, file=sys.stderr)
    viewer.layers.remove(labels)
    labels = annotate.open_annotations(saved)
    print(annotate.import_status.value, file=sys.stderr)

    # 2 Weight map of every annotated plane; outlines only, so the glow lies over the image
    show_only(viewer, weights)
    weights.labels_combo.value = labels
    weights.scope.value = "all annotated planes"
    weights.compute()
    wait(lambda: weights.worker is None)
    weight_map = viewer.layers[f"{labels.name} weight map"]
    labels.contour = 1
    viewer.layers.selection.active = weight_map
    go_to(viewer, image, 2)
    shoot(viewer, "weightmap.png")
    print(weights.status.text(), file=sys.stderr)
    weight_map.visible = False
    labels.contour = 0

    # 3 Train a tiny network for a few dozen steps: 4 annotated planes, plane 4 held out by itself
    show_only(viewer, train)
    train.labels_combo.value = labels
    train.set_custom_architecture(TINY)
    train.tile.value, train.steps.value, train.batch_size.value = 64, TINY_STEPS, 4
    labels.visible = False
    go_to(viewer, image, 4)
    train.start_training()
    wait(lambda: not train.is_running)
    settle(1.5)
    viewer.layers.selection.active = viewer.layers["cells live prediction"]
    scroll_to(train, train.plot, train.accuracy)
    shoot(viewer, "train-accuracy.png")
    print(train.status.text(), train.accuracy.text(), sep="\n", file=sys.stderr)

    # 5 Export the model just trained as a bioimage.io package (the suggested file name)
    show_only(viewer, export)
    export.training_data.value = "4 planes of synthetic touching cells (man_seg masks)"
    export.authors.value = "A. Biologist"
    export.training_data.native.setCursorPosition(0)  # the start of the text, not its end
    export.export()
    wait(lambda: export.worker is None)
    settle(1.0)
    scroll_to(export, export.verdict, export.checker)
    shoot(viewer, "export.png")
    print(export.status.text(), export.verdict.text(), sep="\n", file=sys.stderr)

    # the five docked at once on the 1600 x 1000 screen: each scrolls, the window fits
    show_only(viewer, *docks.values())
    viewer.layers["cells live prediction"].visible = False  # plane 4's, not this plane's
    labels.visible = True
    viewer.layers.selection.active = labels
    go_to(viewer, image, 2)
    for widget in docks.values():
        widget.scroll.verticalScrollBar().setValue(0)
    settle()
    annotate.share_height()
    shoot(viewer, "all-widgets.png")
    viewer.close()


def sample_viewer():
    """A viewer of the window's size with the "Touching cells stack" sample open."""
    viewer = napari.Viewer(title="napari U-Net")
    viewer.window.resize(*SIZE)
    viewer.open_sample("napari-unet", "cells-stack")
    return viewer


def first_annotations(viewer):
    """1 Annotate on the sample (``annotate.png``); returns the annotation layer."""
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
    return labels


def loop(model_path: str | None = None) -> None:
    """1 Annotate, 3 Train (600 steps of the small preset), 4 Segment and one round of the
    human-in-the-loop (#14) on the "Touching cells stack" sample."""
    viewer = sample_viewer()
    image, truth = viewer.layers["cells stack"], viewer.layers["cells stack ground truth"]
    labels = first_annotations(viewer)

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
    if model_path:  # keep the model, e.g. to try post-processing settings
        train.save_model(model_path)
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=("day", "annotate", "loop"),
        help="make one part's pictures (annotate: annotate.png alone, the start of loop)",
    )
    parser.add_argument("model", nargs="?", help="loop: save its model to this file")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    # each part starts from the widgets' defaults, not from what a previous part (or the user)
    # left remembered: the day part's tiny network trains on 64 px tiles, too small for the
    # small preset of the loop part
    settings = tempfile.mkdtemp(prefix="napari-unet-settings-")
    if args.only in (None, "day"):
        os.environ[SETTINGS_ENV] = f"{settings}/day"
        day()
    if args.only in (None, "loop"):
        os.environ[SETTINGS_ENV] = f"{settings}/loop"
        loop(args.model)
    if args.only == "annotate":
        viewer = sample_viewer()
        first_annotations(viewer)
        viewer.close()


if __name__ == "__main__":
    main()

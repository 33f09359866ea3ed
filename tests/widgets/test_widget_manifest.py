"""The napari manifest: every widget and sample opens through napari's plugin machinery."""

from __future__ import annotations

import pytest

from napari_unet._widgets.annotate import AnnotateWidget
from napari_unet._widgets.export import ExportWidget
from napari_unet._widgets.segment import SegmentWidget
from napari_unet._widgets.train import TrainWidget
from napari_unet._widgets.weightmap import WeightMapWidget

pytestmark = pytest.mark.viewer

WIDGETS = {
    "1 Annotate": AnnotateWidget,
    "2 Weight map": WeightMapWidget,
    "3 Train": TrainWidget,
    "4 Segment": SegmentWidget,
    "5 Export": ExportWidget,
}


def test_manifest_widgets_and_sample(viewer):
    viewer.open_sample("napari-unet", "cells-stack")
    assert [layer.name for layer in viewer.layers] == ["cells stack", "cells stack ground truth"]
    opened = {}
    for name, cls in WIDGETS.items():
        _, widget = viewer.window.add_plugin_dock_widget("napari-unet", name)
        assert isinstance(widget, cls)
        opened[name] = widget
    assert set(opened.values()) <= set(viewer.window.dock_widgets.values())
    annotate = opened["1 Annotate"]
    assert annotate.image_combo.current_choice == "cells stack"
    assert annotate.source_combo.current_choice == "cells stack ground truth"


def test_manifest_reads_and_writes_annotation_files(viewer):
    from npe2 import PluginManager

    contributions = PluginManager.instance().get_manifest("napari-unet").contributions
    (reader,) = contributions.readers
    assert reader.command == "napari-unet.get_annotation_reader"
    assert "*.unet-annotations.tif" in reader.filename_patterns
    (writer,) = contributions.writers
    assert writer.layer_types == ["labels"]
    assert ".unet-annotations.tif" in writer.filename_extensions
    # only the plugin's own ending: plain TIFFs stay with napari's builtin reader and writer
    assert ".tif" not in writer.filename_extensions and "*.tif" not in reader.filename_patterns

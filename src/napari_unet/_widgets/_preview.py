"""The live prediction layer of the Train widget: where to predict, and showing the result."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from napari_unet._widgets._common import current_plane, keeping_selection, reusable_layer

MAX_EDGE = 1024  # a plane up to this size is predicted whole; larger ones in a window this big


class LivePreview:
    """Chooses the region to preview and shows it.

    Planes up to ``max_edge`` pixels per side are predicted whole. On larger planes the preview
    is a ``max_edge`` window around the centre of the view, drawn with a frame (a Shapes layer
    "<image> live prediction window") so it reads as a window and not as a cut through the cells.
    The training worker spaces previews so that they take at most a fifth of the run.
    """

    def __init__(self, viewer, max_edge: int = MAX_EDGE) -> None:
        self.viewer = viewer
        self.max_edge = max_edge
        self.updates = 0
        self.shown: set[str] = set()  # names of the layers this preview made

    def request(self, labels: Labels) -> tuple[tuple[int, ...], tuple[int, int, int, int]]:
        """(plane index, (y0, y1, x0, x1)) of the region around the camera centre."""
        index = current_plane(self.viewer, labels, labels.ndim - 2)
        height, width = labels.data.shape[-2:]
        try:
            point = list(self.viewer.dims.point)
            centre = self.viewer.camera.center[-2:]
            for axis, value in zip(self.viewer.dims.displayed[-2:], centre, strict=False):
                point[axis] = value
            cy, cx = labels.world_to_data(point)[-2:]
        except Exception:  # noqa: BLE001 - any odd camera state: use the plane centre
            cy, cx = height / 2, width / 2
        return index, (*_span(cy, height, self.max_edge), *_span(cx, width, self.max_edge))

    def layer_name(self, image: Image | None, labels: Labels) -> str:
        """Name of the preview layer: "<image> live prediction" (its frame: "... window")."""
        return f"{image.name if image is not None else labels.name} live prediction"

    def remove(self) -> None:
        """Take the preview layers (and their frame) of this widget's runs off the screen."""
        for layer in list(self.viewer.layers):
            if layer.name in self.shown:
                self.viewer.layers.remove(layer)
        self.shown.clear()

    def layer(self, image: Image | None, labels: Labels) -> Labels:
        """The preview layer, created (empty, aligned with ``labels``) when missing."""
        name, shape = self.layer_name(image, labels), tuple(labels.data.shape)
        self.shown.update({name, f"{name} window"})
        layer = reusable_layer(self.viewer, name, Labels, shape)
        if layer is None:
            where = {"scale": labels.scale, "translate": labels.translate}
            with keeping_selection(self.viewer):
                layer = self.viewer.add_labels(
                    np.zeros(shape, np.uint8), name=name, opacity=0.45, **where
                )
        return layer

    def show(
        self,
        image: Image | None,
        labels: Labels | None,
        index: tuple[int, ...],
        box: tuple[int, int, int, int],
        prediction: np.ndarray,
    ) -> Labels | None:
        """Write ``prediction`` into the preview layer (created on first use)."""
        if labels is None:
            return None
        layer = self.layer(image, labels)
        y0, y1, x0, x1 = box
        plane = layer.data[tuple(index)]
        plane[...] = 0  # nothing stale from an earlier window stays on screen
        plane[y0:y1, x0:x1] = prediction
        layer.refresh()
        self._frame(image, labels, index, box)
        self.updates += 1
        return layer

    def _frame(self, image, labels: Labels, index: tuple[int, ...], box) -> None:
        """Outline a windowed preview; remove the outline when the whole plane is shown."""
        name = f"{self.layer_name(image, labels)} window"
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        y0, y1, x0, x1 = box
        height, width = labels.data.shape[-2:]
        if (y0, y1, x0, x1) == (0, height, 0, width):
            if existing is not None:
                self.viewer.layers.remove(existing)
            return
        lead = [float(i) for i in index]
        top, bottom, left, right = y0 - 0.5, y1 - 0.5, x0 - 0.5, x1 - 0.5
        corners = np.array(
            [lead + [top, left], lead + [top, right], lead + [bottom, right], lead + [bottom, left]]
        )
        if existing is not None:
            existing.data = [corners]
            return
        with keeping_selection(self.viewer):
            look = {"edge_color": "yellow", "face_color": "transparent", "edge_width": 2}
            where = {"scale": labels.scale, "translate": labels.translate}
            self.viewer.add_shapes([corners], shape_type="rectangle", name=name, **look, **where)


def _span(centre: float, size: int, edge: int) -> tuple[int, int]:
    """A window of at most ``edge`` pixels around ``centre`` inside ``[0, size)``."""
    if size <= edge:
        return 0, size
    start = int(np.clip(round(centre - edge / 2), 0, size - edge))
    return start, start + edge

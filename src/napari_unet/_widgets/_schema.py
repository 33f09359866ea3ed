"""Colours and explanations of the annotation label schema (see ``annotations.py``)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from napari.utils.colormaps import DirectLabelColormap, label_colormap

from napari_unet.annotation.schema import IGNORE_LABEL

N_CYCLIC = 1023  # instance ids 1..N_CYCLIC get napari's usual cycling colours
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)
IGNORE_GREY = (0.55, 0.55, 0.55, 1.0)
BACKGROUND_BLUE = (0.15, 0.45, 1.0, 1.0)
OVERFLOW = (1.0, 1.0, 0.7, 1.0)  # ids beyond the table
CLASS_COLOURS = [  # class 1, 2, ... (scribbles: label 2, 3, ...)
    (1.0, 0.6, 0.0, 1.0),
    (0.1, 0.8, 0.3, 1.0),
    (0.9, 0.2, 0.8, 1.0),
    (1.0, 0.95, 0.1, 1.0),
    (0.0, 0.85, 0.85, 1.0),
    (0.85, 0.1, 0.1, 1.0),
    (0.6, 0.4, 1.0, 1.0),
    (0.6, 0.35, 0.1, 1.0),
]

_SWATCH = '<span style="background-color:{};">&nbsp;&nbsp;&nbsp;&nbsp;</span>'


def _hex(rgba) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgba[:3])


@lru_cache(maxsize=1)
def _cyclic_colours() -> np.ndarray:
    return label_colormap(49).map(np.arange(1, N_CYCLIC + 1))


def schema_colormap(mode: str) -> DirectLabelColormap:
    """A label colormap that makes the schema visible: ignore grey, background blue, ..."""
    colours: dict = {None: np.array(OVERFLOW), 0: np.array(TRANSPARENT)}
    if mode == "instances":
        colours.update({i + 1: c for i, c in enumerate(_cyclic_colours())})
    elif mode == "scribbles":
        colours[1] = np.array(BACKGROUND_BLUE)
        colours.update({i + 2: np.array(c) for i, c in enumerate(CLASS_COLOURS)})
    else:
        colours.update({i + 1: np.array(c) for i, c in enumerate(CLASS_COLOURS)})
    colours[IGNORE_LABEL] = np.array(IGNORE_GREY)
    return DirectLabelColormap(color_dict=colours)


def _row(colour, value: str, meaning: str) -> str:
    swatch = _SWATCH.format(_hex(colour)) if colour is not None else "&nbsp;" * 4
    return f"<tr><td>{swatch}</td><td><b>{value}</b></td><td>{meaning}</td></tr>"


def schema_html(mode: str) -> str:
    """A small table that says which value means what in ``mode``."""
    ignore = _row(IGNORE_GREY, str(IGNORE_LABEL), "ignore: the loss skips these pixels")
    if mode == "instances":
        rows = [
            _row(None, "0", "background (unpainted pixels of an annotated plane)"),
            _row(
                _cyclic_colours()[0],
                "1, 2, 3, ...",
                "one id per object; touching objects "
                "need different ids (press <i>Object</i> for a new id)",
            ),
        ]
        note = "A plane is annotated when it holds a label or is marked below."
    elif mode == "scribbles":
        rows = [
            _row(None, "0", "not painted: ignored"),
            _row(BACKGROUND_BLUE, "1", "background stroke"),
            _row(CLASS_COLOURS[0], "2", "object stroke (3, 4, ... = further classes)"),
        ]
        note = "Paint a few strokes of both; everything unpainted is ignored."
    else:
        rows = [
            _row(None, "0", "background (unpainted pixels of an annotated plane)"),
            _row(CLASS_COLOURS[0], "1", "class 1"),
            _row(CLASS_COLOURS[1], "2, 3, ...", "class 2, 3, ..."),
        ]
        note = "Paint every pixel of an annotated plane that is not background."
    return f"<table>{''.join(rows)}{ignore}</table><small>{note}</small>"

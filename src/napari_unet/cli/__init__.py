"""The ``napari-unet`` command line: :func:`main` parses (``main.py``), ``commands.py`` runs."""

from napari_unet.cli.app import build_parser, main

__all__ = ["build_parser", "main"]

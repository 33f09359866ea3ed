"""napari-unet: the U-Net of Ronneberger et al. (2015) for microscopy, in napari and on the
command line."""

__version__ = "0.1.0"

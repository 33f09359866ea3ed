"""``python -m napari_unet.cli``: the same as the ``napari-unet`` command."""

import sys

from napari_unet.cli.app import main

sys.exit(main())

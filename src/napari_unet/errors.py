"""User-facing errors.

Every problem a user can cause (bad file, bad option, bad annotations) raises a subclass of
:class:`NapariUnetError` with one clear sentence. The CLI prints that sentence on stderr and exits
non-zero; the napari widgets show it as a notification. Anything else is a bug.
"""

from __future__ import annotations


class NapariUnetError(Exception):
    """Base class for errors whose message is meant for the user."""


class InputError(NapariUnetError, ValueError):
    """Unusable input data or option (shape, dtype, values, sizes)."""


class AnnotationError(InputError):
    """Annotations that cannot be trained on (no annotated plane, no background, ...)."""


class TileSizeError(InputError):
    """A tile size that the network cannot process."""


class ModelFileError(NapariUnetError):
    """A model file that is missing, corrupt, truncated, foreign or unsafe."""


class DeviceError(NapariUnetError):
    """A compute device that was asked for but is not available."""


class Cancelled(NapariUnetError):
    """The user cancelled a running job."""


class OutOfMemory(NapariUnetError):
    """The device ran out of memory even at the smallest batch or tile."""

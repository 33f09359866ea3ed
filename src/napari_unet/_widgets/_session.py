"""The model trained last in this napari session, shared by the Train and Segment widgets.

The Train widget calls :func:`set_trained` when a run finishes; the Segment widget offers
"model just trained" and reads :func:`trained`. ``changed`` (a psygnal signal) tells listeners.
No Qt here and no reference to a viewer, so nothing keeps a closed viewer alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psygnal import Signal

from ..model import UNet
from ..modelfile import ModelMetadata


@dataclass
class TrainedModel:
    """A trained network (in eval mode, on the CPU) and its model-file metadata."""

    model: UNet
    metadata: ModelMetadata
    description: str
    created: datetime


class _Session:
    changed = Signal()

    def __init__(self) -> None:
        self.latest: TrainedModel | None = None


_SESSION = _Session()
changed = _SESSION.changed


def set_trained(model: UNet, metadata: ModelMetadata, description: str) -> TrainedModel:
    """Record ``model`` as the model just trained (moved to the CPU to free accelerator memory)."""
    entry = TrainedModel(model.cpu().eval(), metadata, description, datetime.now())
    _SESSION.latest = entry
    _SESSION.changed.emit()
    return entry


def trained() -> TrainedModel | None:
    """The model trained last in this session, or None."""
    return _SESSION.latest


def clear() -> None:
    """Forget the trained model (tests; frees memory)."""
    _SESSION.latest = None
    _SESSION.changed.emit()

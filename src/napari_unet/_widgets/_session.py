"""The model trained last in this napari session, shared by the Train and Segment widgets.

The Train widget calls :func:`set_trained` when a run finishes; the Segment widget offers
"model just trained" and reads :func:`trained`; the Train widget's "continue: model just
trained" fine-tunes it further (through :meth:`TrainedModel.model_file`, since a training
recipe starts from a model file). ``changed`` (a psygnal signal) tells listeners.
No Qt here and no reference to a viewer, so nothing keeps a closed viewer alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from psygnal import Signal

from napari_unet.io.modelfile import ModelMetadata, save_model
from napari_unet.model import UNet


@dataclass
class TrainedModel:
    """A trained network (in eval mode, on the CPU) and its model-file metadata.

    chain_steps : optimiser steps from the new model that started this chain of continued runs
        up to this model (a model continued by 300 steps from one trained 2000 steps: 2300).
    stem : file name (without suffix) for :meth:`model_file`, e.g. ``cells-20250101-120000``.
    path : the model file holding exactly these weights, once :meth:`model_file` wrote it.
    history : the loss and validation curves of its runs (``LivePlot.history``), so a Train
        dock opened anew draws them again.
    """

    model: UNet
    metadata: ModelMetadata
    description: str
    created: datetime
    chain_steps: int = 0
    stem: str = "session-model"
    path: Path | None = None
    history: dict | None = None

    def model_file(self, folder: str | Path) -> Path:
        """This model as a model file in ``folder`` (written on the first call, then reused).

        A continued run fine-tunes a copy loaded from this file, so the session's model stays
        as it is (4 Segment may be using it) and the new model names the file as its parent.
        """
        if self.path is None or not self.path.is_file():
            folder = Path(folder)
            folder.mkdir(parents=True, exist_ok=True)
            path, n = folder / f"{self.stem}.safetensors", 1
            while path.exists():  # never overwrite another model's file
                n += 1
                path = folder / f"{self.stem}-{n}.safetensors"
            self.path = save_model(path, self.model, self.metadata)
        return self.path


class _Session:
    changed = Signal()
    latest: TrainedModel | None = None


_SESSION = _Session()
changed = _SESSION.changed


def set_trained(
    model: UNet,
    metadata: ModelMetadata,
    description: str,
    *,
    chain_steps: int | None = None,
    stem: str = "session-model",
    history: dict | None = None,
) -> TrainedModel:
    """Record ``model`` as the model just trained (moved to the CPU to free accelerator memory).

    ``chain_steps``: steps trained in this chain of continued runs (None: the ``steps`` the
    metadata records, i.e. a new model). ``stem``: the name :meth:`TrainedModel.model_file` uses.
    """
    if chain_steps is None:
        chain_steps = int(metadata.provenance.get("steps") or 0)
    entry = TrainedModel(
        model.cpu().eval(), metadata, description, datetime.now(), chain_steps, stem
    )
    entry.history = history
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

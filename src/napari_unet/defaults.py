"""Product defaults that the command line must know without importing torch."""

#: Optimiser steps of a training run without options (about 5-7 min on a 2-core laptop CPU with
#: the small preset; see docs/benchmarks.md for what they reach).
DEFAULT_STEPS = 2000

#: Optimiser steps when continuing a model the user trained (``train --init MODEL``): one round
#: of the human-in-the-loop cycle (see :func:`default_steps`).
CONTINUE_STEPS = 300


def default_steps(continuing: bool) -> int:
    """Optimiser steps of a run whose steps the user did not set.

    ``continuing`` is True when the run fine-tunes a model the user trained (``--init`` on the
    command line, a loaded model in the Train widget): :data:`CONTINUE_STEPS`. A new model,
    including one fine-tuned from the shipped starting model, gets :data:`DEFAULT_STEPS`.

    Why fewer steps when continuing: in the human-in-the-loop cycle (segment, correct the
    plane the model is least sure of, continue training, segment again) the model already
    knows the data and only has to take in the corrected plane. One round -- continue training,
    then re-segment a 20-plane 512 x 512 stack -- should take at most about 2 minutes on a
    2-core CPU with the small preset, which leaves room for about 300 steps (2000 take 5-7
    minutes there).
    """
    return CONTINUE_STEPS if continuing else DEFAULT_STEPS


#: The uncertainty measures that rank planes for annotation (:mod:`napari_unet.inference.suggest`)
#: and the
#: default one, ``disagreement`` (docs/benchmarks.md, "Human in the loop"): it and ``entropy``
#: predict a plane's segmentation error about equally (Spearman rho 0.66 / 0.41 / 0.80 and
#: 0.69 / 0.46 / 0.82 on synthetic / PhC-U373 / ISBI 2012; ``boundary_per_object``: 0.84 /
#: -0.12 / 0.47), and in the simulated loop disagreement reached the accuracy of 5 random planes
#: with 3 on two of the three sets, entropy on one (ISBI: 0.188 against 0.185).
SUGGEST_MEASURES: tuple[str, ...] = ("disagreement", "entropy", "boundary_per_object")
DEFAULT_SUGGEST_MEASURE = "disagreement"


def form_field(default, label: str, tooltip: str, **meta):
    """A dataclass field whose ``metadata`` the widget forms read: ``label``, ``tooltip`` and
    e.g. ``min``, ``max``, ``step``, ``choices``, ``special``, ``suffix`` (see
    ``napari_unet._widgets._forms``)."""
    from dataclasses import field

    return field(default=default, metadata={"label": label, "tooltip": tooltip, **meta})

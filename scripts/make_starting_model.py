"""Make the generalist starting model that ships in ``src/napari_unet/models/``.

New models fine-tune this network by default (``napari-unet train`` without
``--from-scratch``, the Train widget's "new: from the starting model"); docs/benchmarks.md,
"Starting model", says why. ``--width``/``--depth`` change the small preset's size (the
architecture measurement there kept the small preset). Run from the repository root::

    .venv/bin/python scripts/make_starting_model.py                  # the shipped file
    .venv/bin/python scripts/make_starting_model.py --leave-out isbi \\
        --out benchmarks/models/starting-without-isbi.safetensors   # for the benchmark

Data, and the terms each source is used under (``--sets`` picks the shared sets; the shipped
file takes the four whose terms allow it, ``SHIPPED_SETS``):

* **synthetic** (all runs): ``napari_unet.sample_data`` with its four looks -- fluorescence,
  phase contrast, DIC and EM -- ``--synthetic`` planes of 256 x 256 per look, drawn with
  ``random_modality_config`` (varied cell size, density, blur, noise); exact instance labels.
  Made here; BSD-3-Clause like this package.
* **isbi**: the 30 annotated training slices of the ISBI 2012 EM challenge (serial-section
  TEM, Drosophila larva VNC; Cardona et al. 2010, Arganda-Carreras et al. 2015); cell interiors
  as instances (connected components). Challenge data for research use, with citation.
* **phc**: the 34 reference-segmented frames of PhC-C2DH-U373 sequences 01 and 02 (Cell
  Tracking Challenge; Maska et al. 2014, Ulman et al. 2017; data by S. Kumar, UC Berkeley),
  read as partial annotations. Cell Tracking Challenge conditions of use (research, citation).
* **usiigaci**: 16 phase-contrast images of migrating cells with whole-cell masks (Tsai et al.
  2019). MIT License, (c) 2018 OIST.
* **gowt1**: 6 frames of the Cell Tracking Challenge's Fluo-N2DH-GOWT1 (GFP-Oct4 mouse ES
  nuclei), as converted by a student project without a licence file; the pixels and masks are
  the challenge's, used under its conditions (research, citation), as PhC-U373.
* **gbm40** (benchmark models only): 20 H&E glioblastoma patches (Zhang et al. 2017, Kong et
  al. 2016), read as grey (the mean of R, G, B). Its source repository has no licence file, so
  the shipped file does not use it.
* **lucchi** (benchmark models only): 20 FIB-SEM slices with mitochondria (Lucchi et al. 2012)
  from a conversion without a licence file; not used for the shipped file either.

Each set gives at most ``--pixels`` image pixels (planes evenly spread over the set), so that
no set dominates by size: tiles are drawn in proportion to annotated pixels.

Steps: planes are normalised as the product does (percentiles 1, 99.8), annotated as instances
with the product's defaults (two classes, paper weight maps), and the small preset (16
channels, depth 3, batch norm, dropout 0.1; seeded) is trained with the product's defaults
(Adam 3e-3 annealed by a cosine, batch 4 of augmented tiles, elastic deformation) for
``--steps`` steps on all planes together. The run is deterministic for a seed on one machine
(the same torch build and thread count). The runtime and the data are written into the model
file's provenance and printed.

Runtime of the shipped file (2000 steps, 96 planes: 64 synthetic, 15 ISBI, 11 PhC-U373, 3
Usiigaci, 3 GOWT1; 2026-12-07, torch 2.13.0 CPU, 2 cores): 9.8 min while other jobs shared the
cores; each leave-one-set-out model (``--leave-out SET``) took 4.6-4.8 min with the cores to
itself. The shipped file is the benchmark's ``benchmarks/models/starting-shipped-sets.safetensors``
(the same command with ``--out``), copied.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet.annotation.derived import derive_settings
from napari_unet.annotation.schema import AnnotationConfig, training_planes
from napari_unet.io.modelfile import save_model
from napari_unet.model import UNet
from napari_unet.sample_data import MODALITIES, make_cells, random_modality_config
from napari_unet.threads import limited_threads
from napari_unet.training.starting_model import STARTING_ARCHITECTURE, STARTING_MODEL_FILE
from napari_unet.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from instances import SETS, data_root, every_plane, grey  # noqa: E402
from instances import STARTING_SETS as SHIPPED_SETS  # noqa: E402

SHIPPED = ROOT / "src" / "napari_unet" / "models" / STARTING_MODEL_FILE
TITLES = {"isbi": "ISBI 2012", "phc": "PhC-U373", "usiigaci": "Usiigaci", "gowt1": "GOWT1",
          "gbm40": "GBM40 (grey)", "lucchi": "Lucchi"}  # fmt: skip


def synthetic_planes(per_look: int, seed: int):
    """``per_look`` planes of each modality look, with their instance labels."""
    images, labels, names = [], [], []
    rng = np.random.default_rng(seed)
    for look in MODALITIES:
        for i in range(per_look):
            config = random_modality_config(rng, (256, 256), look)
            image, truth = make_cells(config, seed=int(rng.integers(2**31)))
            images.append(image)
            labels.append(truth)
            names.append(f"synthetic-{look}-{i}")
    return images, labels, names


def shared_planes(root: Path, name: str, pixels: float):
    """Planes of a shared set, evenly spread, at most ``pixels`` image pixels (at least one);
    RGB planes as grey."""
    images, labels = every_plane(root, name)
    images = grey(images)
    count = int(np.clip(pixels // (images.shape[1] * images.shape[2]), 1, len(images)))
    pick = np.unique(np.linspace(0, len(images) - 1, count).round().astype(int))
    return list(images[pick]), list(labels[pick])


def planes_of(images, labels, partial: bool):
    """Training planes of one source (planes of different sizes are prepared one by one)."""
    config = AnnotationConfig(partial=partial)
    out = []
    for image, label in zip(images, labels, strict=True):
        planes, _ = training_planes(image[None], np.asarray(label)[None].astype(np.int32), config)
        out += planes
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED)
    parser.add_argument("--sets", default=",".join(SHIPPED_SETS), help="shared sets to train on")
    parser.add_argument("--leave-out", choices=SETS, action="append", default=[])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--synthetic", type=int, default=16, help="planes per synthetic look")
    parser.add_argument("--pixels", type=float, default=4e6, help="image pixels per shared set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, help="base channels (default: the small preset's 16)")
    parser.add_argument("--depth", type=int, help="poolings (default: the small preset's 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as is)")
    args = parser.parse_args()

    started = time.perf_counter()
    images, labels, _ = synthetic_planes(args.synthetic, args.seed)
    planes = planes_of(images, labels, partial=False)
    sources = [f"synthetic ({len(planes)} planes: {', '.join(MODALITIES)})"]
    root = data_root()
    for name in args.sets.split(","):
        if name not in SETS:
            parser.error(f"unknown set {name!r}; known: {', '.join(SETS)}")
        if name in args.leave_out:
            continue
        if root is None:
            print(f"shared data not found: {name} is left out", file=sys.stderr)
            continue
        images, labels = shared_planes(root, name, args.pixels)
        planes += planes_of(images, labels, partial=name == "phc")
        sources.append(f"{TITLES[name]} ({len(images)} planes)")
    print(f"training on {len(planes)} planes: {'; '.join(sources)}", file=sys.stderr)

    config = TrainConfig(steps=args.steps, seed=args.seed, val_every=0, checkpoint_every=0)
    torch.manual_seed(args.seed)
    architecture = STARTING_ARCHITECTURE.with_(in_channels=1, num_classes=2)
    architecture = architecture.with_(
        width=args.width or architecture.width, depth=args.depth or architecture.depth
    )
    model = UNet(architecture)
    trainer = Trainer(model, planes, config, annotation=AnnotationConfig())
    with limited_threads(args.threads or None):
        for event in trainer.run():
            if event.kind == "step" and event.step % 250 == 0:
                print(f"step {event.step}/{args.steps} loss {event.loss:.4f}", file=sys.stderr)
    seconds = time.perf_counter() - started
    metadata = trainer.metadata()
    metadata.provenance.update(
        {
            "starting_model": True,
            "training_data": "; ".join(sources),
            "left_out": ", ".join(args.leave_out),
            "made_by": "scripts/make_starting_model.py " + " ".join(a for a in sys.argv[1:] if a),
            "script_seconds": round(seconds, 1),
        }
    )
    # segmenting with it before any annotation reads objects by the product's rule, with nothing
    # derived (no minimum size); fine-tuning derives its own from the user's annotations
    metadata.postprocess = derive_settings([], AnnotationConfig())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(args.out, trainer.model.eval(), metadata)
    size = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.1f} MB) in {seconds / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

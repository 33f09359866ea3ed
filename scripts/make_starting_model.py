"""Make the generalist starting model that ships in ``src/napari_unet/models/``.

New models fine-tune this network when asked (``napari-unet train --from-starting-model``, the
Train widget's "new: from the starting model"); by default they start from random weights
(docs/benchmarks.md, "Starting model", says why). Run from the repository root::

    .venv/bin/python scripts/make_starting_model.py                  # the shipped file
    .venv/bin/python scripts/make_starting_model.py --leave-out isbi \\
        --out benchmarks/models/starting-without-isbi.safetensors   # for the benchmark

Data, and the terms each source is used under:

* **synthetic** (all runs): ``napari_unet.sample_data`` with its four looks -- fluorescence,
  phase contrast, DIC and EM -- ``--synthetic`` planes of 256 x 256 per look, drawn with
  ``random_modality_config`` (varied cell size, density, blur, noise); exact instance labels.
  Made here; BSD-3-Clause like this package.
* **ISBI 2012** (``../shared/data/isbi2012``, unless left out): the 30 annotated training slices
  of the EM segmentation challenge (serial-section TEM, Drosophila larva VNC; Cardona et al.
  2010, Arganda-Carreras et al. 2015); cell interiors as instances (connected components).
  Challenge data for research use, with citation.
* **PhC-U373** (``../shared/data/phc-u373``, unless left out): the 34 frames of sequences 01 and
  02 with reference segmentations (Cell Tracking Challenge PhC-C2DH-U373; Maska et al. 2014,
  Ulman et al. 2017; data by S. Kumar, UC Berkeley), read as partial annotations (some frames
  lack cells). Cell Tracking Challenge conditions of use (research, with citation).

No package on the index that we found ships labelled microscopy with a licence that allows
this use and without a download at run time, so there is no fourth source.

Steps: planes are normalised as the product does (percentiles 1, 99.8), annotated as instances
(paper weight maps, w0 = 10, sigma = 5 px), and the small preset (16 channels, depth 3, batch
norm, dropout 0.1; seeded) is trained with the product's defaults (Adam 3e-3 annealed by a
cosine, batch 4 of augmented tiles, elastic deformation) for ``--steps`` steps on all planes
together. Tiles are drawn in proportion to annotated pixels, so the script balances the
sources by the number of planes it takes from each (ISBI: every 5th slice). The run is
deterministic for a seed on one machine (the same torch build and thread count: two runs of a
short version gave bit-identical weights). The runtime and the data are written into the model
file's provenance and printed.

Runtime of the shipped file (4000 steps, 88 planes: 48 synthetic, 6 ISBI, 34 PhC; 2026-12-02,
torch 2.13.0 CPU, 2 cores): 15.8 min measured while other jobs shared the cores; about 12 min
alone (the first 1,250 steps ran at 6.3 steps/s after a minute of data preparation). Each
leave-one-set-out model takes about as long.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_unet.annotation.schema import AnnotationConfig, training_planes
from napari_unet.io.modelfile import save_model
from napari_unet.metrics import instances_from_binary
from napari_unet.model import UNet
from napari_unet.sample_data import MODALITIES, make_cells, random_modality_config
from napari_unet.threads import limited_threads
from napari_unet.training.starting_model import STARTING_ARCHITECTURE, STARTING_MODEL_FILE
from napari_unet.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "napari_unet" / "models" / STARTING_MODEL_FILE
SETS = ("isbi", "phc")


def data_root() -> Path | None:
    """The shared data folder (``$NAPARI_UNET_DATA`` or ``../shared/data``), if present."""
    for cand in (os.environ.get("NAPARI_UNET_DATA"), ROOT.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


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


def isbi_planes(root: Path):
    """Every 5th annotated ISBI 2012 training slice, cell interiors as instances."""
    volume = tifffile.imread(root / "isbi2012" / "train-volume.tif")
    membranes = tifffile.imread(root / "isbi2012" / "train-labels.tif")
    pick = range(0, len(volume), 5)
    return [volume[z] for z in pick], [instances_from_binary(membranes[z] > 0) for z in pick]


def phc_planes(root: Path):
    """The reference-segmented frames of both PhC-U373 sequences."""
    images, labels = [], []
    for seq in ("01", "02"):
        for mask in sorted((root / "phc-u373" / f"{seq}_GT" / "SEG").glob("man_seg*.tif")):
            frame = int(mask.stem[7:])
            images.append(tifffile.imread(root / "phc-u373" / seq / f"t{frame:03d}.tif"))
            labels.append(tifffile.imread(mask))
    return images, labels


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
    parser.add_argument("--leave-out", choices=SETS, action="append", default=[])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--synthetic", type=int, default=12, help="planes per synthetic look")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as is)")
    args = parser.parse_args()

    started = time.perf_counter()
    images, labels, _ = synthetic_planes(args.synthetic, args.seed)
    planes = planes_of(images, labels, partial=False)
    sources = [f"synthetic ({len(planes)} planes: {', '.join(MODALITIES)})"]
    root = data_root()
    for name in SETS:
        if name in args.leave_out:
            continue
        if root is None:
            print(f"shared data not found: {name} is left out", file=sys.stderr)
            continue
        images, labels = isbi_planes(root) if name == "isbi" else phc_planes(root)
        planes += planes_of(images, labels, partial=name == "phc")
        sources.append(f"{'ISBI 2012' if name == 'isbi' else 'PhC-U373'} ({len(images)} planes)")
    print(f"training on {len(planes)} planes: {'; '.join(sources)}", file=sys.stderr)

    config = TrainConfig(steps=args.steps, seed=args.seed, val_every=0, checkpoint_every=0)
    torch.manual_seed(args.seed)
    model = UNet(STARTING_ARCHITECTURE.with_(in_channels=1, num_classes=2))
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
    metadata.postprocess = {}  # fine-tuning derives post-processing from the user's annotations
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(args.out, trainer.model.eval(), metadata)
    size = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.1f} MB) in {seconds / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

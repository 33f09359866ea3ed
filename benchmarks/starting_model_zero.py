"""The shipped starting model without any fine-tuning: what a user sees before annotating.

Segments the scored planes of each shared set (the splits of ``benchmarks/instances.py``) with
the starting model in ``src/napari_unet/models/`` as it is, and scores them as ``instances.py``
does. Nothing is derived from annotations (there are none), so objects are read with the
product's default rule (relative cores, cut cells joined; ``PostprocessConfig`` defaults
otherwise: no minimum size, no hole filling). RGB planes (GBM40) are averaged to one channel,
the starting model's input. The shipped model saw ISBI 2012, PhC-U373, Usiigaci and GOWT1 in
training, so only GBM40 and Lucchi are data it never saw (``seen`` in each row); the
leave-that-set-out rows of ``instances.py --shots 0 --start starting-model`` score every set.

    python benchmarks/starting_model_zero.py --sets all

Rows go to ``benchmarks/results/starting_model_zero.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import write_json  # noqa: E402
from instances import MEASURE, SETS, STARTING_SETS, data_root, grey, load, score  # noqa: E402

from napari_unet.annotation.derived import CORE_RATIO, JOIN_SHALLOW, JOIN_WIDE  # noqa: E402
from napari_unet.inference.batch import SegmentConfig, segment_stack  # noqa: E402
from napari_unet.inference.postprocess import PostprocessConfig  # noqa: E402
from napari_unet.io.modelfile import load_model  # noqa: E402
from napari_unet.training.starting_model import starting_model_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "starting_model_zero.json"
SEEN = STARTING_SETS  # in the shipped model's training data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="all")
    args = parser.parse_args()
    root, path = data_root(), starting_model_path()
    if root is None or path is None:
        print("shared data or starting model not found; nothing to measure", file=sys.stderr)
        return 0
    model, metadata = load_model(path, device="cpu")
    joins = {"join_wide": JOIN_WIDE, "join_shallow": JOIN_SHALLOW}
    post = PostprocessConfig(method="relative-cores", core_ratio=CORE_RATIO, **joins)
    config = SegmentConfig(postprocess=post)
    names = SETS if args.sets == "all" else tuple(args.sets.split(","))
    rows = []
    for name in names:
        _, _, image, truth = load(root, name, 3)
        image = grey(image)  # RGB planes: one channel, as the starting model takes
        start = time.perf_counter()
        pred = np.asarray(segment_stack(model, metadata, image, config))
        scores = score(name, pred, truth)
        scores.pop("per_plane_ap50")
        row = {"set": name, "seen": name in SEEN, "planes": len(image),
               "predict_s": round(time.perf_counter() - start, 1), **scores}  # fmt: skip
        rows.append(row)
        print(f"{name:9s} {MEASURE[name]}={row[MEASURE[name]]:.3f} SEG={row['seg']:.3f} "
              f"objects {row['objects']:.0f}/{row['ref_objects']:.0f}", flush=True)  # fmt: skip
    write_json(RESULTS, {"date": date.today().isoformat(), "model": path.name,
                         "training_data": metadata.provenance.get("training_data", ""),
                         "command": "python benchmarks/starting_model_zero.py " +
                         " ".join(sys.argv[1:]), "rows": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

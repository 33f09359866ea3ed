"""Speed of re-labelling one plane from cached network output (4 Segment's live controls).

Changing an instance control in 4 Segment re-labels the kept planes from the cached
probabilities, without running the network (``inference/cache.py``). This times that step,
:func:`napari_unet.inference.postprocess.instance_labels`, on a 1024 x 1024 plane of touching
cells with the probabilities of an unsure two-class network (soft, patchy inside cells, faint at
the membranes), for each way of reading it: the default (relative cores, cut cells joined
where contacts are wide and shallow), relative cores without joining, the paper's fixed cores
and necks. Median and worst of
``--repeats`` runs after one warm-up.

    python benchmarks/relabel_speed.py                 # 1024 x 1024, 600 cells
    python benchmarks/relabel_speed.py --size 512 --cells 150

Writes benchmarks/results/relabel_speed.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name, write_json  # noqa: E402
from weightmap_speed import make_instances  # noqa: E402

from napari_unet.annotation.derived import CORE_RATIO, JOIN_SHALLOW, JOIN_WIDE  # noqa: E402
from napari_unet.annotation.weightmap import separate_touching  # noqa: E402
from napari_unet.inference.postprocess import PostprocessConfig, instance_labels  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "relabel_speed.json"


def unsure_network(cells: np.ndarray, seed: int = 0) -> np.ndarray:
    """Two-class probabilities of an unsure network: log-odds growing with the depth inside
    each cell, patchy noise, faint (log-odds about 0) at the learned gaps."""
    rng = np.random.default_rng(seed)
    foreground = separate_touching(cells) > 0
    depth = np.minimum(ndimage.distance_transform_edt(foreground), 8.0)
    patches = ndimage.gaussian_filter(rng.normal(0, 1.5, cells.shape), 3) * 3
    logits = np.where(foreground, 0.4 * depth + patches, -2.0)
    logits = np.where((cells > 0) & ~foreground, 0.2, logits)
    fg = 1 / (1 + np.exp(-logits))
    return np.stack([1 - fg, fg]).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cells", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cells = make_instances(args.size, args.cells)
    probs = unsure_network(cells)
    semantic = probs.argmax(0)
    readings = {
        "default (relative cores, cut cells joined)": PostprocessConfig(
            method="relative-cores",
            core_ratio=CORE_RATIO,
            join_wide=JOIN_WIDE,
            join_shallow=JOIN_SHALLOW,
            min_size=20,
        ),
        "relative cores, no joining": PostprocessConfig(
            method="relative-cores", core_ratio=CORE_RATIO, min_size=20
        ),
        "cores at 0.98": PostprocessConfig(method="cores", min_size=20),
        "necks": PostprocessConfig(method="necks", object_diameter=30.0, min_size=20),
    }
    rows = []
    for name, config in readings.items():
        instance_labels(semantic, config, probabilities=probs)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            labels = instance_labels(semantic, config, probabilities=probs)
            times.append(time.perf_counter() - start)
        rows.append({"reading": name, "median_s": float(np.median(times)),
                     "worst_s": float(np.max(times)), "objects": int(labels.max())})  # fmt: skip
        row = rows[-1]
        print(f"{name:50s} median {row['median_s']:.3f} s, worst {row['worst_s']:.3f} s, "
              f"{row['objects']} objects ({args.cells} cells)")  # fmt: skip
    write_json(args.out, {
        "date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {cpu_name()}, "
        f"{os.cpu_count()} cores, CPU", "load_average_1min": os.getloadavg()[0],
        "command": "python benchmarks/relabel_speed.py " + " ".join(sys.argv[1:]),
        "size": args.size, "cells": args.cells, "repeats": args.repeats, "rows": rows,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

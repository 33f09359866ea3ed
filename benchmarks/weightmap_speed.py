"""Speed of the local weight map against the naive one (one full-image EDT per instance).

    python benchmarks/weightmap_speed.py            # 2048 x 2048, 2000 touching instances
    python benchmarks/weightmap_speed.py --quick    # 512 x 512, 150 instances

Prints a small table and writes benchmarks/results/weightmap_speed.json (or the --out path).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from skimage.segmentation import expand_labels

from napari_unet.annotation.weightmap import (
    WeightMapConfig,
    separate_touching,
    weight_map,
    weight_map_reference,
)

RESULTS = Path(__file__).resolve().parent / "results" / "weightmap_speed.json"


def make_instances(size: int, n_instances: int, seed: int = 0) -> np.ndarray:
    """Random distinct seeds grown by ``expand_labels``: a dense, mostly touching cell carpet."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(size * size, dtype=np.int32)
    labels[rng.choice(size * size, n_instances, replace=False)] = np.arange(1, n_instances + 1)
    spacing = np.sqrt(size * size / n_instances)  # mean distance between seeds
    return expand_labels(labels.reshape(size, size), distance=0.6 * spacing)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 x 512 with 150 instances")
    parser.add_argument("--variant", choices=["paper", "falk"], default="paper")
    parser.add_argument("--repeats", type=int, default=3, help="weight_map runs (best is kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    size, n_instances = (512, 150) if args.quick else (2048, 2000)
    labels = make_instances(size, n_instances)
    config = WeightMapConfig(variant=args.variant)
    touching = int((labels != 0).sum() - (separate_touching(labels) != 0).sum())

    fast_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fast = weight_map(labels, config)
        fast_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    ref = weight_map_reference(labels, config)
    ref_time = time.perf_counter() - start

    best = min(fast_times)
    ratio = ref_time / best
    max_abs_diff = float(np.abs(fast.astype(np.float64) - ref).max())
    print(f"speed-up: {ratio:.1f}x  (weight_map {best:.3f} s vs reference {ref_time:.1f} s)")
    print(
        f"{'image':>12} {'instances':>9} {'variant':>7} {'weight_map s':>12} "
        f"{'reference s':>11} {'ratio':>7} {'max|diff|':>9}"
    )
    print(
        f"{size:>5} x {size:<4} {len(np.unique(labels)) - 1:>9} {args.variant:>7} {best:>12.3f} "
        f"{ref_time:>11.1f} {ratio:>7.1f} {max_abs_diff:>9.2e}"
    )

    result = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "numpy": np.__version__,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "image_shape": [size, size],
        "n_instances": int(len(np.unique(labels)) - 1),
        "gap_pixels": touching,
        "variant": args.variant,
        "timings_s": {
            "weight_map_best": best,
            "weight_map_all": fast_times,
            "weight_map_reference": ref_time,
        },
        "ratio": ratio,
        "max_abs_diff": max_abs_diff,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

"""The peer in the instances table: cellpose trained from scratch on the same planes.

cellpose (a 3.x release from PyPI) learns flows to the object centres; here it starts from
random weights (nothing can be downloaded) and trains on the same annotated planes as
``benchmarks/instances.py`` for the same CPU time as our run of that set and seed (the process
CPU seconds of our training, i.e. wall time x 2 threads on this 2-core machine; when that row
is missing, ``--cpu-seconds``). It segments the same scored planes at the median diameter of
the annotated objects and is scored by the same ``score()``. Skipped (exit 0) when cellpose is
not installed: it is an optional contender, not a dependency.

    python -m venv /work/cpvenv && /work/cpvenv/bin/pip install torch==2.13.0 "cellpose>=3.1,<4"
    /work/cpvenv/bin/pip install -e . --no-deps && /work/cpvenv/bin/pip install \
        scikit-image tifffile safetensors platformdirs "dask[array]" zarr psutil
    /work/cpvenv/bin/python benchmarks/cellpose_peer.py --sets gowt1,gbm40 --seeds 0 --steps 400

Rows go to ``benchmarks/results/cellpose_peer.json`` (same fields as instances.json, ``targets =
"cellpose"``; a separate file so the two benchmarks can run at once).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from instances import MEASURE, RESULTS, SETS, data_root, load, score  # noqa: E402

from napari_unet.metrics import instances_from_binary  # noqa: E402

PEER_RESULTS = RESULTS.parent / "cellpose_peer.json"


def save(row: dict) -> None:
    key = ("set", "shots", "seed", "steps")
    rows = json.loads(PEER_RESULTS.read_text()) if PEER_RESULTS.exists() else []
    rows = [r for r in rows if [r[k] for k in key] != [row[k] for k in key]] + [row]
    PEER_RESULTS.write_text(json.dumps(rows, indent=1))


def _budget(name: str, shots: int, seed: int, steps: int, fallback: float) -> float:
    """CPU seconds of our paper run of the same set, planes, seed and steps: its process CPU
    time where recorded, else its wall time x 2 threads (more than it used on a loaded
    machine, so the peer then gets more than we had)."""
    if RESULTS.exists():
        for row in json.loads(RESULTS.read_text())["rows"]:
            key = (row["set"], row["shots"], row["targets"], row["seed"], row["steps"])
            if key == (name, shots, "paper", seed, steps):
                return float(row.get("cpu_s") or 2.0 * float(row["train_s"]))
    return fallback


def run(root: Path, name: str, shots: int, seed: int, steps: int, fallback: float) -> dict:
    import torch
    from cellpose import dynamics, models, train, utils

    train_img, train_lab, test_img, truth = load(root, name, shots)
    if name == "isbi":
        train_lab = np.stack([instances_from_binary(p > 0) for p in train_lab])
    rgb = train_img.ndim == 4
    kwargs = {"channels": [0, 0], "channel_axis": -1 if rgb else None}
    images, labels = list(train_img), [lab.astype(np.int32) for lab in train_lab]
    diameter = float(np.median([utils.diameters(lab)[0] for lab in labels]))
    # flows once, outside the budget (as our weight maps are computed before training)
    flows = dynamics.labels_to_flows(labels, device=torch.device("cpu"))
    budget = _budget(name, shots, seed, steps, fallback)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None)
    scratch = tempfile.mkdtemp(prefix="cellpose-peer-")  # train_seg always writes its weights
    common = {"batch_size": 8, "nimg_per_epoch": 8, "min_train_masks": 1, "save_path": scratch}
    # cost of one epoch (8 tiles) without train_seg's fixed start-up: 6 epochs minus 3, each on
    # a throwaway copy; then one run for the budget
    cost = []
    for n in (3, 6):
        probe = copy.deepcopy(model.net)
        start = time.process_time()
        train.train_seg(probe, images, flows, n_epochs=n, **common, **kwargs)
        cost.append(time.process_time() - start)
    per_epoch = max((cost[1] - cost[0]) / 3, 1e-3)
    fixed = max(cost[0] - 3 * per_epoch, 0.0)
    epochs = max(1, int((budget - fixed) / per_epoch))
    start, wall = time.process_time(), time.perf_counter()
    train.train_seg(model.net, images, flows, n_epochs=epochs, **common, **kwargs)
    cpu_s, train_s = time.process_time() - start, time.perf_counter() - wall
    shutil.rmtree(scratch, ignore_errors=True)
    pred = np.stack([
        model.eval(img, diameter=diameter, **kwargs)[0].astype(np.int32) for img in test_img
    ])  # fmt: skip
    return {
        "set": name, "shots": shots, "targets": "cellpose", "seed": seed, "steps": steps,
        "train_s": round(train_s, 1), "cpu_s": round(cpu_s, 1), "budget_cpu_s": round(budget),
        "epochs": epochs, "diameter": round(diameter, 1), **score(name, pred, truth),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="all")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=2000, help="the steps of our run to match")
    parser.add_argument("--cpu-seconds", type=float, default=600.0, help="budget without a row")
    args = parser.parse_args()
    try:
        import cellpose  # noqa: F401
    except ImportError:
        print("cellpose is not installed: the peer is skipped", file=sys.stderr)
        return 0
    root = data_root()
    if root is None:
        print("shared data not found (set NAPARI_UNET_DATA); nothing to measure", file=sys.stderr)
        return 0
    sets = SETS if args.sets == "all" else tuple(args.sets.split(","))
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in sets:
            row = run(root, name, args.shots, seed, args.steps, args.cpu_seconds)
            save(row)
            print(f"{name} seed {seed}: {MEASURE[name]} = {row[MEASURE[name]]:.3f}, "
                  f"{row['objects']:.0f}/{row['ref_objects']:.0f} objects, "
                  f"{row['epochs']} epochs, {row['cpu_s']:.0f} CPU-s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

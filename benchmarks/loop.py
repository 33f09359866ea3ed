"""Human in the loop, simulated: does "annotate next" beat adding planes in order or at random?

A simulated annotator "corrects" a plane by replacing it with its ground truth. Every strategy
starts from the same model, trained with the product's defaults (``TrainingRecipe()``) on one
annotated plane of a pool. Each round adds one plane of the pool -- the one the tool suggests
(:func:`napari_unet.inference.suggest.rank_planes`, least sure first), the next one in order, or a
random
one (several seeds) -- continues training from the current model with the short default budget
(``defaults.default_steps(continuing=True)``, what ``train --init`` and the Train widget's
"continue" do), and scores the model on held-out planes. Sets:

* ``synthetic``: a pool of 12 fluorescence-like planes (256²) whose cell size, density, blur and
  noise vary from plane to plane (``sample_data.random_modality_config``), 6 held-out planes
  drawn the same way; SEG.
* ``phc``: PhC-U373 -- pool: the 15 annotated frames of sequence 01; held out: the 19 of
  sequence 02; SEG.
* ``isbi``: ISBI 2012 -- pool: slices 0-19 (a 20-plane 512² stack); held out: 20-29; adapted
  Rand error (lower is better).

It also measures which uncertainty measure predicts a plane's error best: after the first
training, the Spearman correlation over the pool's unannotated planes between each measure and
the plane's error (1 - SEG, or the adapted Rand error) of the TTA segmentation.

Results: ``benchmarks/results/loop.json`` and ``docs/images/loop.png``; docs/benchmarks.md,
"Human in the loop", states them. Real data are read from ``../shared/data`` (or
``$NAPARI_UNET_DATA``); sets whose data are absent are skipped.

    python benchmarks/loop.py                      # all sets, ~1.5 h on a 2-core CPU
    python benchmarks/loop.py --sets synthetic --rounds 2 --random-seeds 1 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np
import tifffile
from scipy.stats import spearmanr

from napari_unet.defaults import default_steps
from napari_unet.inference.batch import SegmentConfig, segment_stack
from napari_unet.inference.predictor import PredictConfig
from napari_unet.inference.suggest import DEFAULT_MEASURE, MEASURES, SuggestConfig, rank_planes
from napari_unet.io.modelfile import load_model
from napari_unet.metrics import adapted_rand_error, instances_from_binary, seg_score_planes
from napari_unet.sample_data import make_cells, random_modality_config
from napari_unet.training.recipe import TrainingRecipe, prepare_run
from napari_unet.training.starting_model import starting_model_path
from napari_unet.training.trainer import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "loop.json"
PLOT = ROOT / "docs" / "images" / "loop.png"
CACHE = ROOT / "benchmarks" / "models"  # first models of each set (not committed)


@dataclass
class LoopSet:
    """A pool to annotate from, held-out planes to score on, and the score."""

    name: str
    pool_images: np.ndarray
    pool_truth: np.ndarray  # instance labels (scoring)
    pool_labels: np.ndarray  # what the annotator paints (training)
    test_images: np.ndarray
    test_truth: np.ndarray
    score_name: str
    higher_is_better: bool

    def score(self, pred: np.ndarray, truth: np.ndarray) -> float:
        if self.score_name == "seg":
            return seg_score_planes(pred, truth)
        return float(np.mean([adapted_rand_error(p, t) for p, t in zip(pred, truth, strict=True)]))

    def plane_error(self, pred: np.ndarray, truth: np.ndarray) -> float:
        """Error of one plane (higher = worse) for the measure-vs-error correlation."""
        value = self.score(pred[None], truth[None])
        return 1.0 - value if self.higher_is_better else value


def data_root() -> Path | None:
    for cand in (os.environ.get("NAPARI_UNET_DATA"), ROOT.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def synthetic_set(quick: bool) -> LoopSet:
    rng = np.random.default_rng(2026)
    size = (128, 128) if quick else (256, 256)
    planes = [make_cells(random_modality_config(rng, size, "fluorescence"), seed=100 + i)
              for i in range(6 if quick else 18)]  # fmt: skip
    images = np.stack([p[0] for p in planes])
    truth = np.stack([p[1] for p in planes]).astype(np.int32)
    pool = len(planes) * 2 // 3
    return LoopSet("synthetic", images[:pool], truth[:pool], truth[:pool], images[pool:],
                   truth[pool:], "seg", True)  # fmt: skip


def phc_set(root: Path) -> LoopSet:
    def load(seq: str):
        frames = sorted((root / "phc-u373" / f"{seq}_GT" / "SEG").glob("man_seg*.tif"))
        index = [int(f.stem[7:]) for f in frames]
        images = [tifffile.imread(root / "phc-u373" / seq / f"t{i:03d}.tif") for i in index]
        return np.stack(images), np.stack([tifffile.imread(f) for f in frames]).astype(np.int32)

    pool_images, pool_truth = load("01")
    test_images, test_truth = load("02")
    return LoopSet("phc-u373", pool_images, pool_truth, pool_truth, test_images, test_truth,
                   "seg", True)  # fmt: skip


def isbi_set(root: Path) -> LoopSet:
    volume = tifffile.imread(root / "isbi2012" / "train-volume.tif")
    cells = (tifffile.imread(root / "isbi2012" / "train-labels.tif") > 0).astype(np.uint8)
    truth = np.stack([instances_from_binary(plane) for plane in cells])
    return LoopSet("isbi2012", volume[:20], truth[:20], cells[:20], volume[20:], truth[20:],
                   "rand_error", False)  # fmt: skip


def train_round(loop: LoopSet, annotated: list[int], init: Path | None, steps: int | None,
                device: str, out: Path):  # fmt: skip
    """Train (init None: a new model with the defaults) on the annotated pool planes."""
    labels = np.zeros_like(loop.pool_labels)
    for z in annotated:
        labels[z] = loop.pool_labels[z]
    training = TrainConfig(seed=0, device=device)
    if steps is not None:
        training = replace(training, steps=steps)
    recipe = TrainingRecipe(training=training, init=init)
    start = time.perf_counter()
    trainer = prepare_run(loop.pool_images, labels, recipe)
    for _ in trainer.run():
        pass
    seconds = time.perf_counter() - start
    trainer.save_model(out)
    return trainer, seconds


def test_score(loop: LoopSet, fitted) -> tuple[float, float]:
    """Score on the held-out planes of a (model, metadata) pair, and seconds taken."""
    model, metadata = fitted
    config = SegmentConfig(predict=PredictConfig(device=str(next(model.parameters()).device)))
    start = time.perf_counter()
    pred = segment_stack(model, metadata, loop.test_images, config)
    return loop.score(pred, loop.test_truth), time.perf_counter() - start


def rank(loop: LoopSet, fitted, annotated: list[int], measure: str):
    """Ranking of the unannotated pool planes, their TTA labels and seconds taken."""
    model, metadata = fitted
    device = str(next(model.parameters()).device)
    config = SuggestConfig(
        measure=measure, segment=SegmentConfig(predict=PredictConfig(device=device))
    )
    labels: dict[int, np.ndarray] = {}
    start = time.perf_counter()

    def keep_labels(index, result) -> None:
        labels[index[0]] = result.labels

    ranking = rank_planes(model, metadata, loop.pool_images, config,
                          exclude=[(z,) for z in annotated], on_plane=keep_labels)  # fmt: skip
    return ranking, labels, time.perf_counter() - start


def measure_correlations(loop: LoopSet, ranking, labels) -> dict[str, float]:
    """Spearman correlation of each measure with the plane's error over the ranked planes."""
    errors = [loop.plane_error(labels[s.index[0]], loop.pool_truth[s.index[0]]) for s in ranking]
    out = {}
    for name in MEASURES:
        values = [s.scores[name] for s in ranking]
        rho = spearmanr(values, errors).statistic if len(set(values)) > 1 else float("nan")
        out[name] = round(float(rho), 3)
    return out


def run_set(loop: LoopSet, args, work: Path) -> dict:
    print(f"[{loop.name}] pool {loop.pool_images.shape}, held out {loop.test_images.shape}",
          file=sys.stderr, flush=True)  # fmt: skip
    # the first model is the same for every strategy and measure: kept between runs
    steps_tag = args.first_steps or "default"
    first = CACHE / f"loop-{loop.name}-{'quick-' if args.quick else ''}{steps_tag}.safetensors"
    if not first.exists():
        train_round(loop, [0], None, args.first_steps, args.device, first)
    fitted = load_model(first, device=args.device)
    seconds = float(fitted[1].provenance.get("train_seconds", 0.0))
    start_note = f"fine-tuned from {fitted[1].provenance.get('parent_model') or 'random weights'}"
    score, _ = test_score(loop, fitted)
    ranking, labels, _ = rank(loop, fitted, [0], args.measure)
    correlations = measure_correlations(loop, ranking, labels)
    print(f"[{loop.name}] round 0: {loop.score_name} {score:.3f} ({seconds:.0f} s); "
          f"measure-error correlation {correlations}", file=sys.stderr, flush=True)  # fmt: skip
    result = {"set": loop.name, "score_name": loop.score_name,
              "higher_is_better": loop.higher_is_better, "pool": len(loop.pool_images),
              "first": {"score": score, "train_s": round(seconds, 1), "start": start_note},
              "correlations": correlations, "measure": args.measure, "strategies": {}}  # fmt: skip
    strategies = [("suggested", None), ("in order", None)]
    strategies += [(f"random (seed {s})", s) for s in args.random_seeds]
    strategies = [(n, s) for n, s in strategies if n.split()[0] in args.strategies]
    continue_steps = args.continue_steps or default_steps(True)
    for name, seed in strategies:
        annotated, model, first_ranking = [0], first, ranking
        order = [z for z in range(1, len(loop.pool_images))]
        if seed is not None:
            order = list(np.random.default_rng(seed).permutation(order))
        points = [{"planes": 1, "score": score, "train_s": round(seconds, 1), "round_s": None}]
        total_train = seconds
        for r in range(1, args.rounds + 1):
            if name == "suggested":
                pick = first_ranking[0].index[0]
            else:
                pick = next(int(z) for z in order if z not in annotated)
            annotated.append(int(pick))
            out = work / f"{loop.name}-{name.split()[0]}-{seed}-{r}.safetensors"
            trainer, train_s = train_round(loop, annotated, model, continue_steps, args.device, out)
            model, total_train = out, total_train + train_s
            fitted = (trainer.model, trainer.metadata())
            value, _ = test_score(loop, fitted)
            round_s = train_s
            if name == "suggested" and r < args.rounds:
                # the round as a user lives it: continue training, then re-segment and re-rank
                first_ranking, _, rank_s = rank(loop, fitted, annotated, args.measure)
                round_s += rank_s
            points.append({"planes": len(annotated), "plane": int(pick), "score": value,
                           "train_s": round(total_train, 1),
                           "round_s": round(round_s, 1)})  # fmt: skip
            print(f"[{loop.name}] {name}: +plane {pick} → {len(annotated)} planes, "
                  f"{loop.score_name} {value:.3f}; round {round_s:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
        result["strategies"][name] = points
    return result


def plot(results: list[dict]) -> None:
    """Score against annotated planes (top) and against training time (bottom), per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 6.5), squeeze=False)
    for column, result in enumerate(results):
        for name, points in result["strategies"].items():
            style = "-o" if name.startswith("suggested") else "--s" if name == "in order" else ":^"
            x = [p["planes"] for p in points]
            y = [p["score"] for p in points]
            axes[0, column].plot(x, y, style, label=name)
            axes[1, column].plot([p["train_s"] / 60 for p in points], y, style, label=name)
        axes[0, column].set_title(result["set"])
        axes[0, column].set_xlabel("annotated planes")
        axes[1, column].set_xlabel("total training time (min, CPU)")
        for row in (0, 1):
            axes[row, column].set_ylabel(
                result["score_name"] + (" ↑" if result["higher_is_better"] else " ↓")
            )
        axes[0, column].legend(fontsize=7)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def time_round(args) -> dict:
    """One loop round as a user lives it, timed alone: continue training for the default budget
    on 2 annotated planes of a 20-plane 512² stack (ISBI 2012 slices 0-19; synthetic planes
    when the data are absent), segment all 20 planes, rank the 18 others. The shipped starting
    model stands in for the user's current model (the time does not depend on its weights)."""
    root = data_root()
    if root is not None:
        images = tifffile.imread(root / "isbi2012" / "train-volume.tif")[:20]
        cells = (tifffile.imread(root / "isbi2012" / "train-labels.tif")[:20] > 0).astype(np.uint8)
        source = "ISBI 2012 slices 0-19"
    else:
        rng = np.random.default_rng(0)
        planes = [make_cells(random_modality_config(rng, (512, 512), "fluorescence"), seed=i)
                  for i in range(20)]  # fmt: skip
        images, cells = np.stack([p[0] for p in planes]), np.stack([p[1] for p in planes])
        source = "20 synthetic 512² planes"
    labels = np.zeros_like(cells)
    labels[:2] = cells[:2]
    steps = default_steps(True)
    recipe = TrainingRecipe(training=TrainConfig(steps=steps, seed=0, device=args.device),
                            init=starting_model_path())  # fmt: skip
    start = time.perf_counter()
    trainer = prepare_run(images, labels, recipe)
    for _ in trainer.run():
        pass
    train_s = time.perf_counter() - start
    config = SegmentConfig(predict=PredictConfig(device=str(trainer.device)))
    start = time.perf_counter()
    segment_stack(trainer.model, trainer.metadata(), images, config)
    segment_s = time.perf_counter() - start
    start = time.perf_counter()
    rank_planes(trainer.model, trainer.metadata(), images, SuggestConfig(segment=config),
                exclude=[(0,), (1,)])  # fmt: skip
    rank_s = time.perf_counter() - start
    result = {"stack": source, "steps": steps, "train_s": round(train_s, 1),
              "segment_s": round(segment_s, 1), "rank_s": round(rank_s, 1),
              "round_s": round(train_s + segment_s + rank_s, 1)}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="synthetic,phc,isbi")
    parser.add_argument("--rounds", type=int, default=4, help="planes added (default: 4, to 5)")
    parser.add_argument("--random-seeds", default="1,2")
    parser.add_argument("--measure", default=DEFAULT_MEASURE, choices=MEASURES)
    parser.add_argument(
        "--first-steps", type=int, help="steps of the first model (default: the product's)"
    )
    parser.add_argument(
        "--continue-steps", type=int, help="steps per round (default: the product's)"
    )
    parser.add_argument("--strategies", default="suggested,in,random",
                        help="which to run: suggested, in (order), random")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic images (a smoke run)")
    parser.add_argument("--merge", action="store_true", help="keep other sets' earlier results")
    parser.add_argument("--time-round", action="store_true",
                        help="only time one round on a 20-plane 512² stack")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    parser.add_argument("--table", type=Path, nargs="*",
                        help="print the tables of these files, redraw the plot, stop")  # fmt: skip
    args = parser.parse_args()
    if args.table is not None:
        paths = args.table or [RESULTS]
        print(markdown(paths))
        plot(list(merged(paths).values()))
        return 0
    if args.time_round:
        result = time_round(args)
        path = RESULTS.with_name("loop_round.json")
        path.write_text(json.dumps({"meta": meta_of(), "result": result}, indent=1))
        return 0
    args.random_seeds = [int(s) for s in args.random_seeds.split(",") if s]
    args.strategies = args.strategies.split(",")
    root = data_root()
    makers = {"synthetic": lambda: synthetic_set(args.quick),
              "phc": lambda: phc_set(root), "isbi": lambda: isbi_set(root)}  # fmt: skip
    results = []
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="napari-unet-loop-") as work:
        for name in [s for s in args.sets.split(",") if s]:
            if name != "synthetic" and root is None:
                print(f"[{name}] skipped: no shared data", file=sys.stderr)
                continue
            results.append(run_set(makers[name](), args, Path(work)))
            save(results, args)
    if args.out == RESULTS:
        plot(results if not args.merge else json.loads(RESULTS.read_text())["results"])
    return 0


def meta_of() -> dict:
    import torch

    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
    return {"date": str(date.today()), "machine": machine, "command": " ".join(sys.argv)}


def save(results: list[dict], args) -> None:
    if args.merge and args.out.exists():
        earlier = [r for r in json.loads(args.out.read_text())["results"]
                   if r["set"] not in {x["set"] for x in results}]  # fmt: skip
        results = earlier + results
    meta = meta_of()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))


def merged(paths: list[Path]) -> dict[str, dict]:
    """The sets of several result files; a later file adds its strategies to a set, and the
    suggested strategy is named by its measure (e.g. ``suggested (entropy)``)."""
    sets: dict[str, dict] = {}
    for path in paths:
        data = json.loads(path.read_text())
        words = data["meta"]["command"].split()
        given = words[words.index("--measure") + 1] if "--measure" in words else "disagreement"
        for result in data["results"]:
            entry = sets.setdefault(result["set"], {**result, "strategies": {}})
            measure = result.get("measure", given)
            for name, points in result["strategies"].items():
                label = f"suggested ({measure})" if name == "suggested" else name
                entry["strategies"][label] = points
    return sets


def markdown(paths: list[Path]) -> str:
    """Tables for docs/benchmarks.md from result files (see :func:`merged`)."""
    sets = merged(paths)
    lines = ["| set (score) | strategy | 1 plane | 2 | 3 | 4 | 5 | planes added |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    verdicts = []
    for name, entry in sets.items():
        arrow = "↑" if entry["higher_is_better"] else "↓"
        better = (lambda a, b: a >= b) if entry["higher_is_better"] else (lambda a, b: a <= b)
        randoms = [p for k, p in entry["strategies"].items() if k.startswith("random")]
        for label, points in entry["strategies"].items():
            cells = [f"{p['score']:.3f}" for p in points] + [""] * (5 - len(points))
            added = ", ".join(str(p["plane"]) for p in points[1:])
            lines.append(f"| {name} ({entry['score_name']} {arrow}) | {label} | "
                         + " | ".join(cells) + f" | {added} |")  # fmt: skip
        if randoms and all(len(p) >= 5 for p in randoms):
            target = float(np.mean([p[4]["score"] for p in randoms]))
            for label, points in entry["strategies"].items():
                if label.startswith("suggested"):
                    reach = next((p["planes"] for p in points if better(p["score"], target)), None)
                    verdicts.append(f"| {name} | {target:.3f} | {label} | "
                                    f"{reach if reach else 'not within 5'} |")  # fmt: skip
    out = "\n".join(lines)
    if verdicts:
        out += ("\n\n| set | random, 5 planes (mean of seeds) | strategy | planes to reach it |\n"
                "|---|---|---|---|\n" + "\n".join(verdicts))  # fmt: skip
    corr = ["| set | " + " | ".join(MEASURES) + " |", "|---|" + "---|" * len(MEASURES)]
    for name, entry in sets.items():
        corr.append(
            f"| {name} | " + " | ".join(f"{entry['correlations'][m]:+.2f}" for m in MEASURES) + " |"
        )
    return (
        out
        + "\n\nSpearman correlation after the first model, each measure against the plane's"
        + " error:\n\n"
        + "\n".join(corr)
    )


if __name__ == "__main__":
    sys.exit(main())

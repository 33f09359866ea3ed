"""Screen ways of forming instances on stored network outputs, without training again.

``benchmarks/instances.py`` keeps, per run, the network output (float16) of the scored planes
and of the annotated planes in ``benchmarks/results/instances-predictions/*-probs.npz``. This
script re-labels them with each candidate and scores it as ``instances.py`` does, so a
candidate is judged on every set and seed at once, side by side with the default.

Candidates (each reads only the probabilities, the model file's derived settings and, for the
calibrated ones, the annotated planes the network trained on):

* ``cores@T``: the paper network's confident cores (smoothed p > T) seed a watershed.
* ``dips@H``: seeds are the maxima of the smoothed foreground probability that rise at least H
  above the saddle to any higher maximum (h-maxima, ``skimage.morphology.h_maxima``): a
  less confident network lowers all values, not the depth of the dip at a membrane.
* ``necks@F``: seeds are the h-maxima of the distance transform of the foreground, with
  H = F x the annotated objects' radius: parts objects at narrow necks; needs no probability.
* ``calibrated``: ``cores`` with the threshold that scores best (AP@0.5) on the annotated
  planes themselves, chosen per model (StarDist's ``optimize_thresholds`` idea).
* ``default``: the product's reading (relative cores, wide contacts joined); ``unjoined``: the
  same without joining (the default before); ``merge@M``: relative cores, parts joined where
  they touch along at least M x the smaller one's width; ``shallow@D``: parts joined where the
  log-odds along their contact stay above D x their cores' level; ``joined+shallow@D``: only
  where both hold (M = the default's width; ``joined0.8+shallow@D``: M = 0.8). Contact lengths
  are Euclidean (``postprocess.contacts``); rows scored before that (counted faces) were
  replaced.
  ``-T3``: the same on a tempered copy of the network (a third of its confidence).
* ``interiors`` (three-class models): connected interiors seed the object (the product's
  option); ``interiors-dips@H``: interiors split further at dips of the interior probability.

    python benchmarks/instance_methods.py                 # every stored run
    python benchmarks/instance_methods.py --sets isbi --steps 400
Results: ``benchmarks/results/instance_methods.json`` (one row per run and candidate, with the
time stamp of the stored outputs it read: when ``instances.py`` reruns a run, its rows are
scored again).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import area_opening, h_maxima, local_maxima
from skimage.segmentation import relabel_sequential, watershed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from instances import MEASURE, PREDICTIONS, data_root, load, score  # noqa: E402

from napari_unet.annotation.derived import (  # noqa: E402
    CORE_RATIO,
    JOIN_SHALLOW,
    JOIN_WIDE,
    postprocess_config,
)
from napari_unet.inference.postprocess import (  # noqa: E402
    PostprocessConfig,
    close_gaps,
    instance_labels,
    semantic_labels,
    split_at_relative_cores,
)
from napari_unet.io.modelfile import ModelMetadata  # noqa: E402
from napari_unet.metrics import instances_from_binary, matching  # noqa: E402

OUT = PREDICTIONS.parent / "instance_methods.json"


def _finish(labels: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    labels = close_gaps(labels, cfg.close_gaps)
    if cfg.min_size > 1:
        small = np.bincount(labels.ravel()) < cfg.min_size
        small[0] = False
        labels[small[labels]] = 0
    return relabel_sequential(labels)[0]


def _foreground(probs: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    fg = np.isin(semantic_labels(probs), cfg.foreground_classes)
    return ndimage.binary_fill_holes(fg) if cfg.fill_holes else fg


def _grow(fg: np.ndarray, seeds: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """Watershed of -surface from ``seeds`` through ``fg``; a region without seed is one object."""
    markers, n = ndimage.label(seeds & fg)
    regions, _ = ndimage.label(fg)
    seeded = np.zeros(regions.max() + 1, bool)
    seeded[regions[markers > 0]] = True
    lonely = fg & ~seeded[regions]
    markers = markers.astype(np.int64)
    markers[lonely] = n + regions[lonely]
    return watershed(-surface, markers, mask=fg)


def dips(probs: np.ndarray, cfg: PostprocessConfig, h: float, fg_classes=None) -> np.ndarray:
    classes = list(fg_classes or cfg.foreground_classes)
    fg = _foreground(probs, cfg)
    smooth = ndimage.gaussian_filter(probs[classes].sum(0).astype(np.float32), 1.0)
    levels = np.round(smooth * 1000).astype(np.int32)
    seeds = h_maxima(levels, max(1, int(round(h * 1000)))) > 0
    return _finish(_grow(fg, seeds, smooth), cfg)


def necks(probs: np.ndarray, cfg: PostprocessConfig, frac: float, diameter: float) -> np.ndarray:
    cfg = replace(cfg, method="necks", neck_depth=frac, object_diameter=diameter)
    return instance_labels(semantic_labels(probs), cfg, probabilities=probs)


def cores(probs: np.ndarray, cfg: PostprocessConfig, threshold: float) -> np.ndarray:
    cfg = replace(cfg, method="cores", seed_threshold=threshold)
    return instance_labels(semantic_labels(probs), cfg, probabilities=probs)


def interiors_dips(probs: np.ndarray, cfg: PostprocessConfig, h: float) -> np.ndarray:
    """Interiors whose probability dips by more than h between two maxima are two seeds."""
    fg = _foreground(probs, cfg)
    smooth = ndimage.gaussian_filter(probs[cfg.interior_class].astype(np.float32), 1.0)
    interior = semantic_labels(probs) == cfg.interior_class
    levels = np.round(smooth * 1000).astype(np.int32)
    peaks = (h_maxima(levels, max(1, int(round(h * 1000)))) > 0) & interior
    # each connected interior keeps at least one seed (its peaks, or itself)
    regions, n = ndimage.label(interior)
    has = np.zeros(n + 1, bool)
    has[regions[peaks]] = True
    seeds = peaks | (interior & ~has[regions])
    return _finish(_grow(fg, seeds, smooth), replace(cfg, close_gaps=0))


def interior_necks(probs: np.ndarray, cfg: PostprocessConfig, frac: float, diameter: float):
    """Interiors split where they narrow: h-maxima of the interiors' distance transform seed a
    watershed over the interior probability through the foreground."""
    fg = _foreground(probs, cfg)
    interior = (semantic_labels(probs) == cfg.interior_class) & fg
    dist = ndimage.distance_transform_edt(interior)
    h = max(1.0, frac * diameter / 2)
    seeds = (h_maxima(np.round(dist * 10).astype(np.int32), int(round(h * 10))) > 0) & interior
    regions, n = ndimage.label(interior)
    has = np.zeros(n + 1, bool)
    has[regions[seeds]] = True
    seeds |= interior & ~has[regions]
    smooth = ndimage.gaussian_filter(probs[cfg.interior_class].astype(np.float32), 1.0)
    return _finish(
        _grow(fg, seeds, smooth + dist / max(dist.max(), 1.0)), replace(cfg, close_gaps=0)
    )


def area_peaks(probs, cfg: PostprocessConfig, frac: float, diameter: float, fg_classes=None):
    """Seeds are the maxima of the smoothed foreground log-odds that stay separate over an
    area of at least ``frac`` x the typical object area (area opening, a max-tree filter):
    any monotone change of the network's confidence keeps the same seeds."""
    classes = list(fg_classes or cfg.foreground_classes)
    fg = _foreground(probs, cfg)
    smooth = ndimage.gaussian_filter(probs[classes].sum(0).astype(np.float32), 1.0)
    eps = 1e-6
    logit = np.log(np.clip(smooth, eps, 1 - eps)) - np.log(np.clip(1 - smooth, eps, 1))
    area = max(4, int(frac * np.pi * diameter**2 / 4))
    opened = area_opening(np.where(fg, logit, logit.min() - 1).astype(np.float32), area)
    seeds = local_maxima(opened, connectivity=2) & fg
    return _finish(_grow(fg, seeds, opened), cfg)


def relative_cores(
    probs,
    cfg: PostprocessConfig,
    ratio: float,
    fg_classes=None,
    cap: float | None = None,
    merge: float | None = None,
    shallow: float | None = None,
) -> np.ndarray:
    """Cores relative to each object's own confidence (the product's
    ``split_at_relative_cores``) over the foreground of ``fg_classes``; ``cap`` None: uncapped."""
    if shallow and not merge:  # the valley alone: every contact is wide enough
        merge = 1e-9
    classes = list(fg_classes or cfg.foreground_classes)
    fg = _foreground(probs, cfg)
    components = ndimage.label(fg)[0]
    if not components.any():
        return components
    fg_prob = probs[classes].sum(0)
    parted = split_at_relative_cores(
        components, fg_prob, ratio, cap, min_core=cfg.min_size // 2, wide=merge, shallow=shallow
    )
    return _finish(parted, cfg)


def tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The same network made less (T > 1) or more confident: softmax(log p / T)."""
    logp = np.log(np.clip(probs, 1e-7, 1)) / temperature
    e = np.exp(logp - logp.max(0, keepdims=True))
    return (e / e.sum(0, keepdims=True)).astype(np.float32)


def _truth_train(name: str, labels: np.ndarray) -> np.ndarray:
    if name == "isbi":
        return np.stack([instances_from_binary(p > 0) for p in labels])
    return labels.astype(np.int32)


def _ap50(pred: list[np.ndarray], truth: np.ndarray) -> float:
    ms = [matching(p, t, 0.5) for p, t in zip(pred, truth, strict=True)]
    tp, fp, fn = (sum(m[k] for m in ms) for k in ("tp", "fp", "fn"))
    return tp / max(tp + fp + fn, 1)


AREAS = (0.5,)
MERGES = (0.8, 1.0, 1.2)
SHALLOW = (0.2, 0.3, 0.5)
RELATIVE = (0.5, 0.6, 0.7, 0.8)
NECKS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def candidates(meta: ModelMetadata, train_probs, train_truth, name: str):
    """(name, function of one plane's probabilities) of every candidate for this model."""
    derived = meta.postprocess or {}
    cfg = postprocess_config(derived)
    diameter = float(derived.get("object_diameter") or 20.0)
    # the product's default reading, whatever the file recorded when it was written
    default = postprocess_config(
        {**derived, "method": "relative-cores", "core_ratio": CORE_RATIO, "join_wide": JOIN_WIDE,
         "join_shallow": JOIN_SHALLOW}
    )  # fmt: skip
    unjoined = replace(default, join_wide=0)  # the default before cut cells were joined
    out = [
        ("default", lambda p: instance_labels(semantic_labels(p), default, p)),
        ("unjoined", lambda p: instance_labels(semantic_labels(p), unjoined, p)),
    ]
    for d in SHALLOW:
        out.append((f"shallow@{d}", lambda p, d=d: relative_cores(p, default, CORE_RATIO, cap=0.98,
                                                                 shallow=d)))  # fmt: skip
        out.append((f"joined+shallow@{d}", lambda p, d=d: relative_cores(
            p, default, CORE_RATIO, cap=0.98, merge=JOIN_WIDE, shallow=d)))  # fmt: skip
        out.append((f"joined0.8+shallow@{d}", lambda p, d=d: relative_cores(
            p, default, CORE_RATIO, cap=0.98, merge=0.8, shallow=d)))  # fmt: skip
    out.append(("shallow@0.3-T3", lambda p: relative_cores(
        tempered(p, 3), default, CORE_RATIO, cap=0.98, shallow=0.3)))  # fmt: skip
    for m in MERGES:
        out.append((f"merge@{m}", lambda p, m=m: relative_cores(p, default, CORE_RATIO, cap=0.98,
                                                               merge=m)))  # fmt: skip
    if cfg.method == "interiors":
        out.append(("interiors", lambda p: instance_labels(semantic_labels(p), cfg, p)))
        for h in (0.1, 0.2, 0.3):
            out.append((f"interiors-dips@{h}", lambda p, h=h: interiors_dips(p, cfg, h)))
        for f in NECKS:
            out.append((f"interiors-necks@{f}", lambda p, f=f: necks(p, cfg, f, diameter)))
        for f in (0.2, 0.3, 0.5):
            out.append(
                (f"interiors-inecks@{f}", lambda p, f=f: interior_necks(p, cfg, f, diameter))
            )
        two = replace(cfg, method="cores")
        for f in AREAS:
            out.append(
                (f"interiors-as-fg-area@{f}", lambda p, f=f: area_peaks(p, two, f, diameter))
            )
            out.append(
                (
                    f"interiors-as-fg-area@{f}-T3",
                    lambda p, f=f: area_peaks(tempered(p, 3), two, f, diameter),
                )
            )
        for r in RELATIVE:
            out.append(
                (f"interiors-as-fg-capped@{r}", lambda p, r=r: relative_cores(p, two, r, cap=0.98))
            )
            out.append(
                (
                    f"interiors-as-fg-capped@{r}-T3",
                    lambda p, r=r: relative_cores(tempered(p, 3), two, r, cap=0.98),
                )
            )
            out.append((f"interiors-as-fg-rel@{r}", lambda p, r=r: relative_cores(p, two, r)))
            out.append(
                (
                    f"interiors-as-fg-rel@{r}-T3",
                    lambda p, r=r: relative_cores(tempered(p, 3), two, r),
                )
            )
        out.append(("interiors-as-fg-cores@0.98-T3", lambda p: cores(tempered(p, 3), two, 0.98)))
        for t in (0.9, 0.98):
            out.append((f"interiors-as-fg-cores@{t}", lambda p, t=t: cores(p, two, t)))
        for h in (0.2, 0.5):
            out.append((f"interiors-as-fg-dips@{h}", lambda p, h=h: dips(p, two, h)))
        return out
    for t in (0.9, 0.98):
        out.append((f"cores@{t}", lambda p, t=t: cores(p, cfg, t)))
    out.append(("cores@0.98-T3", lambda p: cores(tempered(p, 3), cfg, 0.98)))
    for r in RELATIVE:
        out.append((f"rel@{r}", lambda p, r=r: relative_cores(p, cfg, r)))
        out.append((f"rel@{r}-T3", lambda p, r=r: relative_cores(tempered(p, 3), cfg, r)))
    for f in AREAS:
        out.append((f"area@{f}", lambda p, f=f: area_peaks(p, cfg, f, diameter)))
        out.append((f"area@{f}-T3", lambda p, f=f: area_peaks(tempered(p, 3), cfg, f, diameter)))
    for h in (0.1, 0.2, 0.3, 0.5):
        out.append((f"dips@{h}", lambda p, h=h: dips(p, cfg, h)))
    for f in NECKS:
        out.append((f"necks@{f}", lambda p, f=f: necks(p, cfg, f, diameter)))
    scores = {t: _ap50([cores(p, cfg, t) for p in train_probs], train_truth) for t in THRESHOLDS}
    best = max(THRESHOLDS, key=lambda t: (scores[t], -abs(t - 0.98)))
    out.append((f"calibrated(={best})", lambda p: cores(p, cfg, best)))
    return out


START, END = "<!-- instance-methods:start -->", "<!-- instance-methods:end -->"
SET_ORDER = ("isbi", "phc", "usiigaci", "gowt1", "gbm40", "lucchi")


def table(rows: list[dict]) -> str:
    """Markdown: one line per network and candidate, one column per set (mean over seeds,
    the number of seeds in brackets; adapted Rand for ISBI, lower is better)."""
    sets = [s for s in SET_ORDER if any(r["set"] == s for r in rows)]
    head = " | ".join(f"{s} ({'Rand ↓' if s == 'isbi' else MEASURE[s].upper()})" for s in sets)
    lines = [f"| network | candidate | {head} |", "|---|---|" + "---|" * len(sets)]
    keys = sorted({(r["targets"], r["candidate"]) for r in rows})
    for targets, cand in keys:
        cells = []
        for name in sets:
            key = (targets, cand, name)
            got = [
                r[MEASURE[name]] for r in rows if (r["targets"], r["candidate"], r["set"]) == key
            ]
            if not got:
                cells.append("–")
            elif len(got) == 1:
                cells.append(f"{got[0]:.3f}")
            else:
                cells.append(f"{np.mean(got):.3f} ± {np.std(got):.3f} ({len(got)})")
        lines.append(f"| {targets} | {cand} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _migrated(rows: list[dict]) -> list[dict]:
    """Rows scored before wide contacts were joined (no ``stamp``) called their reading
    "default"; it is the "unjoined" candidate now."""
    has_unjoined = {r["run"] for r in rows if r["candidate"] == "unjoined"}
    for r in rows:
        if "stamp" not in r and r["candidate"] == "default" and r["run"] not in has_unjoined:
            r["candidate"] = "unjoined"
    return rows


SUMMARY_START, SUMMARY_END = "<!-- instance-default:start -->", "<!-- instance-default:end -->"


def _cell(values: list[float], lower_is_better: bool) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    worst = max(values) if lower_is_better else min(values)
    return f"{np.mean(values):.3f} ± {np.std(values):.3f} (worst {worst:.3f}, {len(values)} seeds)"


def summary(rows: list[dict]) -> str:
    """Markdown: per set and budget, the default (the paper's two classes read at relative
    cores, wide contacts joined) beside the same networks read the two earlier ways (relative
    cores without joining; fixed cores 0.98) and the three-class option, over every stored
    seed."""
    lines = [
        "| set | measure | steps | default: paper 2 classes + relative cores, cut cells "
        "joined | previous: relative cores, no joining | before: cores 0.98 | option: 3 "
        "classes + relative cores, no joining |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SET_ORDER:
        measure = MEASURE[name]
        low = measure == "rand_error"
        for steps in sorted({r["steps"] for r in rows if r["set"] == name}):
            keys = [(name, steps, "default", "paper"), (name, steps, "unjoined", "paper"),
                    (name, steps, "cores@0.98", "paper"),
                    (name, steps, "unjoined", "interiors")]  # fmt: skip
            cells = [[r[measure] for r in rows
                      if (r["set"], r["steps"], r["candidate"], r["targets"]) == key]
                     for key in keys]  # fmt: skip
            if not any(cells):
                continue
            label = "adapted Rand ↓" if low else measure.upper().replace("AP50", "AP@0.5")
            text = " | ".join(_cell(c, low) for c in cells)
            lines.append(f"| {name} | {label} | {steps} | {text} |")
    return "\n".join(lines)


def write_doc(rows: list[dict]) -> None:
    doc = PREDICTIONS.parents[2] / "docs" / "benchmarks.md"
    block = "\n".join([START, "", table(rows), "", END])
    text = doc.read_text()
    if SUMMARY_START in text and SUMMARY_END in text:
        inner = "\n".join([SUMMARY_START, "", summary(rows), "", SUMMARY_END])
        a, b = text.index(SUMMARY_START), text.index(SUMMARY_END) + len(SUMMARY_END)
        text = text[:a] + inner + text[b:]
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text += "\n### Ways of forming instances, screened on stored network outputs\n\n"
        text += block + "\n"
    doc.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="all")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--only", help="only the candidates whose name starts with one of these")
    parser.add_argument("--table", action="store_true", help="only rewrite the doc's table")
    args = parser.parse_args()
    if args.table:
        write_doc(_migrated(json.loads(OUT.read_text())))
        return 0
    root = data_root()
    if root is None:
        print("shared data not found (set NAPARI_UNET_DATA); nothing to measure", file=sys.stderr)
        return 0
    rows = _migrated(json.loads(OUT.read_text()) if OUT.exists() else [])
    stamps = {p.name[: -len("-probs.npz")]: int(p.stat().st_mtime)
              for p in PREDICTIONS.glob("*-probs.npz")}  # fmt: skip
    # a row counts as done only for the stored outputs it was scored on (a rerun replaces them)
    done = {(r["run"], r["candidate"]) for r in rows if r.get("stamp") == stamps.get(r["run"])}
    truth_cache: dict = {}
    for path in sorted(PREDICTIONS.glob("*-probs.npz")):
        run = path.name[: -len("-probs.npz")]
        name, shots, targets, seed, steps = run.split("-")
        if (args.sets != "all" and name not in args.sets.split(",")) or (
            args.steps and int(steps) != args.steps
        ):
            continue
        data = np.load(path)
        meta = ModelMetadata.from_json(str(data["metadata"]))
        if (name, shots) not in truth_cache:
            truth_cache[(name, shots)] = load(root, name, int(shots))[3]
        truth = truth_cache[(name, shots)]
        test = data["test"].astype(np.float32)
        train = data["train"].astype(np.float32)
        train_truth = _truth_train(name, data["train_labels"])
        for cand, fn in candidates(meta, train, train_truth, name):
            if (run, cand.split("(")[0]) in done:
                continue
            if args.only and not cand.startswith(tuple(args.only.split(","))):
                continue
            pred = np.stack([fn(p) for p in test])
            row = {"run": run, "set": name, "targets": targets, "seed": int(seed),
                   "steps": int(steps), "candidate": cand.split("(")[0], "detail": cand,
                   "stamp": stamps[run],
                   **{k: v for k, v in score(name, pred, truth).items()
                      if k != "per_plane_ap50"}}  # fmt: skip
            rows = [r for r in rows if (r["run"], r["candidate"]) != (run, row["candidate"])]
            rows.append(row)
            print(f"{run:28s} {cand:28s} {MEASURE[name]}={row[MEASURE[name]]:.3f} "
                  f"objects={row['objects']:.0f}/{row['ref_objects']:.0f}", flush=True)  # fmt: skip
            OUT.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prediction speed: our overlap-tile predictor against the paper's protocol done naively and MONAI.

    python benchmarks/predict_speed.py                 # 1024 x 1024, best of 3 rounds (CPU),
                                                       # 5 (GPU)
    python benchmarks/predict_speed.py --quick         # 512 x 512, 1 round: a smoke run, see below
    python benchmarks/predict_speed.py --tiles 572,700,1020   # also ours with fixed square tiles

Contenders, all on the same synthetic cell image (float32, normalised) and the same device,
interleaved (A, B, C, A, B, C, ...; the order rotates every round) and the best time of each kept,
so that other load on the machine hits all of them alike:

* ``ours``: :func:`napari_unet.inference.predictor.predict_plane` with automatic tile and batch on
the paper's
  network ``UNet(UNetConfig())`` (untrained, eval). On CUDA it uses bf16 autocast and channels_last,
  on CPU fp32 and channels_last.
* ``naive``: the paper's protocol done naively with the same network and weights: mirror-pad the
  image by 92 px, cut fixed 572 x 572 input tiles at a stride of 388 (the output size), run them
  one at a time in fp32 (default NCHW layout) under ``torch.no_grad`` and paste the 388 x 388
  outputs. Within its first tile it must equal ours (max |difference| printed); elsewhere it
  differs because 388 is not a multiple of 16: its later tiles see a shifted max-pooling grid
  (ours steps by 384 or another multiple of 16 and equals one pass over the padded image).
* ``monai``: ``monai.inferers.sliding_window_inference`` with the same U-Net class but ``same``
  padding (same layers, so about the same FLOPs per input pixel), roi 512 x 512 (a multiple of 16),
  overlap 0.25 (MONAI's default and typical setting), constant blending, ``sw_batch_size`` equal to
  the batch our predictor picks, run with the same numerics as ours (channels_last; bf16 autocast on
  CUDA) inside ``torch.inference_mode``; softmax applied to the blended logits. Skipped if MONAI
  cannot be imported (``pip install monai``; this script also looks in /tmp/monai-pkg, where
  ``pip install --target /tmp/monai-pkg --no-deps monai`` puts it without touching the project env).
* ``ours small``: ``predict_plane`` with ``PRESETS["small"]``.

``--quick`` uses a 512 x 512 image, for which MONAI needs a single window and ours a single tile:
it checks that everything runs, its ratios are not representative.

Prints a table (ratios first) and writes benchmarks/results/predict_speed.json
(predict_speed_quick.json with --quick, or the --out path).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_name, write_json

from napari_unet.devices import resolve_device
from napari_unet.inference.predictor import PredictConfig, _batch_size, predict_plane, tile_shape
from napari_unet.model import PRESETS, UNet, UNetConfig, border
from napari_unet.normalization import Normalization, normalize_plane

RESULTS = Path(__file__).resolve().parent / "results"
MONAI_FALLBACK = "/tmp/monai-pkg"
PAPER_TILE = 572
MONAI_ROI = 512
MONAI_OVERLAP = 0.25


def machine_info(device: torch.device) -> dict:
    cpu = cpu_name()
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def import_monai():
    """``monai.inferers.sliding_window_inference`` or None (then prints how to install MONAI)."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        if MONAI_FALLBACK not in sys.path and Path(MONAI_FALLBACK).is_dir():
            sys.path.append(MONAI_FALLBACK)
            return import_monai()
        print(
            "MONAI is not installed: skipping it (pip install monai, or "
            f"pip install --target {MONAI_FALLBACK} --no-deps monai)"
        )
        return None
    return sliding_window_inference


def make_image(size: int) -> np.ndarray:
    """A synthetic cell image, normalised like the predictor's input: (1, size, size) float32."""
    from napari_unet.sample_data import CellSampleConfig, make_cells

    n_cells = max(4, int(24 * (size / 256) ** 2))
    image, _ = make_cells(CellSampleConfig(shape=(size, size), n_cells=n_cells), seed=0)
    return normalize_plane(image[None], Normalization())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ contenders
def naive_paper(
    model: UNet, plane: np.ndarray, device: torch.device, tile: int = PAPER_TILE
) -> np.ndarray:
    """The paper's overlap-tile protocol, naively: fixed tiles, one at a time, fp32."""
    b = border(model.config)
    out = tile - 2 * b
    _, h, w = plane.shape
    ny, nx = math.ceil(h / out), math.ceil(w / out)
    padded = np.pad(plane, ((0, 0), (b, b + ny * out - h), (b, b + nx * out - w)), mode="reflect")
    result = np.empty((model.config.num_classes, ny * out, nx * out), np.float32)
    with torch.no_grad():
        for y in range(0, ny * out, out):
            for x in range(0, nx * out, out):
                x_in = torch.from_numpy(
                    np.ascontiguousarray(padded[None, :, y : y + tile, x : x + tile])
                )
                probs = torch.softmax(model(x_in.to(device)), dim=1)
                result[:, y : y + out, x : x + out] = probs[0].cpu().numpy()
    return result[:, :h, :w]


def gflop(config: UNetConfig, height: int, width: int) -> float:
    """Multiply-adds x 2 of the (up-)convolutions for one input tile, counted on the meta device."""
    with torch.device("meta"):
        net = UNet(config)
    total = 0

    def count(module, inputs, output):
        nonlocal total
        k = module.weight.shape
        area = (
            inputs[0].shape[-2] * inputs[0].shape[-1]
            if isinstance(module, torch.nn.ConvTranspose2d)
            else output.shape[-2] * output.shape[-1]
        )
        total += 2 * area * k[0] * k[1] * k[2] * k[3]

    for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.register_forward_hook(count)
    net(torch.empty(1, config.in_channels, height, width, device="meta"))
    return total / 1e9


def naive_work(model: UNet, shape: tuple[int, int], tile: int = PAPER_TILE) -> tuple[int, float]:
    """Input pixels and GFLOP of the naive protocol."""
    out = tile - 2 * border(model.config)
    n = math.ceil(shape[0] / out) * math.ceil(shape[1] / out)
    return n * tile * tile, n * gflop(model.config, tile, tile)


def ours_work(
    model: UNet, shape: tuple[int, int], pconfig: PredictConfig, device
) -> tuple[int, float, tuple, int]:
    """Input pixels and GFLOP through the network, the tile (h, w) and the batch our predictor
    picks."""
    from napari_unet.inference.predictor import _tile_count

    tile = tile_shape(model.config, shape, pconfig, device)
    n = _tile_count(model.config, tile[0], shape[0]) * _tile_count(model.config, tile[1], shape[1])
    return (
        n * tile[0] * tile[1],
        n * gflop(model.config, *tile),
        tile,
        _batch_size(model.config, tile, pconfig, device),
    )


def monai_windows(
    shape: tuple[int, int], roi: int = MONAI_ROI, overlap: float = MONAI_OVERLAP
) -> int:
    """Windows MONAI's sliding window visits (its scan-interval rule, 2D)."""
    n = 1
    for s in shape:
        s = max(s, roi)
        interval = max(int(roi * (1 - overlap)), 1)
        n *= math.ceil((s - roi) / interval) + 1
    return n


def make_monai(swi, model: UNet, device: torch.device, sw_batch: int):
    use_amp = device.type == "cuda"

    def run(plane: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(plane[None]).to(device)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = swi(
                x, (MONAI_ROI, MONAI_ROI), sw_batch, model, overlap=MONAI_OVERLAP, mode="constant"
            )
            probs = torch.softmax(logits.float(), dim=1)[0]
        return probs.cpu().numpy()

    return run


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 x 512, one round (smoke run)")
    parser.add_argument("--size", type=int, help="image edge (default 1024; 512 with --quick)")
    parser.add_argument(
        "--repeats", type=int, help="interleaved rounds, best kept (CPU 3, GPU 5; quick 1)"
    )
    parser.add_argument(
        "--tiles", default="", help="comma-separated square tiles for extra 'ours tile=T' runs"
    )
    parser.add_argument("--no-monai", action="store_true")
    parser.add_argument("--no-naive", action="store_true", help="skip the (slow) naive protocol")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    size = args.size or (512 if args.quick else 1024)
    repeats = args.repeats or (1 if args.quick else (5 if device.type == "cuda" else 3))
    out_path = args.out or RESULTS / (
        "predict_speed_quick.json" if args.quick else "predict_speed.json"
    )
    print(
        f"device {device}, image {size} x {size}, best of {repeats} interleaved round(s), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    torch.manual_seed(0)
    paper = UNet(UNetConfig()).eval().to(device)
    small = UNet(PRESETS["small"]).eval().to(device)
    image = make_image(size)
    shape = image.shape[1:]
    pconfig = PredictConfig(device=str(device))

    contenders: dict[str, dict] = {}
    px, gf, tile, batch = ours_work(paper, shape, pconfig, device)
    contenders["ours"] = {
        "run": lambda: predict_plane(paper, image, pconfig, device),
        "pixels_through_net": px,
        "gflop": gf,
        "detail": f"tiles {tile[0]}x{tile[1]}, batch {batch}",
    }
    if not args.no_naive:
        px_n, gf_n = naive_work(paper, shape)
        contenders["naive"] = {
            "run": lambda: naive_paper(paper, image, device),
            "pixels_through_net": px_n,
            "gflop": gf_n,
            "detail": f"tiles {PAPER_TILE}x{PAPER_TILE}, batch 1, fp32, NCHW",
        }
    swi = None if args.no_monai else import_monai()
    if swi is not None:
        torch.manual_seed(0)
        same = UNet(UNetConfig(padding="same")).eval().to(device)
        same = same.to(memory_format=torch.channels_last)
        n_win = monai_windows(shape)
        contenders["monai"] = {
            "run": lambda: make_monai(swi, same, device, batch)(image),
            "pixels_through_net": n_win * MONAI_ROI**2,
            "gflop": n_win * gflop(same.config, MONAI_ROI, MONAI_ROI),
            "detail": f"roi {MONAI_ROI}, overlap {MONAI_OVERLAP}, {n_win} windows, "
            f"sw_batch {batch}, same padding",
        }
    for t in [int(t) for t in args.tiles.split(",") if t.strip()]:
        cfg_t = PredictConfig(tile=t, device=str(device))
        px_t, gf_t, tile_t, batch_t = ours_work(paper, shape, cfg_t, device)
        contenders[f"ours tile={t}"] = {
            "run": (lambda c=cfg_t: predict_plane(paper, image, c, device)),
            "pixels_through_net": px_t,
            "gflop": gf_t,
            "detail": f"tiles {tile_t[0]}x{tile_t[1]}, batch {batch_t}",
        }
    px_s, gf_s, tile_s, batch_s = ours_work(small, shape, pconfig, device)
    contenders["ours small"] = {
        "run": lambda: predict_plane(small, image, pconfig, device),
        "pixels_through_net": px_s,
        "gflop": gf_s,
        "detail": f"PRESETS['small'], tiles {tile_s[0]}x{tile_s[1]}, batch {batch_s}",
    }

    # warm-up: one small forward per network and layout (library loading, kernel selection)
    with torch.inference_mode():
        for net, edge in ((paper, 188), (small, 92)):
            for fmt in (torch.contiguous_format, torch.channels_last):
                net(torch.rand(1, 1, edge, edge, device=device).contiguous(memory_format=fmt))
        if swi is not None:
            same(torch.rand(1, 1, 64, 64, device=device))
    if device.type == "cuda":  # on a GPU a whole warm-up round is cheap
        for c in contenders.values():
            c["run"]()
    sync(device)

    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, np.ndarray] = {}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync(device)
            start = time.perf_counter()
            result = contenders[name]["run"]()
            sync(device)
            times[name].append(time.perf_counter() - start)
            outputs.setdefault(name, result)
            print(f"  round {r + 1}: {name:<16} {times[name][-1]:8.2f} s", flush=True)

    mpix = size * size / 1e6
    best = {n: min(times[n]) for n in names}
    ref = outputs["ours"]
    diffs = {
        n: float(np.abs(outputs[n] - ref).max()) for n in names if n not in ("monai", "ours small")
    }
    first = PAPER_TILE - 2 * border(paper.config)
    diff_first = (
        float(np.abs(outputs["naive"] - ref)[:, :first, :first].max())
        if "naive" in outputs
        else None
    )
    ratios = {}
    if "naive" in best:
        ratios["ours/naive"] = best["naive"] / best["ours"]
    if "monai" in best:
        ratios["ours/monai"] = best["monai"] / best["ours"]
    print()
    for key, value in ratios.items():
        goal = 1.5 if key == "ours/naive" else 1.0
        print(
            f"speed-up {key}: {value:.2f}x  (goal on CPU {'>=' if goal > 1 else '>'} {goal:g}x: "
            f"{'met' if value >= goal and (goal > 1 or value > 1) else 'missed'})"
        )
    if diff_first is not None:
        print(
            f"max |ours - naive| in naive's first {first} x {first} tile: {diff_first:.1e} "
            f"(whole image: {diffs['naive']:.1e}, naive's tiles at stride {first} "
            "shift the pooling grid)"
        )
    print(
        f"{'contender':<16} {'best s':>8} {'MPix/s':>8} {'vs ours':>8} {'Mpx in':>7} {'GFLOP':>7} "
        f"{'GFLOP/s':>8} {'max|d ours|':>11}  detail"
    )
    for n in names:
        d = f"{diffs[n]:.1e}" if n in diffs else "n/a"
        c = contenders[n]
        print(
            f"{n:<16} {best[n]:>8.2f} {mpix / best[n]:>8.3f} {best['ours'] / best[n]:>8.2f} "
            f"{c['pixels_through_net'] / 1e6:>7.2f} {c['gflop']:>7.0f} "
            f"{c['gflop'] / best[n]:>8.1f} "
            f"{d:>11}  {c['detail']}"
        )

    result = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": str(device),
        "image_shape": [size, size],
        "repeats": repeats,
        "ratios": ratios,
        "max_abs_diff_vs_ours": diffs,
        "max_abs_diff_ours_naive_first_tile": diff_first,
        "contenders": {
            n: {
                "best_s": best[n],
                "all_s": times[n],
                "mpix_per_s": mpix / best[n],
                "pixels_through_net": contenders[n]["pixels_through_net"],
                "gflop": contenders[n]["gflop"],
                "gflop_per_s": contenders[n]["gflop"] / best[n],
                "detail": contenders[n]["detail"],
            }
            for n in names
        },
        "monai": {
            "roi": MONAI_ROI,
            "overlap": MONAI_OVERLAP,
            "mode": "constant",
            "available": swi is not None,
        },
    }
    return write_json(out_path, result)


if __name__ == "__main__":
    main()

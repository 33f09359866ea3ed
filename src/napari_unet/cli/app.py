"""The ``napari-unet`` command: demo, train, predict, suggest, evaluate, weightmap, export.

A thin front over the library. Every user error ends as one line on stderr and a non-zero exit
code (2 for bad usage or input, 1 for other failures, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from napari_unet import __version__
from napari_unet.defaults import (
    CONTINUE_STEPS,
    DEFAULT_STEPS,
    DEFAULT_SUGGEST_MEASURE,
    SUGGEST_MEASURES,
)
from napari_unet.errors import NapariUnetError, OutOfMemory


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(
            2,
            f"napari-unet: error: {message} (see 'napari-unet {self.prog.split()[-1]} --help')\n"
            if " " in self.prog
            else f"napari-unet: error: {message} (see 'napari-unet --help')\n",
        )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(prog="napari-unet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser("demo", help="train on 2 planes of a synthetic stack and segment it all")
    demo.add_argument(
        "--out", default="napari-unet-demo", help="output folder (default: %(default)s)"
    )
    demo.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    demo.add_argument("--steps", type=_positive_int, default=None, help="training steps")
    demo.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train", help="train or fine-tune a U-Net from annotated planes")
    train.add_argument("image", help="TIFF, zarr, .npy or a folder of 2D TIFF/PNG files")
    train.add_argument("labels", help="annotations with the same (Y, X) and plane axes")
    train.add_argument("--out", required=True, help="model file to write (.safetensors)")
    train.add_argument("--slices", help="planes to train on, e.g. 0,3,5-7 (default: annotated)")
    train.add_argument(
        "--val-slices",
        help="held-out annotated planes for validation (default: with 4 or more annotated "
        "planes the middle one, whose score is printed at the end; 'none': train on all)",
    )
    train.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help=f"optimiser steps (default: {DEFAULT_STEPS}, or {CONTINUE_STEPS} with --init; "
        "a resumed run counts the steps already done)",
    )
    train.add_argument(
        "--minutes",
        type=_positive_float,
        help="training time budget in minutes; training stops at --steps or when "
        "the budget is spent, whichever comes first",
    )
    train.add_argument(
        "--init",
        help="fine-tune this model file (default: a new network fine-tuned from the shipped "
        "starting model)",
    )
    train.add_argument(
        "--from-starting-model",
        action="store_true",
        help="fine-tune the shipped starting model (the default for a new small-preset network; "
        "kept for scripts that say so)",
    )
    train.add_argument(
        "--from-scratch",
        action="store_true",
        help="start from random weights instead of fine-tuning the shipped starting model",
    )
    train.add_argument(
        "--preset",
        choices=["paper", "small"],
        default="small",
        help="architecture preset (default: small; paper = the 2015 network)",
    )
    train.add_argument("--width", type=_positive_int)
    train.add_argument("--depth", type=_positive_int)
    train.add_argument("--padding", choices=["valid", "same"])
    train.add_argument(
        "--mode",
        choices=["instances", "scribbles", "classes"],
        default="instances",
        help="annotation schema (docs/annotations.md)",
    )
    train.add_argument(
        "--instance-targets",
        choices=["interiors", "paper"],
        default="paper",
        help="what a new network learns from instances: the paper's two classes with "
        "separation gaps and weight maps (default), or background, interior and border band; "
        "either way objects are parted at relative cores",
    )
    train.add_argument(
        "--partial",
        action="store_true",
        help="the planes are partially annotated (only some objects painted): "
        "unpainted pixels far from painted objects are not background",
    )
    train.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    train.add_argument("--resume", help="checkpoint to continue from")
    train.add_argument("--checkpoint", help="checkpoint file (default: OUT with .ckpt suffix)")
    train.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        help="steps between checkpoints (default: max(100, steps / 10))",
    )
    train.add_argument("--tile", type=_positive_int, help="input tile edge in pixels")
    train.add_argument("--batch-size", type=_positive_int, default=4)
    train.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    train.add_argument("--lr", type=_positive_float)
    train.add_argument("--augment", type=float, default=1.0, help="augmentation strength (0 = off)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--channel-axis", type=int)
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    pred = sub.add_parser("predict", help="segment an image or a whole stack with a model file")
    pred.add_argument("model")
    pred.add_argument("image")
    pred.add_argument("--out", required=True, help="labels to write (.tif, .npy or .zarr)")
    pred.add_argument("--instances", action="store_true", help="one id per object")
    pred.add_argument("--probabilities", help="also write class probabilities here (.tif/.npy)")
    pred.add_argument("--tile", type=_positive_int)
    pred.add_argument("--tta", action="store_true", help="average over flips and 90° rotations")
    pred.add_argument("--device", default="auto")
    pred.add_argument("--scheduler", help="address of a dask.distributed scheduler")
    pred.add_argument(
        "--min-size",
        type=int,
        default=None,
        help="drop objects smaller than this (px); default: the model's "
        "recommendation, a quarter of the smallest training object",
    )
    pred.add_argument(
        "--method",
        choices=["relative-cores", "interiors", "necks", "cores"],
        default=None,
        help="how touching objects are parted; default: what the model file records "
        "(relative-cores for new models, cores for files written before it)",
    )
    pred.add_argument(
        "--core-ratio",
        type=float,
        default=None,
        help="relative-cores: how sure a core must be relative to its object's own "
        "confidence (0-1; higher parts more); default: the model file's value",
    )
    pred.add_argument(
        "--join-wide",
        type=_non_negative_float,
        default=None,
        help="relative-cores: join parts that touch along at least this many times the "
        "smaller part's width (0 = never); default: the model file's value",
    )
    pred.add_argument(
        "--neck-depth",
        type=_positive_float,
        default=None,
        help="necks: how deep a neck must be, as a fraction of the object radius; "
        "default: the model file's value",
    )
    pred.add_argument(
        "--fill-holes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fill holes in objects; default: the model's recommendation",
    )
    pred.add_argument("--channel-axis", type=int)
    pred.add_argument("--quiet", action="store_true")

    sug = sub.add_parser(
        "suggest",
        help="rank the planes of an image by how unsure a model is (prints JSON)",
        description="Rank the planes of IMAGE by how unsure MODEL is about them, least sure "
        "first: the planes worth annotating next. Every plane is predicted under the 8 flips "
        "and 90-degree rotations; prints JSON with every measure per plane.",
    )
    sug.add_argument("model")
    sug.add_argument("image")
    sug.add_argument(
        "--annotations",
        metavar="LABELS",
        help="labels of IMAGE: planes holding any label are left out",
    )
    sug.add_argument("--exclude", help="planes to leave out, e.g. 0,3,5-7")
    sug.add_argument("--top", type=_positive_int, help="print only the N least sure planes")
    sug.add_argument(
        "--measure",
        choices=list(SUGGEST_MEASURES),
        default=None,
        help=f"the score planes are ranked by (default: {DEFAULT_SUGGEST_MEASURE}; every "
        "measure is printed)",
    )
    sug.add_argument("--tile", type=_positive_int)
    sug.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    sug.add_argument("--channel-axis", type=int)
    sug.add_argument("--quiet", action="store_true", help="no progress bar")

    ev = sub.add_parser("evaluate", help="compare labels with ground truth (prints JSON)")
    ev.add_argument("pred")
    ev.add_argument("gt")
    ev.add_argument(
        "--metric",
        action="append",
        choices=["iou", "seg", "ap50", "rand", "pixel"],
        help="repeat for several (default: all)",
    )

    wm = sub.add_parser("weightmap", help="compute U-Net border weight maps of instance labels")
    wm.add_argument("labels")
    wm.add_argument("--out", required=True, help=".tif or .npy")
    wm.add_argument("--w0", type=float, default=10.0)
    wm.add_argument("--sigma", type=_positive_float, default=5.0)
    wm.add_argument("--variant", choices=["paper", "falk"], default="paper")

    ex = sub.add_parser(
        "export",
        help="export a model file to another format",
        description="Export a model file to TorchScript, ONNX or a bioimage.io package. The "
        "exported network takes every valid tile edge, min + k * 2**depth (44 + 4k for depth 2, "
        "92 + 8k for the small preset, 188 + 16k for the paper's; same padding: multiples of "
        "2**depth); the command prints them for the model.",
    )
    ex.add_argument("model")
    ex.add_argument("--format", required=True, choices=["torchscript", "onnx", "bioimageio"])
    ex.add_argument("--out", required=True)
    ex.add_argument(
        "--tile",
        type=_positive_int,
        help="edge of the example/test tile; a valid tile size (default: the smallest with a "
        "64 px output)",
    )
    ex.add_argument(
        "--check",
        action="store_true",
        help="check the exported file (bioimage.io: bioimageio.core's model test when installed, "
        "else napari-unet's own check; ONNX/TorchScript: load, run and compare with the model); "
        "exit code 1 when it fails",
    )
    ex.add_argument(
        "--training-data",
        metavar="TEXT",
        help="bioimageio: what the model was trained on (stored in the package)",
    )
    ex.add_argument(
        "--author",
        action="append",
        metavar="NAME",
        help="bioimageio: who trained the model; repeat for several",
    )
    ex.add_argument(
        "--sample",
        metavar="IMAGE",
        help="bioimageio: an image (its first plane's centre) for the test tensors and cover",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-unet`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from napari_unet.cli import commands

    previous, show = _sigterm_as_interrupt(), warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(getattr(commands, f"run_{args.command}")(args) or 0)
    except NapariUnetError as exc:
        print(f"napari-unet: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, OutOfMemory) else 2
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("napari-unet: error: out of memory; use a smaller --tile", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"napari-unet: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return 1
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError & co.; anything else is a bug
        from napari_unet.devices import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        print(
            "napari-unet: error: out of accelerator memory even with the smallest tiles; "
            "use --device cpu or a smaller --tile / --batch-size",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.showwarning = show
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each (no source excerpt), e.g. the out-of-memory tile fallback."""
    text = str(message).strip().splitlines() or [category.__name__]
    print(f"napari-unet: warning: {text[0]}", file=sys.stderr)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _sigterm_as_interrupt():
    """Treat SIGTERM (cluster schedulers, ``kill``) like Ctrl+C: checkpoints are written and
    half-written outputs removed. Returns the previous handler (None when not installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)

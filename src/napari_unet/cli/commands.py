"""Implementations of the ``napari-unet`` subcommands (parsing lives in
:mod:`napari_unet.cli.app`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from napari_unet.errors import InputError


class ProgressLine:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str, total: int, quiet: bool = False) -> None:
        self.label, self.total, self.quiet = label, max(total, 1), quiet
        self.tty = sys.stderr.isatty()
        self._last = -1.0
        self.start = time.perf_counter()

    def update(self, done: int, extra: str = "") -> None:
        if self.quiet:
            return
        frac = done / self.total
        now = time.perf_counter()
        if not self.tty and done != self.total and now - self._last < 5.0:
            return
        self._last = now
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        text = f"{self.label} [{bar}] {done}/{self.total} {extra}"
        print(
            ("\r" + text) if self.tty else text,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr)


def _hold_out(labels: np.ndarray, text: str | None) -> tuple | None:
    """--val-slices: None (not given) lets the recipe hold one of 4+ planes out; "none": none."""
    if text is not None and text.strip().lower() == "none":
        return ()
    planes = _planes_of(labels, text)
    return None if planes is None else tuple(planes)


def _planes_of(labels: np.ndarray, text: str | None):
    from napari_unet.io.plane_lists import parse_index_list

    indices = parse_index_list(text)
    if indices is None:
        return None
    if labels.ndim == 2:
        if indices != [0]:
            raise InputError("a 2D image has only plane 0")
        return [()]
    if labels.ndim > 3:
        raise InputError(
            "--slices selects planes of 3D stacks; for 4D data select planes in napari"
        )
    bad = [i for i in indices if i >= labels.shape[0]]
    if bad:
        raise InputError(f"plane {bad[0]} does not exist: the stack has {labels.shape[0]} planes")
    return [(i,) for i in indices]


def _default_train_steps(args) -> int:
    """Steps without ``--steps``: a resumed run aims at the target it was started with (an
    interrupted ``--init`` run resumes to its 300 steps, not 2000); otherwise the default for a
    new or a continued model."""
    from napari_unet.defaults import default_steps

    if args.resume is not None:
        from napari_unet.training.checkpoint import read_checkpoint_metadata

        training = read_checkpoint_metadata(args.resume).provenance.get("training") or {}
        if isinstance(training.get("steps"), int) and training["steps"] > 0:
            return training["steps"]
    return default_steps(args.init is not None)


def run_train(args) -> int:
    from napari_unet.annotation.derived import describe
    from napari_unet.annotation.schema import AnnotationConfig
    from napari_unet.io.files import read_array
    from napari_unet.model import PRESETS
    from napari_unet.training.augment import AugmentConfig
    from napari_unet.training.recipe import TrainingRecipe, prepare_run
    from napari_unet.training.trainer import TrainConfig

    out = Path(args.out)
    if not out.parent.is_dir():
        state = "is not a folder" if out.parent.exists() else "does not exist"
        raise InputError(f"{out}: the folder {out.parent} {state}")
    if args.from_starting_model and (args.from_scratch or args.init or args.resume):
        other = "--from-scratch" if args.from_scratch else "--init" if args.init else "--resume"
        raise InputError(f"give either --from-starting-model or {other}, not both")
    if args.from_scratch and (args.init or args.resume):
        other = "--init" if args.init else "--resume"
        raise InputError(f"give either --from-scratch or {other}, not both")
    image = read_array(args.image)
    labels = np.asarray(read_array(args.labels))
    overrides = {
        k: v
        for k, v in (("width", args.width), ("depth", args.depth), ("padding", args.padding))
        if v
    }
    steps = args.steps if args.steps is not None else _default_train_steps(args)
    config = TrainConfig(
        steps=steps,
        minutes=args.minutes,
        batch_size=args.batch_size,
        tile=args.tile,
        optimizer=args.optimizer,
        lr=args.lr,
        augment=AugmentConfig(strength=max(args.augment, 0.0)),
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
    )
    recipe = TrainingRecipe(
        annotation=AnnotationConfig(
            mode=args.mode, partial=args.partial, instance_targets=args.instance_targets
        ),
        training=config,
        architecture=PRESETS[args.preset].with_(**overrides),
        start="scratch" if args.from_scratch else "starting-model",
        init=args.init,
        resume=args.resume,
        checkpoint=Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt"),
        planes=_planes_of(labels, args.slices),
        val_planes=_hold_out(labels, args.val_slices),
        channel_axis=args.channel_axis,
    )
    trainer = prepare_run(image, labels, recipe)
    model, train_set = trainer.model, trainer.planes
    budget = f", at most {config.minutes:g} min" if config.minutes else ""
    print(
        f"training {model.config.width}-wide, depth-{model.config.depth} U-Net on {len(train_set)} "
        f"plane(s), tile {trainer.tile}, device {trainer.device}, "
        f"steps {trainer.step}->{config.steps}"
        f"{budget}; {trainer.start_note}",
        file=sys.stderr,
    )
    if not args.quiet:
        print(f"derived from the annotations: {describe(trainer.derived)}", file=sys.stderr)
    bar = ProgressLine("train", config.steps, args.quiet)
    last_metrics: dict = {}
    start = time.perf_counter()
    try:
        for event in trainer.run():
            if event.kind == "step":
                bar.update(event.step, f"loss {event.loss:.4f} ETA {event.eta_s:.0f}s")
            elif event.kind == "validation":
                last_metrics = event.metrics or {}
            elif event.kind == "warning":
                print(f"napari-unet: warning: {event.message}", file=sys.stderr)
            elif event.kind == "done" and event.message:
                print(f"napari-unet: {event.message}", file=sys.stderr)
    except KeyboardInterrupt:
        bar.close()
        path = trainer.save_checkpoint()
        print(
            f"napari-unet: interrupted at step {trainer.step}; resume with --resume {path}",
            file=sys.stderr,
        )
        return 130
    bar.close()
    trainer.save_model(out)
    trainer.save_checkpoint()
    summary = " ".join(f"{k} {v:.4f}" for k, v in last_metrics.items())
    print(
        f"done: {trainer.step} steps in {time.perf_counter() - start:.0f}s, final loss "
        f"{trainer.history[-1]['loss']:.4f} {summary}; model written to {out}",
        file=sys.stderr,
    )
    return 0


def _check_destination(path: Path, suffixes: tuple[str, ...], what: str) -> None:
    """Refuse an output path before any work is done (its folder must exist, its type be known)."""
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{path}: write {what} as {', '.join(suffixes)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        state = "is not a folder" if parent.exists() else "does not exist"
        raise InputError(f"{path}: the folder {parent} {state}")


def method_text(post) -> str:
    """How the objects are parted, in words, with the method's own parameter."""
    if post.method == "relative-cores":
        from napari_unet.annotation.derived import join_text

        joined = join_text(post.join_wide, post.join_shallow)
        return f"relative cores at {post.core_ratio:g}{joined}"
    if post.method == "necks":
        return f"necks at depth {post.neck_depth:g}"
    if post.method == "cores" and post.seed_threshold is not None:
        return f"cores at {post.seed_threshold:g}"
    return post.method


def _post_source(args) -> str:
    options = ("min_size", "method", "fill_holes", "core_ratio", "join_wide", "neck_depth")
    given = [f"--{k.replace('_', '-')}" for k in options if getattr(args, k) is not None]
    return "as the model file recommends" + (f", {', '.join(given)} as given" if given else "")


def run_predict(args) -> int:
    from napari_unet.annotation.derived import postprocess_config
    from napari_unet.inference.batch import SegmentConfig, segment_stack, segment_stack_distributed
    from napari_unet.inference.predictor import PredictConfig, load_predictor
    from napari_unet.io.files import read_array, write_array

    model, metadata, device = load_predictor(args.model, args.device)
    post = postprocess_config(
        metadata.postprocess,
        min_size=args.min_size,
        method=args.method,
        fill_holes=args.fill_holes,
        core_ratio=args.core_ratio,
        join_wide=args.join_wide,
        neck_depth=args.neck_depth,
    )
    if args.instances and not args.quiet:
        print(
            f"instances: {method_text(post)}, min size {post.min_size} px, fill holes "
            f"{'on' if post.fill_holes else 'off'} ({_post_source(args)})",
            file=sys.stderr,
        )
    config = SegmentConfig(
        predict=PredictConfig(tile=args.tile, tta=args.tta, device=args.device),
        postprocess=post,
        instances=args.instances,
        channel_axis=args.channel_axis,
    )
    out = Path(args.out)
    _check_destination(out, (".tif", ".tiff", ".npy", ".zarr"), "labels")
    if args.probabilities:
        _check_destination(Path(args.probabilities), (".tif", ".tiff", ".npy"), "probabilities")
    inputs = {Path(args.image).resolve(), Path(args.model).resolve()}
    for path in (out, Path(args.probabilities) if args.probabilities else None):
        if path is not None and path.resolve() in inputs:
            raise InputError(f"{path}: writing there would overwrite an input; choose another file")
    if args.tile:
        from napari_unet.model import check_input_size

        check_input_size(model.config, args.tile)
    image = read_array(args.image)
    bar = ProgressLine("predict", 1, args.quiet)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done)

    start = time.perf_counter()
    stream_to = None if out.suffix.lower() == ".npy" else out
    if args.scheduler:
        result = segment_stack_distributed(
            args.model, args.image, args.scheduler, config, stream_to, progress
        )
    elif args.probabilities:
        result = _predict_with_probabilities(
            model, metadata, image, config, args.probabilities, progress
        )
    else:
        result = segment_stack(
            model, metadata, image, config, stream_to, progress, source=_source_key(args.image)
        )
    if isinstance(result, np.ndarray) and out.suffix.lower() == ".zarr":
        _write_zarr(out, result)
    elif isinstance(result, np.ndarray):
        write_array(out, result)
    bar.close()
    print(
        f"done in {time.perf_counter() - start:.1f}s on {device}; labels written to {out}",
        file=sys.stderr,
    )
    return 0


def _excluded_planes(text: str | None, lead: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Planes named by ``--exclude`` (``0,3,5-7``; ``(0, 3); (1, 2)`` when the image has several
    leading axes), checked against the image's leading (plane) shape ``lead``."""
    from napari_unet.io.plane_lists import parse_index_list, parse_plane_list

    if text is None or not text.strip():
        return []
    if len(lead) <= 1:
        numbers = parse_index_list(text) or []
        count = lead[0] if lead else 1
        bad = [i for i in numbers if i >= count]
        if bad:
            raise InputError(
                f"--exclude: plane {bad[0]} does not exist: the image has {count} plane(s)"
            )
        return [(i,) if lead else () for i in numbers]
    planes = parse_plane_list(text, len(lead))
    for plane in planes:
        if any(i >= n for i, n in zip(plane, lead, strict=True)):
            raise InputError(
                f"--exclude: plane {plane} does not exist: the image's planes span {lead}"
            )
    return planes


def _annotated_planes_of(path: str, lead: tuple[int, ...], yx: tuple[int, int]):
    """The planes of an annotations file that hold any label, checked against the image."""
    from napari_unet.annotation.schema import annotated_planes
    from napari_unet.io.files import read_array

    labels = read_array(path)
    if tuple(labels.shape) != lead + yx:
        raise InputError(
            f"{path}: the annotations have shape {tuple(labels.shape)} but the image has "
            f"{int(np.prod(lead)) if lead else 1} plane(s) of {yx[0]} x {yx[1]}: expected "
            f"shape {lead + yx}"
        )
    return annotated_planes(np.asarray(labels))


def run_suggest(args) -> int:
    """Rank the planes of an image by the model's uncertainty; print the ranking as JSON."""
    from napari_unet.inference.batch import SegmentConfig, plane_layout
    from napari_unet.inference.predictor import PredictConfig, load_predictor
    from napari_unet.inference.suggest import DEFAULT_MEASURE, SuggestConfig, rank_planes
    from napari_unet.io.files import read_array

    model, metadata, device = load_predictor(args.model, args.device)
    if args.tile:
        from napari_unet.model import check_input_size

        check_input_size(model.config, args.tile)
    config = SuggestConfig(
        measure=args.measure or DEFAULT_MEASURE,
        segment=SegmentConfig(
            predict=PredictConfig(tile=args.tile, device=args.device),
            channel_axis=args.channel_axis,
        ),
    )
    image = read_array(args.image, lazy=True)
    lead, yx = plane_layout(tuple(image.shape), model, args.channel_axis)
    exclude = _excluded_planes(args.exclude, lead)
    if args.annotations:
        exclude += _annotated_planes_of(args.annotations, lead, yx)
    bar = ProgressLine("suggest", 1, args.quiet)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done)

    start = time.perf_counter()
    try:
        ranking = rank_planes(model, metadata, image, config, exclude, progress)
    finally:
        bar.close()
    shown = ranking[: args.top] if args.top else ranking
    print_json(
        {
            "model": args.model,
            "image": args.image,
            "measure": config.measure,
            "planes_scored": len(ranking),
            "ranking": [entry.to_dict() for entry in shown],
        }
    )
    if not args.quiet:
        print(
            f"done: {len(ranking)} plane(s) scored in {time.perf_counter() - start:.1f}s on "
            f"{device}",
            file=sys.stderr,
        )
    return 0


def _source_key(path: str) -> str:
    """Identity of an input file for resuming a zarr output: path, size and modification time."""
    info = Path(path).stat()
    return f"{Path(path).resolve()}:{info.st_size}:{info.st_mtime_ns}"


def _write_zarr(out: Path, labels: np.ndarray) -> None:
    """Write an in-memory labels stack to a zarr output, recording every plane as done."""
    from napari_unet.io.files import StackWriter

    writer = StackWriter(out, labels.shape)
    lead = labels.shape[:-2]
    for flat, index in enumerate(np.ndindex(*lead) if lead else [()]):
        writer.write(flat, index, labels[index])
    writer.finish()


def _predict_with_probabilities(model, metadata, image, config, prob_path, progress):
    from napari_unet.inference.batch import iter_planes, plane_layout, segment_plane
    from napari_unet.io.files import write_array
    from napari_unet.io.planes import offset_instances

    lead, yx = plane_layout(tuple(image.shape), model, config.channel_axis)
    labels = np.zeros(lead + yx, np.uint32)
    probs = np.zeros(lead + (model.config.num_classes,) + yx, np.float32)
    offset, total = 0, int(np.prod(lead)) if lead else 1
    for flat, (index, plane) in enumerate(iter_planes(image, model, config.channel_axis)):
        lab, p = segment_plane(model, metadata, plane, config)
        if config.instances:
            lab, offset = offset_instances(lab, offset)
        labels[index], probs[index] = lab, p
        progress(flat + 1, total)
    write_array(prob_path, probs)
    return labels


def print_json(data: dict) -> None:
    """Print a result dictionary as JSON on stdout."""
    import json

    print(json.dumps(data, indent=2, sort_keys=True))


def run_evaluate(args) -> int:
    from napari_unet.io.files import read_array
    from napari_unet.metrics import evaluate

    # writable copies: .npy files are memory-mapped read-only, which skimage's relabelling refuses
    pred = np.array(read_array(args.pred))
    gt = np.array(read_array(args.gt))
    metrics = tuple(args.metric) if args.metric else ("iou", "seg", "ap50", "rand", "pixel")
    print_json(evaluate(pred, gt, metrics))
    return 0


def run_weightmap(args) -> int:
    from napari_unet.annotation.schema import IGNORE_LABEL, check_labels
    from napari_unet.annotation.weightmap import WeightMapConfig, weight_map
    from napari_unet.io.files import read_array, write_array

    labels = check_labels(np.asarray(read_array(args.labels)))
    config = WeightMapConfig(variant=args.variant, w0=args.w0, sigma=args.sigma)
    flat = labels.reshape((-1,) + labels.shape[-2:])
    out = np.stack(
        [
            weight_map(np.where(p == IGNORE_LABEL, 0, p), config, ignore=p == IGNORE_LABEL)
            for p in flat
        ]
    )
    write_array(args.out, out.reshape(labels.shape).astype(np.float32))
    print(f"weight map ({out.min():.2f}..{out.max():.2f}) written to {args.out}", file=sys.stderr)
    return 0


def run_export(args) -> int:
    from napari_unet.io.export import export_model, export_summary
    from napari_unet.io.files import read_array

    if args.format != "bioimageio":
        given = [f"--{n.replace('_', '-')}" for n in ("training_data", "author", "sample")
                 if getattr(args, n)]  # fmt: skip
        if given:
            raise InputError(f"{', '.join(given)}: only for --format bioimageio")
    sample = read_array(args.sample) if args.sample else None
    path = export_model(
        args.model,
        args.format,
        args.out,
        args.tile,
        training_data=args.training_data,
        authors=args.author,
        sample=sample,
    )
    print(export_summary(args.model, args.format, path), file=sys.stderr)
    if getattr(args, "check", False):
        from napari_unet.io.export_check import check_export

        result = check_export(path, args.format, args.model)
        print(f"check: {result.verdict}", file=sys.stderr)
        for line in result.details if not result.passed else ():
            print(f"  {line}", file=sys.stderr)
        return 0 if result.passed else 1
    return 0


def run_demo(args) -> int:
    from napari_unet.demo import DemoConfig
    from napari_unet.demo import run_demo as demo

    result = demo(
        DemoConfig(out=Path(args.out), device=args.device, steps=args.steps, seed=args.seed)
    )
    return 0 if result["passed"] else 1

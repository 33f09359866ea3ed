"""Human in the loop: ranking planes by the model's uncertainty ("annotate next"), the
``napari-unet suggest`` command, and the short default budget of ``train --init``.

Everything is real and tiny: a 4-wide depth-2 network trained for a few hundred steps on 2
synthetic 96 x 96 planes (seconds on one thread), real files, the command run in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading

import numpy as np
import pytest
import tifffile

from napari_unet.cli import build_parser, main
from napari_unet.defaults import (
    CONTINUE_STEPS,
    DEFAULT_STEPS,
    DEFAULT_SUGGEST_MEASURE,
    SUGGEST_MEASURES,
    default_steps,
)
from napari_unet.errors import Cancelled, InputError
from napari_unet.inference.suggest import DEFAULT_MEASURE, MEASURES, SuggestConfig, rank_planes
from napari_unet.sample_data import CellSampleConfig, make_cell_stack

CELLS = CellSampleConfig(shape=(96, 96), n_cells=8, cell_radius=10)
TRAINED_STEPS = 500  # enough for the tiny network to segment fluorescence planes like its own
TINY_TRAIN = ["--tile", "44", "--batch-size", "1", "--device", "cpu", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """A tiny network trained from scratch on planes 0 and 1 of a 4-plane fluorescence stack,
    saved with the stack and its annotations (planes 0 and 1 labelled) as files."""
    from napari_unet.model import UNetConfig
    from napari_unet.training.recipe import TrainingRecipe, prepare_run
    from napari_unet.training.trainer import TrainConfig

    folder = tmp_path_factory.mktemp("suggest")
    image, labels = make_cell_stack(4, CELLS, seed=0)
    annotations = labels.copy()
    annotations[2:] = 0
    recipe = TrainingRecipe(
        start="scratch",
        architecture=UNetConfig(width=4, depth=2),
        training=TrainConfig(steps=TRAINED_STEPS, batch_size=2, tile=60, device="cpu", seed=0),
    )
    trainer = prepare_run(image, annotations, recipe)
    for _ in trainer.run():
        pass
    trainer.model.eval()
    trainer.save_model(folder / "model.safetensors")
    tifffile.imwrite(folder / "image.tif", image)
    np.save(folder / "image.npy", image)
    tifffile.imwrite(folder / "annotations.tif", annotations)
    return trainer.model, trainer.metadata(), image, folder


def unlike_the_training_data(seed: int = 7) -> dict[str, np.ndarray]:
    """Planes the network has never seen the like of: electron microscopy, pure noise."""
    em = make_cell_stack(1, CellSampleConfig(shape=(96, 96), n_cells=8, modality="em"), seed)[0]
    noise = np.random.default_rng(seed).integers(0, 256, (96, 96)).astype(np.uint8)
    return {"em": em[0], "noise": noise}


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The argparse parser of one ``napari-unet`` subcommand."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


# ------------------------------------------------------------------------------------ library


def test_measures_are_the_ones_the_command_line_offers():
    assert SUGGEST_MEASURES == MEASURES and DEFAULT_SUGGEST_MEASURE == DEFAULT_MEASURE
    measure = next(a for a in subcommand_parser("suggest")._actions if a.dest == "measure")
    assert tuple(measure.choices) == MEASURES
    assert f"default: {DEFAULT_MEASURE}" in " ".join(
        subcommand_parser("suggest").format_help().split()
    )


def test_ranking_is_sorted_complete_and_json_ready(trained):
    model, metadata, image, _ = trained
    seen: list[tuple[int, int]] = []
    ranking = rank_planes(
        model, metadata, image, exclude=[(1,), (3,)], progress=lambda d, t: seen.append((d, t))
    )
    assert sorted(entry.index for entry in ranking) == [(0,), (2,)]
    scores = [entry.score for entry in ranking]
    assert scores == sorted(scores, reverse=True)
    assert seen == [(1, 2), (2, 2)]
    for entry in ranking:
        assert set(entry.scores) == set(MEASURES)
        assert entry.score == entry.scores[DEFAULT_MEASURE]
        assert all(np.isfinite(value) and value >= 0 for value in entry.scores.values())
        data = json.loads(json.dumps(entry.to_dict()))
        assert set(data) == {"plane", "score", "objects", *MEASURES}
        assert data["plane"] == list(entry.index) and isinstance(data["objects"], int)


def test_a_plane_like_the_training_data_ranks_below_unfamiliar_ones(trained):
    """Held-out plane 2 of the training stack against EM and noise planes: the network is sure
    of the first (2-5x lower disagreement and clearly lower entropy, for training seeds 0-4)."""
    model, metadata, image, _ = trained
    unfamiliar = unlike_the_training_data()
    stack = np.stack([image[2], *unfamiliar.values()])
    names = ["familiar", *unfamiliar]
    for measure in ("disagreement", "entropy"):
        ranking = rank_planes(model, metadata, stack, SuggestConfig(measure=measure))
        order = [names[entry.index[0]] for entry in ranking]
        assert order[-1] == "familiar", (measure, order)
    disagreement = SuggestConfig(measure="disagreement")
    by_disagreement = {
        names[entry.index[0]]: entry.score
        for entry in rank_planes(model, metadata, stack, disagreement)
    }
    assert by_disagreement["noise"] > 2 * by_disagreement["familiar"], by_disagreement


def test_cancelling_stops_the_ranking(trained):
    model, metadata, image, _ = trained
    with pytest.raises(Cancelled):
        rank_planes(model, metadata, image, cancelled=lambda: True)
    done: list[int] = []
    with pytest.raises(Cancelled):
        rank_planes(
            model,
            metadata,
            image,
            progress=lambda d, t: done.append(d),
            cancelled=lambda: len(done) >= 1,
        )
    assert done == [1]


def test_nothing_left_to_rank_is_an_input_error(trained):
    model, metadata, image, _ = trained
    with pytest.raises(InputError, match="every plane is annotated"):
        rank_planes(model, metadata, image, exclude=[(i,) for i in range(4)])
    with pytest.raises(InputError, match="unknown measure"):
        SuggestConfig(measure="confidence")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ the command


def run_cli(*args) -> int:
    """Exit code of ``napari-unet ARGS`` run in-process (usage errors raise SystemExit)."""
    try:
        return main([str(arg) for arg in args])
    except SystemExit as exc:
        return int(exc.code or 0)


def suggest(capsys, *args) -> tuple[int, dict | None, str]:
    """Run ``napari-unet suggest`` in-process: exit code, the JSON printed (or None), stderr."""
    code = run_cli("suggest", *args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_suggest_prints_the_ranking_as_json(trained, capsys):
    folder = trained[3]
    model, image = str(folder / "model.safetensors"), str(folder / "image.tif")
    code, result, err = suggest(capsys, model, image, "--device", "cpu")
    assert code == 0, err
    assert set(result) == {"model", "image", "measure", "planes_scored", "ranking"}
    assert (result["model"], result["image"]) == (model, image)
    assert result["measure"] == DEFAULT_MEASURE and result["planes_scored"] == 4
    scores = [entry["score"] for entry in result["ranking"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    assert {tuple(entry["plane"]) for entry in result["ranking"]} == {(0,), (1,), (2,), (3,)}
    assert "done: 4 plane(s) scored" in err and "Traceback" not in err

    npy = suggest(capsys, model, folder / "image.npy", "--quiet", "--device", "cpu")
    assert npy[2] == "" and npy[1]["ranking"] == result["ranking"]  # same planes, same scores


def test_suggest_top_exclude_annotations_and_measure(trained, capsys):
    folder = trained[3]
    model, image = folder / "model.safetensors", folder / "image.npy"
    quiet = ["--quiet", "--device", "cpu"]

    code, top, _ = suggest(capsys, model, image, "--top", "1", "--exclude", "0,2-3", *quiet)
    assert code == 0
    assert top["planes_scored"] == 1 and [e["plane"] for e in top["ranking"]] == [[1]]

    code, result, _ = suggest(
        capsys, model, image, "--annotations", folder / "annotations.tif", *quiet
    )
    assert code == 0 and result["planes_scored"] == 2
    assert sorted(e["plane"] for e in result["ranking"]) == [[2], [3]]

    code, both, _ = suggest(
        capsys,
        model,
        image,
        "--annotations",
        folder / "annotations.tif",
        "--exclude",
        "3",
        "--measure",
        "entropy",
        "--top",
        "5",
        *quiet,
    )
    assert code == 0 and both["measure"] == "entropy"
    assert [e["plane"] for e in both["ranking"]] == [[2]]
    assert both["ranking"][0]["score"] == both["ranking"][0]["entropy"]


def test_suggest_refuses_bad_input_in_one_line(trained, capsys, tmp_path):
    folder = trained[3]
    model, image = folder / "model.safetensors", folder / "image.npy"
    np.save(tmp_path / "three_planes.npy", np.zeros((3, 96, 96), np.uint16))
    np.save(tmp_path / "rgb.npy", np.zeros((2, 96, 96, 3), np.uint8))
    (tmp_path / "not_a_model.safetensors").write_bytes(os.urandom(300))
    cases = [
        ([model, tmp_path / "missing.tif"], "no such file"),
        ([tmp_path / "missing.safetensors", image], "missing.safetensors"),
        ([tmp_path / "not_a_model.safetensors", image], "not_a_model.safetensors"),
        ([model, image, "--annotations", tmp_path / "three_planes.npy"], "expected shape"),
        (
            [model, image, "--annotations", folder / "annotations.tif", "--exclude", "2,3"],
            "every plane is annotated",
        ),
        ([model, image, "--exclude", "0-3"], "every plane is annotated"),
        ([model, image, "--exclude", "4"], "plane 4 does not exist"),
        ([model, image, "--exclude", "one"], "cannot read the plane list"),
        ([model, tmp_path / "rgb.npy"], "RGB"),
        ([model, image, "--channel-axis", "5"], "channel axis 5 does not exist"),
        ([model, image, "--tile", "62"], "62"),
        ([model, image, "--measure", "confidence"], "invalid choice"),
        ([model, image, "--top", "0"], "positive"),
    ]
    for args, message in cases:
        code = run_cli("suggest", *args, "--quiet", "--device", "cpu")
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and out == "", (args, out)
        assert len(lines) == 1 and lines[0].startswith("napari-unet: error: "), (args, err)
        assert message in lines[0], (args, lines[0])


def test_suggest_interrupted_by_sigterm_exits_130(trained, capsys, monkeypatch):
    """SIGTERM (like Ctrl+C) mid-ranking: 'interrupted' on stderr, exit 130, no JSON."""
    import napari_unet.inference.suggest as suggest
    from napari_unet.cli import app as cli

    model, image = trained[3] / "model.safetensors", trained[3] / "long.npy"
    np.save(image, np.tile(trained[2], (100, 1, 1)))  # 400 planes: ranking is under way long after
    scored = threading.Event()  # set once the first plane is scored (or main() returned)
    progress_calls: list[int] = []

    def observed_rank_planes(model, metadata, image, config=None, exclude=(), progress=None, **kw):
        def observed(done: int, total: int) -> None:
            progress_calls.append(done)
            scored.set()
            if progress is not None:
                progress(done, total)

        return real_rank_planes(model, metadata, image, config, exclude, observed, **kw)

    real_rank_planes = suggest.rank_planes
    monkeypatch.setattr(suggest, "rank_planes", observed_rank_planes)
    sent: list[str] = []

    def interrupt_once_ranking() -> None:
        scored.wait(timeout=120)
        if not progress_calls:
            sent.append("no plane was scored (within 120 s) before main() returned")
        elif signal.getsignal(signal.SIGTERM) is not cli._raise_interrupt:
            sent.append("main() returned before the signal could be sent")
        else:
            os.kill(os.getpid(), signal.SIGTERM)
            sent.append("sent")

    # a signal that came after main() returned would be ignored, not end the test session
    outside = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    sender = threading.Thread(target=interrupt_once_ranking)
    try:
        sender.start()
        code = main(["suggest", str(model), str(image), "--quiet", "--device", "cpu"])
        scored.set()  # main() returned: the sender need not wait any longer
        sender.join()
    finally:
        signal.signal(signal.SIGTERM, outside)
    out, err = capsys.readouterr()
    assert sent == ["sent"], (sent, code, err)
    assert len(progress_calls) < 400  # interrupted mid-ranking
    assert code == 130 and out == "" and err.strip() == "napari-unet: interrupted"


# ---------------------------------------------------------------- the short continue budget


def test_default_steps_are_short_only_when_continuing_a_model():
    assert default_steps(False) == DEFAULT_STEPS == 2000
    assert default_steps(True) == CONTINUE_STEPS == 300
    train_help = subcommand_parser("train").format_help()
    assert "default: 2000, or 300 with --init" in " ".join(train_help.split())


def test_train_init_without_steps_runs_the_continue_budget(trained, capsys):
    from napari_unet.io.modelfile import read_metadata

    folder = trained[3]
    image, labels = folder / "image.tif", folder / "annotations.tif"
    parent, child = folder / "model.safetensors", folder / "continued.safetensors"
    code = main(
        ["train", str(image), str(labels), "--init", str(parent), "--out", str(child), *TINY_TRAIN]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"steps 0->{CONTINUE_STEPS}" in err and f"done: {CONTINUE_STEPS} steps" in err
    provenance = read_metadata(child).provenance
    assert provenance["steps"] == CONTINUE_STEPS
    assert provenance["training"]["steps"] == CONTINUE_STEPS
    assert provenance["parent_model"] == "model.safetensors"

    # a resumed run without --steps aims at the target it was started with (300, not 2000)
    resumed = folder / "resumed.safetensors"
    ckpt = child.with_suffix(".ckpt")
    args = ["train", str(image), str(labels), "--resume", str(ckpt), "--out", str(resumed)]
    assert main([*args, "--minutes", "0.0001", *TINY_TRAIN]) == 0
    assert f"steps {CONTINUE_STEPS}->{CONTINUE_STEPS}" in capsys.readouterr().err

    # a new model without --steps aims at DEFAULT_STEPS (--minutes ends it after a step or two)
    scratch = folder / "scratch.safetensors"
    args = ["train", str(image), str(labels), "--from-scratch", "--out", str(scratch)]
    assert main([*args, "--width", "2", "--depth", "2", "--minutes", "0.0001", *TINY_TRAIN]) == 0
    assert f"steps 0->{DEFAULT_STEPS}" in capsys.readouterr().err
    assert read_metadata(scratch).provenance["training"]["steps"] == DEFAULT_STEPS

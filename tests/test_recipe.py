"""One recipe for every front: same seed -> same model from CLI, GUI job and demo; fine-tuning
keeps the parent's normalisation; settings derived from the annotations; partial annotations;
time budget; best validated weights."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file

from napari_unet.annotation.derived import derive_settings, postprocess_config
from napari_unet.annotation.schema import AnnotationConfig, plane_targets
from napari_unet.cli import main
from napari_unet.inference.batch import SegmentConfig, labels_from_probabilities
from napari_unet.io.modelfile import load_model, read_metadata
from napari_unet.model import PRESETS, UNetConfig
from napari_unet.normalization import Normalization, normalize_plane
from napari_unet.sample_data import CellSampleConfig, make_cell_stack
from napari_unet.training.recipe import TrainingRecipe, prepare_run
from napari_unet.training.trainer import TrainConfig

TINY = UNetConfig(width=4, depth=2, norm="batch", dropout=0.2)
SAMPLE = CellSampleConfig(shape=(96, 96), n_cells=8, cell_radius=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, one_torch_thread):
    image, truth = make_cell_stack(3, SAMPLE, seed=4)
    labels = np.zeros_like(truth)
    labels[0], labels[2] = truth[0], truth[2]
    folder = tmp_path_factory.mktemp("recipe")
    tifffile.imwrite(folder / "image.tif", image)
    tifffile.imwrite(folder / "labels.tif", labels)
    return image, labels, folder


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def _cli_train(folder: Path, out: str, *extra: str) -> Path:
    path = folder / out
    rc = main(
        [
            "train",
            str(folder / "image.tif"),
            str(folder / "labels.tif"),
            "--out",
            str(path),
            "--steps",
            "3",
            "--width",
            "4",
            "--depth",
            "2",
            "--tile",
            "60",
            "--device",
            "cpu",
            "--quiet",
            "--seed",
            "5",
            *extra,
        ]
    )
    assert rc == 0
    return path


def test_same_seed_gives_identical_cli_models(stack):
    _, _, folder = stack
    a, b = _cli_train(folder, "a.safetensors"), _cli_train(folder, "b.safetensors")
    _same_weights(a, b)
    ma, mb = read_metadata(a), read_metadata(b)
    for meta in (ma, mb):  # the only fields allowed to differ: when, and how long it took
        meta.provenance.pop("created")
        meta.provenance.pop("train_seconds")
    assert ma.to_json() == mb.to_json()
    c = _cli_train(folder, "c.safetensors", "--seed", "6")
    assert not torch.equal(_weights(a)["head.weight"], _weights(c)["head.weight"])


def test_cli_gui_job_and_library_give_the_same_model(stack, tmp_path):
    from napari_unet.training.job import TrainJob, run_job

    image, labels, folder = stack
    cli = _cli_train(folder, "cli.safetensors")
    recipe = TrainingRecipe(
        training=TrainConfig(steps=3, tile=60, device="cpu", seed=5),
        architecture=PRESETS["small"].with_(width=4, depth=2),
        checkpoint=tmp_path / "gui.ckpt",
    )
    messages = list(run_job(TrainJob(image=image, labels=labels, recipe=recipe)))
    finished = [m for m in messages if m[0] == "finished"]
    assert finished and finished[0][1] == "done", messages[-1]
    model, metadata = finished[0][4], finished[0][5]
    cli_model, cli_meta = load_model(cli)
    for name, value in cli_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    assert cli_meta.postprocess == metadata.postprocess
    trainer = prepare_run(image, labels, recipe)
    list(trainer.run())
    for name, value in cli_model.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[name]), name


def test_demo_uses_the_same_recipe(tmp_path, one_torch_thread):
    from napari_unet.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=tmp_path / "demo", steps=2, device="cpu"), log=lambda _: None)
    image, truth = make_cell_stack(8, seed=0)
    labels = np.zeros_like(truth)
    for z in (0, 4):
        labels[z] = truth[z]
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    rc = main(
        [
            "train",
            str(tmp_path / "image.tif"),
            str(tmp_path / "labels.tif"),
            "--out",
            str(tmp_path / "cli.safetensors"),
            "--steps",
            "2",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 0
    _same_weights(Path(result["out"]) / "model.safetensors", tmp_path / "cli.safetensors")


def test_fine_tuning_keeps_the_parents_normalisation(stack, tmp_path):
    image, labels, _ = stack
    odd = Normalization(low=5.0, high=90.0)
    parent = prepare_run(
        image,
        labels,
        TrainingRecipe(
            annotation=AnnotationConfig(normalization=odd),
            training=TrainConfig(steps=1, tile=60, device="cpu"),
            architecture=TINY,
        ),
    )
    list(parent.run())
    path = parent.save_model(tmp_path / "parent.safetensors")
    child = prepare_run(
        image,
        labels,
        TrainingRecipe(training=TrainConfig(steps=1, tile=60, device="cpu"), init=path),
    )
    assert child.annotation.normalization == odd
    expected = normalize_plane(image[0][None], odd)
    np.testing.assert_array_equal(child.planes[0].image, expected)
    list(child.run())
    meta = child.metadata()
    assert Normalization.from_dict(meta.normalization) == odd
    assert meta.provenance["parent_model"] == "parent.safetensors"
    assert meta.class_names == read_metadata(path).class_names


def test_min_size_follows_the_smallest_annotated_object():
    labels = np.zeros((80, 80), np.int32)
    labels[10:30, 10:30] = 1  # 400 px
    labels[40:50, 40:50] = 2  # 100 px, the smallest
    labels[0:5, 60:80] = 3  # 100 px but cut by the edge: not counted
    target, weight, _ = plane_targets(labels, AnnotationConfig())
    from napari_unet.annotation.schema import TrainingPlane

    plane = TrainingPlane(np.zeros((1, 80, 80), np.float32), target, weight, (), labels)
    derived = derive_settings([plane], AnnotationConfig())
    # objects are shrunk by nothing here (no contacts), so the smallest inner object is 100 px
    assert derived["min_size"] == 25
    assert derived["fill_holes"] is True
    # prediction without options drops a 10-px speck but keeps a 30-px object
    probs = np.zeros((3, 40, 40), np.float32)
    probs[0] = 1
    probs[:, 2:4, 2:7] = [[[0]], [[1]], [[0]]]  # 10 px of interior
    probs[:, 20:26, 20:25] = [[[0]], [[1]], [[0]]]  # 30 px
    meta = type("Meta", (), {"postprocess": derived})()
    out = labels_from_probabilities(probs, meta, SegmentConfig())
    assert out.max() == 1 and out[22, 22] == 1 and out[3, 3] == 0
    assert postprocess_config(derived, min_size=0).min_size == 0  # explicit wins


def test_partial_annotations_do_not_teach_unpainted_cells_as_background():
    labels = np.zeros((120, 120), np.int32)
    labels[10:30, 10:30] = 1  # painted
    labels[14:34, 34:54] = 2  # painted neighbour
    # an unpainted cell sits at (90..110, 90..110): 0 in the labels, far from painted cells
    full_target, full_weight, _ = plane_targets(labels, AnnotationConfig())
    part_target, part_weight, _ = plane_targets(labels, AnnotationConfig(partial=True))
    assert full_weight[100, 100] > 0 and full_target[100, 100] == 0  # taught as background
    assert part_weight[100, 100] == 0  # partial: not taught at all
    assert part_weight[20, 20] > 0 and part_target[20, 20] == 1  # painted cells still count
    assert part_weight[32, 20] > 0 and part_target[32, 20] == 0  # background next to them too


def test_cli_partial_flag_is_recorded(stack):
    _, _, folder = stack
    path = _cli_train(folder, "partial.safetensors", "--partial")
    assert read_metadata(path).provenance["training"]["steps"] == 3


def test_time_budget_ends_a_run_and_anneals(stack, monkeypatch):
    import types

    import napari_unet.training.trainer as trainer_module

    # the trainer's clock advances 10 ms per reading, so a step "takes" 10 ms: the 0.6 s budget
    # ends the run after about 60 steps however fast or busy the machine is
    readings = iter(range(10**7))
    clock = types.SimpleNamespace(perf_counter=lambda: 0.01 * next(readings))
    monkeypatch.setattr(trainer_module, "time", clock)
    image, labels, _ = stack
    trainer = prepare_run(
        image,
        labels,
        TrainingRecipe(
            training=TrainConfig(steps=10**6, minutes=0.01, tile=60, device="cpu"),
            architecture=TINY,
        ),
    )
    events = list(trainer.run())
    assert events[-1].kind == "done" and 50 <= trainer.step <= 61, trainer.step
    assert 0.6 <= trainer.train_seconds < 0.6 + 0.02  # stopped at the first step past the budget
    start = trainer.optimizer.param_groups[0]["initial_lr"]
    assert trainer.optimizer.param_groups[0]["lr"] < 0.1 * start  # annealed over the budget


def test_best_validated_weights_are_kept(stack):
    image, labels, _ = stack
    trainer = prepare_run(
        image,
        labels,
        TrainingRecipe(
            training=TrainConfig(steps=2, tile=60, device="cpu", val_every=0), architecture=TINY
        ),
    )
    list(trainer.run())
    snapshot = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer._remember_if_best({"val_iou": 0.9, "val_f1": 0.9})
    trainer.step = 2
    trainer.best = (trainer.best[0], 1, trainer.best[2])  # as if step 1 had validated best
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    message = trainer._restore_best()
    assert "step 1" in message and trainer.best_step == 1
    for name, value in snapshot.items():
        assert torch.equal(trainer.model.state_dict()[name], value)


def test_holding_out_every_plane_says_so(stack):
    from napari_unet.errors import AnnotationError

    image, labels, _ = stack
    with pytest.raises(AnnotationError, match="every annotated plane is held out"):
        prepare_run(image, labels, TrainingRecipe(planes=(), val_planes=((0,), (2,))))


def test_auto_hold_out_only_from_four_planes():
    from napari_unet.training.recipe import auto_hold_out

    assert auto_hold_out([(0,), (2,), (3,)]) == []  # the benchmarked default: all planes train
    assert auto_hold_out([(5,), (0,), (2,), (3,)]) == [(3,)]  # the middle one in stack order
    assert auto_hold_out([(1, 0), (0, 3), (0, 1), (2, 2), (1, 1)]) == [(1, 0)]


def test_cli_and_recipe_hold_out_the_same_plane_of_four(tmp_path, one_torch_thread):
    """One rule for every entry point: 4 annotated planes -> the middle one is scored, never
    trained on; --val-slices none trains on all four."""
    image, truth = make_cell_stack(5, CellSampleConfig(shape=(64, 64), n_cells=4), seed=1)
    labels = truth.copy()
    labels[3] = 0  # annotated: 0, 1, 2, 4
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    recipe = TrainingRecipe(architecture=TINY, training=TrainConfig(steps=1, device="cpu"))
    trainer = prepare_run(image, labels, recipe)
    assert [p.index for p in trainer.val_planes] == [(2,)]
    assert [p.index for p in trainer.planes] == [(0,), (1,), (4,)]
    auto = _cli_train(tmp_path, "auto.safetensors")
    assert read_metadata(auto).provenance["val_planes"] == [[2]]
    every = _cli_train(tmp_path, "all.safetensors", "--val-slices", "none")
    assert read_metadata(every).provenance["val_planes"] == []

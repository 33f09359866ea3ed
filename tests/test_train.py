"""Training: events, learning, checkpoints, exact resume, fine-tuning, bad annotations."""

import numpy as np
import pytest
import torch

from napari_unet.annotation.schema import AnnotationConfig, training_planes
from napari_unet.errors import AnnotationError, InputError
from napari_unet.io.modelfile import load_model
from napari_unet.model import UNet, UNetConfig
from napari_unet.sample_data import CellSampleConfig, make_cell_stack
from napari_unet.training.augment import AugmentConfig
from napari_unet.training.checkpoint import read_checkpoint_metadata
from napari_unet.training.trainer import TrainConfig, Trainer

TINY = UNetConfig(width=4, depth=2, norm="batch", dropout=0.2)


@pytest.fixture(scope="module")
def data():
    image, truth = make_cell_stack(
        3, CellSampleConfig(shape=(96, 96), n_cells=8, cell_radius=10), seed=2
    )
    labels = np.zeros_like(truth)
    labels[0], labels[2] = truth[0], truth[2]
    planes, k = training_planes(image, labels)
    val, _ = training_planes(image, truth, planes=[(1,)])
    return planes, val


def _trainer(planes, steps, ckpt=None, val=None, **kw):
    torch.manual_seed(0)
    cfg = TrainConfig(
        steps=steps,
        batch_size=2,
        tile=60,
        device="cpu",
        seed=7,
        val_every=3,
        checkpoint_every=0,
        augment=AugmentConfig(),
        **kw,
    )
    return Trainer(UNet(TINY), planes, cfg, val_planes=val, checkpoint_path=ckpt)


def test_events_and_loss_falls(data):
    planes, val = data
    trainer = _trainer(planes, 30, val=val, lr=3e-3)
    events = list(trainer.run())
    kinds = [e.kind for e in events]
    assert kinds.count("step") == 30 and kinds[-1] == "done"
    assert kinds.count("validation") == 10
    val_event = next(e for e in events if e.kind == "validation")
    assert 0.0 <= val_event.metrics["val_iou"] <= 1.0
    losses = [e.loss for e in events if e.kind == "step"]
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    step = next(e for e in events if e.kind == "step")
    assert step.tiles_per_s > 0 and step.eta_s >= 0


def test_warmup_ramps_the_learning_rate_up(data):
    planes, _ = data
    trainer = _trainer(planes, 10, warmup=0.5, lr=1e-2)
    rates = []
    for event in trainer.run():
        if event.kind == "step":
            rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert rates[0] <= 1.01e-3 and rates[0] < rates[2] < rates[4]  # rising over the first half
    assert rates[5] == pytest.approx(5.25e-3) and rates[5] > rates[7] > rates[9]  # then cosine
    with pytest.raises(InputError, match="warm-up"):
        TrainConfig(warmup=1.0)


def test_clip_bounds_the_gradient_step(data):
    planes, _ = data
    moved = {}
    for clip in (None, 1e-3):
        trainer = _trainer(planes, 1, optimizer="sgd", lr=1.0, clip=clip)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        list(trainer.run())
        after = [p.detach() for p in trainer.model.parameters()]
        moved[clip] = float(
            torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, before, strict=True)))
        )
    assert moved[1e-3] <= 1e-3 * 1.01 < moved[None]
    with pytest.raises(InputError, match="clip"):
        TrainConfig(clip=0.0)


@pytest.mark.parametrize("ema", [None, 0.9], ids=["last-weights", "ema"])
def test_cancel_then_resume_equals_uninterrupted_run(data, tmp_path, ema):
    planes, _ = data
    torch.use_deterministic_algorithms(True)
    try:
        full = _trainer(planes, 8, ema=ema)
        done = list(full.run())[-1]
        if ema is not None:  # the model holds the average, not the last step's weights
            assert "averaged" in (done.message or "")
            averaged = {k: v for k, v in full.ema.items()}
            assert all(torch.equal(full.model.state_dict()[k], v) for k, v in averaged.items())
        ckpt = tmp_path / "run.ckpt"
        first = _trainer(planes, 8, ckpt=ckpt, ema=ema)
        events = []
        for event in first.run():
            events.append(event)
            if event.kind == "step" and event.step == 3:
                first.cancel()
        assert events[-1].kind == "cancelled" and events[-1].step == 3
        assert ckpt.exists()
        meta = read_checkpoint_metadata(ckpt)
        assert meta.architecture == TINY
        second = _trainer(planes, 8, ckpt=ckpt, ema=ema)
        second.load_checkpoint(ckpt)
        assert second.step == 3
        for _ in second.run():
            pass
    finally:
        torch.use_deterministic_algorithms(False)
    for (name, a), b in zip(
        full.model.state_dict().items(), second.model.state_dict().values(), strict=False
    ):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in full.history] == [h["loss"] for h in second.history]


def test_save_model_and_fine_tune(data, tmp_path):
    planes, _ = data
    trainer = _trainer(planes, 3)
    for _ in trainer.run():
        pass
    path = trainer.save_model(tmp_path / "m.safetensors")
    model, meta = load_model(path)
    assert meta.provenance["steps"] == 3
    assert meta.normalization["method"] == "percentile"
    tuned = Trainer(
        model, planes, TrainConfig(steps=2, tile=60, device="cpu"), parent_model="m.safetensors"
    )
    assert tuned.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    for _ in tuned.run():
        pass
    assert tuned.metadata().provenance["parent_model"] == "m.safetensors"


def test_bad_annotations_give_one_clear_error():
    image = np.zeros((2, 32, 32), np.uint8)
    with pytest.raises(AnnotationError, match="no annotated plane"):
        training_planes(image, np.zeros((2, 32, 32), np.uint16))
    full = np.ones((2, 32, 32), np.uint16)
    with pytest.raises(AnnotationError, match="no background"):
        training_planes(image, full)
    with pytest.raises(AnnotationError, match="no foreground"):
        training_planes(image, np.zeros((2, 32, 32), np.uint16), planes=[(0,)])
    with pytest.raises(InputError, match="do not match"):
        training_planes(image, np.zeros((2, 30, 32), np.uint16))
    nan = image.astype(np.float32)
    nan[0, 0, 0] = np.nan
    labels = np.zeros((2, 32, 32), np.uint16)
    labels[0, 5:10, 5:10] = 1
    with pytest.raises(InputError, match="NaN"):
        training_planes(nan, labels)
    with pytest.raises(AnnotationError, match="whole numbers"):
        training_planes(image, labels.astype(np.float32) + 0.5)
    with pytest.raises(AnnotationError, match="negative"):
        training_planes(image, labels.astype(np.int32) - 1)
    with pytest.raises(InputError, match="steps"):
        TrainConfig(steps=0)


def test_scribbles_and_ignore():
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    labels = np.zeros((40, 40), np.int64)
    labels[5:10, 5:30] = 1  # background stroke
    labels[20:25, 5:30] = 2  # object stroke
    labels[30:35, 5:30] = 65535  # ignore
    (plane,), k = training_planes(image, labels, AnnotationConfig(mode="scribbles"))
    assert k == 2
    assert (plane.weight[0:5] == 0).all()  # unpainted is ignored
    assert (plane.weight[30:35, 5:30] == 0).all()
    assert (plane.target[20:25, 5:30] == 1).all() and (plane.target[5:10, 5:30] == 0).all()
    assert (plane.weight[5:10, 5:30] > 0).all() and (plane.weight[20:25, 5:30] > 0).all()


def test_out_of_memory_halves_the_batch_then_stops_cleanly(data, tmp_path, monkeypatch):
    from napari_unet.errors import OutOfMemory

    planes, _ = data
    real_forward = UNet.forward

    def forward(self, x):
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, x)

    monkeypatch.setattr(UNet, "forward", forward)
    trainer = _trainer(planes, 3)
    events = list(trainer.run())
    warnings = [e.message for e in events if e.kind == "warning"]
    assert warnings == ["out of cpu memory at step 0 with 2 tiles per step; continuing with 1"]
    assert events[-1].kind == "done" and trainer.step == 3 and trainer.config.batch_size == 1
    monkeypatch.setattr(
        UNet, "forward", lambda self, x: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
    )
    stuck = _trainer(planes, 3, ckpt=tmp_path / "oom.ckpt")
    with pytest.raises(OutOfMemory, match="even with one 60 px tile"):
        list(stuck.run())
    assert (tmp_path / "oom.ckpt").exists()


def test_training_planes_reads_only_the_annotated_planes_of_a_lazy_stack():
    import dask.array as da

    image = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)

    def guard(block, block_info=None):
        if block_info[0]["chunk-location"][0] >= 2:
            raise AssertionError("an unannotated plane was read")
        return block

    lazy = da.from_array(image, chunks=(1, 32, 32)).map_blocks(guard, dtype=np.float32)
    labels = np.zeros((4, 32, 32), np.uint16)
    labels[0, 4:12, 4:12] = 1
    labels[1, 10:20, 10:20] = 2
    planes, _ = training_planes(lazy, labels)
    assert [p.index for p in planes] == [(0,), (1,)]
    np.testing.assert_allclose(planes[0].image, training_planes(image, labels)[0][0].image)

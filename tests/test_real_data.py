"""Smoke tests on the paper's real data (skipped when ../shared/data is absent)."""

import numpy as np
import pytest
import tifffile

from napari_unet.annotation.schema import training_planes
from napari_unet.inference.batch import SegmentConfig, segment_stack
from napari_unet.inference.predictor import PredictConfig
from napari_unet.io.files import read_array
from napari_unet.metrics import evaluate
from napari_unet.model import UNet, UNetConfig
from napari_unet.training.trainer import TrainConfig, Trainer


def test_isbi_binary_membrane_labels_train_and_segment(shared_data):
    volume = read_array(shared_data / "isbi2012" / "train-volume.tif")
    labels = read_array(shared_data / "isbi2012" / "train-labels.tif")
    assert volume.shape == labels.shape == (30, 512, 512)
    crop = (slice(0, 3), slice(0, 160), slice(0, 160))
    planes, k = training_planes(volume[crop], labels[crop], planes=[(0,), (1,)])
    assert k == 3  # background, interior, border band
    # 255 = cell, 0 = membrane: cells become separate objects, so the border term is present
    assert planes[0].weight.max() > 5
    trainer = Trainer(
        UNet(UNetConfig(width=4, depth=2, norm="batch", num_classes=3)),
        planes,
        TrainConfig(steps=4, tile=60, batch_size=2, device="cpu"),
    )
    for _ in trainer.run():
        pass
    pred = segment_stack(
        trainer.model,
        trainer.metadata(),
        volume[2:3, :160, :160],
        SegmentConfig(predict=PredictConfig(device="cpu"), instances=False),
    )
    scores = evaluate(pred, (labels[2:3, :160, :160] > 0).astype(np.uint8), ("pixel", "iou"))
    assert 0.0 <= scores["pixel"] <= 1.0


def test_phc_u373_ground_truth_reads_as_instances(shared_data):
    seg = sorted((shared_data / "phc-u373" / "01_GT" / "SEG").glob("man_seg*.tif"))
    assert len(seg) == 15
    gt = tifffile.imread(seg[0])
    frame = read_array(shared_data / "phc-u373" / "01" / f"t{int(seg[0].stem[7:]):03d}.tif")
    assert gt.shape == frame.shape == (520, 696)
    planes, _ = training_planes(frame, gt)
    assert len(planes) == 1 and planes[0].target.max() == 2
    assert len(np.unique(planes[0].instances)) == len(np.unique(gt))
    assert evaluate(gt, gt, ("seg",))["seg"] == pytest.approx(1.0)

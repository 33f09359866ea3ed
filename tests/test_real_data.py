"""Smoke tests on the paper's real data (skipped when ../shared/data is absent)."""

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.annotation.schema import AnnotationConfig, training_planes
from napari_unet.inference.batch import SegmentConfig, segment_stack
from napari_unet.inference.predictor import PredictConfig
from napari_unet.io.files import read_array
from napari_unet.metrics import evaluate
from napari_unet.model import UNet, UNetConfig
from napari_unet.training.trainer import TrainConfig, Trainer


def test_isbi_binary_membrane_labels_train_and_segment(shared_data, one_torch_thread):
    volume = read_array(shared_data / "isbi2012" / "train-volume.tif")
    labels = read_array(shared_data / "isbi2012" / "train-labels.tif")
    assert volume.shape == labels.shape == (30, 512, 512)
    crop = (slice(0, 3), slice(0, 160), slice(0, 160))
    paper = AnnotationConfig(instance_targets="paper")  # the paper's two classes on its data
    planes, k = training_planes(volume[crop], labels[crop], paper, planes=[(0,), (1,)])
    assert k == 2
    # 255 = cell, 0 = membrane: cells become separate objects, so the border term is present
    assert planes[0].weight.max() > 5
    torch.manual_seed(0)  # the initial weights (TrainConfig.seed covers sampling and augmentation)
    trainer = Trainer(
        UNet(UNetConfig(width=4, depth=2, norm="batch")),
        planes,
        TrainConfig(steps=200, tile=60, batch_size=2, device="cpu", seed=0),
    )
    for _ in trainer.run():
        pass
    pred = segment_stack(
        trainer.model,
        trainer.metadata(),
        volume[2:3, :160, :160],
        SegmentConfig(predict=PredictConfig(device="cpu"), instances=False),
    )
    truth = (labels[2:3, :160, :160] > 0).astype(np.uint8)
    scores = evaluate(pred, truth, ("pixel", "iou"))
    # calling every pixel a cell is wrong on the membranes: 0.263 of this held-out plane.
    # Measured after 200 steps on one thread: 0.175 (seed 0), 0.195 and 0.158 (seeds 1, 2);
    # the bound asks for a clear win over that trivial answer
    all_cells = evaluate(np.ones_like(truth), truth, ("pixel",))["pixel"]
    assert 0.25 < all_cells < 0.28
    assert scores["pixel"] < all_cells - 0.04, (scores, all_cells)


def test_phc_u373_ground_truth_reads_as_instances(shared_data):
    seg = sorted((shared_data / "phc-u373" / "01_GT" / "SEG").glob("man_seg*.tif"))
    assert len(seg) == 15
    gt = tifffile.imread(seg[0])
    frame = read_array(shared_data / "phc-u373" / "01" / f"t{int(seg[0].stem[7:]):03d}.tif")
    assert gt.shape == frame.shape == (520, 696)
    planes, _ = training_planes(frame, gt)
    assert len(planes) == 1 and planes[0].target.max() == 1
    assert len(np.unique(planes[0].instances)) == len(np.unique(gt))
    assert evaluate(gt, gt, ("seg",))["seg"] == pytest.approx(1.0)

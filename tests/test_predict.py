"""Overlap-tile prediction: seamless, any size, TTA, uncertainty."""

import numpy as np
import pytest
import torch

from napari_unet.errors import InputError, TileSizeError
from napari_unet.inference.predictor import (
    PredictConfig,
    predict_plane,
    predict_plane_with_uncertainty,
)
from napari_unet.model import UNet, UNetConfig, border

TINY = UNetConfig(width=4, depth=2, dropout=0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNet(TINY).eval()


@pytest.fixture(scope="module")
def plane():
    rng = np.random.default_rng(1)
    return rng.random((1, 150, 173), dtype=np.float32)


def test_two_tile_sizes_give_the_same_result(model, plane):
    a = predict_plane(model, plane, PredictConfig(tile=60, device="cpu"))
    b = predict_plane(model, plane, PredictConfig(tile=108, device="cpu"))
    assert a.shape == (2, 150, 173)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_tiles_equal_one_pass_over_the_padded_image(model, plane):
    tiled = predict_plane(model, plane, PredictConfig(tile=60, batch_size=3, device="cpu"))
    b = border(TINY)
    padded = np.pad(plane, ((0, 0), (b, b), (b, b)), mode="reflect")
    # grow to a valid size for one pass (extra rows/cols on the far side only)
    h = 4 * int(np.ceil((padded.shape[1] - 4 * 3) / 4)) + 12
    w = 4 * int(np.ceil((padded.shape[2] - 4 * 3) / 4)) + 12
    padded = np.pad(
        plane, ((0, 0), (b, h - plane.shape[1] - b), (b, w - plane.shape[2] - b)), mode="reflect"
    )
    with torch.inference_mode():
        whole = torch.softmax(model(torch.from_numpy(padded)[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(tiled, whole[:, : plane.shape[1], : plane.shape[2]], atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (20, 20)])
def test_images_smaller_than_a_tile_are_segmented(model, shape):
    plane = np.random.default_rng(0).random((1,) + shape, dtype=np.float32)
    probs = predict_plane(model, plane, PredictConfig(device="cpu"))
    assert probs.shape == (2,) + shape
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_tta_and_uncertainty(model, plane):
    probs = predict_plane(model, plane, PredictConfig(tta=True, device="cpu"))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    mean, spread = predict_plane_with_uncertainty(
        model, plane[:, :64, :80], PredictConfig(device="cpu")
    )
    assert mean.shape == (2, 64, 80) and spread.shape == (64, 80)
    assert spread.min() >= 0 and spread.max() > 0  # an untrained net disagrees with itself


def test_tta_makes_predictions_rotation_equivariant(model):
    plane = np.random.default_rng(3).random((1, 40, 52), dtype=np.float32)
    rotated = np.ascontiguousarray(np.rot90(plane, 1, axes=(1, 2)))
    plain = predict_plane(model, plane, PredictConfig(device="cpu"))
    plain_rot = predict_plane(model, rotated, PredictConfig(device="cpu"))
    # a general network is not rotation-equivariant ...
    assert not np.allclose(np.rot90(plain, 1, axes=(1, 2)), plain_rot, atol=1e-4)
    # ... averaging over the 8 flips/rotations makes it so
    tta = predict_plane(model, plane, PredictConfig(tta=True, device="cpu"))
    tta_rot = predict_plane(model, rotated, PredictConfig(tta=True, device="cpu"))
    np.testing.assert_allclose(np.rot90(tta, 1, axes=(1, 2)), tta_rot, atol=1e-5)


def test_bad_tile_and_channels_are_refused(model, plane):
    with pytest.raises(TileSizeError, match="nearest valid sizes"):
        predict_plane(model, plane, PredictConfig(tile=61, device="cpu"))
    with pytest.raises(InputError, match="channel"):
        predict_plane(model, np.zeros((3, 40, 40), np.float32), PredictConfig(device="cpu"))


@pytest.mark.parametrize("depth", [3, 4])
def test_deep_networks_tile_on_the_pooling_grid(depth):
    # tiles must start on multiples of 2**depth, else max-pooling sees a shifted grid and seams
    # appear
    torch.manual_seed(depth)
    cfg = UNetConfig(width=2, depth=depth, dropout=0.0)
    net = UNet(cfg).eval()
    plane = np.random.default_rng(depth).random((1, 70, 61), dtype=np.float32)
    from napari_unet.model import input_size_for_output

    t1 = input_size_for_output(cfg, 20)
    t2 = input_size_for_output(cfg, 45)
    a = predict_plane(net, plane, PredictConfig(tile=t1, device="cpu"))
    c = predict_plane(net, plane, PredictConfig(tile=t2, device="cpu"))
    np.testing.assert_allclose(a, c, atol=1e-5)

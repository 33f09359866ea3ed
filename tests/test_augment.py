"""Tests for napari_unet.training.augment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_unet.errors import InputError
from napari_unet.training.augment import (
    AugmentConfig,
    augment_batch,
    augment_preview,
    elastic_displacement,
    sampling_grid,
    warp,
)


def _batch(n: int = 4, size: int = 64, channels: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.random((n, channels, size, size), dtype=np.float32))
    target = torch.from_numpy(rng.integers(0, 3, (n, size, size))).to(torch.int64)
    weight = ((target > 0) * 2 + 1).to(torch.float32)
    return image, target, weight


def _pattern(size: int = 32) -> np.ndarray:
    """Asymmetric test pattern: no flip or rotation maps it onto itself."""
    a = np.zeros((size, size), np.float32)
    a[2:6, 3:20] = 1.0
    a[8:25, 4:7] = 0.5
    a[20:22, 24:30] = 0.25
    return a


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("config", [AugmentConfig.none(), AugmentConfig(strength=0.0)])
def test_identity(config):
    image, target, weight = _batch()
    out = augment_batch(image, target, weight, config, _gen(1))
    assert torch.allclose(out[0], image, atol=1e-6)
    assert torch.equal(out[1], target)
    assert torch.equal(out[2], weight)


def test_grid_path_without_changes_is_identity():
    # strength 1 but every component off: exercises grid_sample with the identity grid
    config = AugmentConfig(elastic_sigma=0.0, rotate=False, flip=False, shift=0.0, intensity=0.0)
    image, target, weight = _batch()
    grid = sampling_grid((64, 64), matrix=torch.eye(2).expand(4, 2, 2))
    out = warp(image, target, weight, grid)
    assert torch.allclose(out[0], image, atol=1e-5)
    assert torch.equal(out[1], target) and torch.equal(out[2], weight)
    out = augment_batch(image, target, weight, config, _gen(0))
    assert torch.allclose(out[0], image, atol=1e-5)


def test_shapes_dtypes_labels_and_weight_consistency():
    image, target, weight = _batch(channels=2)
    img, tgt, wgt = augment_batch(image, target, weight, AugmentConfig(shift=5.0), _gen(3))
    assert img.shape == image.shape and img.dtype == image.dtype
    assert tgt.shape == target.shape and tgt.dtype == torch.int64
    assert wgt.shape == weight.shape and wgt.dtype == weight.dtype
    assert set(tgt.unique().tolist()) <= set(target.unique().tolist())
    assert torch.equal(wgt, ((tgt > 0) * 2 + 1).to(torch.float32))
    assert not torch.equal(tgt, target)


def test_ignore_regions_move_with_target():
    image, target, _ = _batch()
    weight = (target != 2).to(torch.float32)  # class 2 marked "ignore"
    _, tgt, wgt = augment_batch(image, target, weight, AugmentConfig(strength=2.0), _gen(5))
    assert torch.equal(wgt == 0, tgt == 2)


def test_seed_reproducible_and_different():
    image, target, weight = _batch()
    a = augment_batch(image, target, weight, AugmentConfig(shift=4.0), _gen(7))
    b = augment_batch(image, target, weight, AugmentConfig(shift=4.0), _gen(7))
    c = augment_batch(image, target, weight, AugmentConfig(shift=4.0), _gen(8))
    for x, y in zip(a, b, strict=False):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_samples_in_a_batch_differ():
    image, target, weight = _batch()
    same = image[:1].expand(4, -1, -1, -1).contiguous()
    img, _, _ = augment_batch(same, target, weight, AugmentConfig(), _gen(0))
    assert not torch.equal(img[0], img[1])


def test_elastic_displacement_smooth_and_scaled():
    config = AugmentConfig()
    gen = _gen(11)
    fields = torch.stack([elastic_displacement((256, 256), config, gen) for _ in range(30)])
    assert fields.shape == (30, 2, 256, 256) and fields.dtype == torch.float32
    grad = torch.cat([fields.diff(dim=-1).flatten(), fields.diff(dim=-2).flatten()]).abs()
    assert grad.max() < config.elastic_sigma / 4
    assert grad.max() < 1.0  # no folding at the paper's settings
    # at the 3x3 coarse grid points the field is exactly the N(0, sigma^2) draws
    nodes = fields[:, :, ::127, ::127][:, :, :3, :3]  # 0, 127, 254 ~ grid points 0, 127.5, 255
    corners = fields[:, :, ::255, ::255]
    assert 8.5 < corners.std() < 11.5
    assert 7.0 < nodes.std() < 11.5
    assert 6.0 < fields.std() < 10.0  # interpolation averages in between


def test_elastic_displacement_strength_scales():
    half = elastic_displacement((64, 64), AugmentConfig(strength=0.5), _gen(2))
    full = elastic_displacement((64, 64), AugmentConfig(), _gen(2))
    assert torch.allclose(half * 2, full, atol=1e-5)
    zero = elastic_displacement((64, 64), AugmentConfig(strength=0.0), _gen(2))
    assert torch.count_nonzero(zero) == 0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotation_by_90_degrees(k):
    pattern = _pattern()
    a = k * math.pi / 2
    matrix = torch.tensor([[[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]])
    image = torch.from_numpy(pattern)[None, None]
    target = (image[:, 0] * 4).to(torch.int64)
    grid = sampling_grid(pattern.shape, matrix=matrix)
    img, tgt, _ = warp(image, target, torch.ones_like(image[:, 0]), grid)
    np.testing.assert_allclose(img[0, 0].numpy(), np.rot90(pattern, k), atol=1e-5)
    np.testing.assert_array_equal(tgt[0].numpy(), np.rot90(target[0].numpy(), k))


def test_flips_only_give_one_of_four_flips():
    pattern = _pattern()
    config = AugmentConfig(elastic_sigma=0.0, rotate=False, intensity=0.0)
    image = torch.from_numpy(pattern)[None, None].expand(16, 1, -1, -1).contiguous()
    target = (image[:, 0] * 4).to(torch.int64)
    img, tgt, _ = augment_batch(image, target, torch.ones_like(image[:, 0]), config, _gen(4))
    options = [pattern, pattern[::-1], pattern[:, ::-1], pattern[::-1, ::-1]]
    seen = set()
    for i in range(16):
        matches = [j for j, o in enumerate(options) if np.allclose(img[i, 0].numpy(), o, atol=1e-5)]
        assert len(matches) == 1
        np.testing.assert_array_equal(tgt[i].numpy(), (options[matches[0]] * 4).astype(np.int64))
        seen.add(matches[0])
    assert len(seen) >= 3  # 16 fair draws: all four are expected


def test_shift_moves_content():
    pattern = _pattern()
    image = torch.from_numpy(pattern)[None, None]
    grid = sampling_grid(pattern.shape, shift=torch.tensor([[3.0, -2.0]]))
    img, _, _ = warp(image, torch.zeros((1, 32, 32), dtype=torch.int64), image[:, 0], grid)
    # output(y, x) = input(y - 2, x + 3)
    np.testing.assert_allclose(img[0, 0, 2:, :-3].numpy(), pattern[:-2, 3:], atol=1e-5)


def test_intensity_is_monotone_and_bounded():
    ramp = torch.linspace(-0.2, 1.2, 141).view(1, 1, 1, 141).expand(8, 1, 4, 141).contiguous()
    config = AugmentConfig(elastic_sigma=0.0, rotate=False, flip=False, intensity=1.0)
    target = torch.zeros((8, 4, 141), dtype=torch.int64)
    img, _, _ = augment_batch(ramp, target, torch.ones((8, 4, 141)), config, _gen(9))
    assert (img.diff(dim=-1) > 0).all()
    black = img[..., 20]  # value at 0
    white = img[..., 120]  # value at 1
    assert black.abs().max() <= 0.05 + 1e-6 and (white - 1).abs().max() <= 0.05 + 1e-6
    assert not torch.allclose(img, ramp)
    strong = AugmentConfig(elastic_sigma=0.0, rotate=False, flip=False, intensity=2.0)
    img, _, _ = augment_batch(ramp, target, torch.ones((8, 4, 141)), strong, _gen(9))
    assert (img.diff(dim=-1) > 0).all()


def test_non_square_and_float64():
    image = torch.rand((2, 3, 40, 70), dtype=torch.float64, generator=_gen(0))
    target = torch.randint(0, 5, (2, 40, 70), generator=_gen(1))
    weight = torch.rand((2, 40, 70), dtype=torch.float64, generator=_gen(2))
    img, tgt, wgt = augment_batch(image, target, weight, AugmentConfig(), _gen(3))
    assert img.shape == image.shape and img.dtype == torch.float64
    assert tgt.dtype == torch.int64 and wgt.dtype == torch.float64
    assert set(wgt.unique().tolist()) <= set(weight.unique().tolist())


def test_preview():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (48, 48)).astype(np.uint16)
    target = rng.integers(0, 3, (48, 48)).astype(np.uint8)
    weight = np.ones((48, 48), np.float32)
    img, tgt, wgt = augment_preview(image, target, weight, AugmentConfig(), n=3, seed=1)
    assert img.shape == (3, 48, 48) and img.dtype == np.float32
    assert tgt.shape == (3, 48, 48) and tgt.dtype == np.uint8 and wgt.shape == (3, 48, 48)
    assert -0.5 < img.min() and img.max() < 1.5
    again = augment_preview(image, target, weight, AugmentConfig(), n=3, seed=1)
    assert np.array_equal(img, again[0])
    img2, _, _ = augment_preview(np.stack([image, image]), target, weight, AugmentConfig(), n=2)
    assert img2.shape == (2, 2, 48, 48)
    with pytest.raises(InputError):
        augment_preview(image, target[:10], weight, AugmentConfig())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"elastic_sigma": -1.0},
        {"elastic_grid": 1},
        {"shift": -2.0},
        {"strength": -0.1},
        {"strength": 10.0},
        {"intensity": 3.0},
        {"elastic_grid": 2.5},
    ],
)
def test_invalid_config(kwargs):
    with pytest.raises(InputError, match="augmentation"):
        AugmentConfig(**kwargs)


def test_bad_shapes():
    image, target, weight = _batch()
    with pytest.raises(InputError):
        augment_batch(image[0], target, weight, AugmentConfig(), _gen(0))
    with pytest.raises(InputError):
        augment_batch(image, target[:, :10], weight, AugmentConfig(), _gen(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_seed_same_result_on_cuda():
    image, target, weight = _batch()
    cpu = augment_batch(image, target, weight, AugmentConfig(shift=3.0), _gen(12))
    gpu = augment_batch(
        image.cuda(), target.cuda(), weight.cuda(), AugmentConfig(shift=3.0), _gen(12)
    )
    assert all(t.device.type == "cuda" for t in gpu)
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-3)
    assert (cpu[1] != gpu[1].cpu()).float().mean() < 1e-3  # nearest ties may round differently
    assert torch.equal(gpu[2], ((gpu[1] > 0) * 2 + 1).to(torch.float32))

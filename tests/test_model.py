"""The paper's U-Net and its tile algebra."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.errors import InputError, TileSizeError
from napari_unet.model import (
    PRESETS,
    UNet,
    UNetConfig,
    border,
    check_input_size,
    count_conv_layers,
    count_parameters,
    input_size_for_output,
    is_valid_input_size,
    min_input_size,
    nearest_valid_sizes,
    output_size,
)


def test_paper_network_matches_the_paper():
    net = UNet()
    assert count_parameters(net) == 31_030_658
    assert count_conv_layers(net) == 23
    assert output_size(UNetConfig(), 572) == 388
    assert min_input_size(UNetConfig()) == 188
    assert output_size(UNetConfig(), 188) == 4
    assert border(UNetConfig()) == 92


def test_paper_network_forward_shape():
    net = UNet().eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, 1, 572, 572))
    assert tuple(out.shape) == (1, 2, 388, 388)


def test_he_initialisation_std():
    net = UNet(UNetConfig(width=16, depth=3))
    conv = net.down[1][0]  # 16 -> 32 channels, 3x3: fan-in 144
    assert conv.weight.std().item() == pytest.approx((2 / 144) ** 0.5, rel=0.1)
    assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("depth", [3, 4, 5])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_every_depth_and_padding_follows_its_tile_algebra(depth, padding):
    cfg = UNetConfig(width=2, depth=depth, padding=padding, dropout=0.0)
    net = UNet(cfg).eval()
    size = input_size_for_output(cfg, 20)
    assert is_valid_input_size(cfg, size)
    with torch.inference_mode():
        out = net(torch.zeros(1, 1, size, size))
    assert out.shape[-1] == output_size(cfg, size)
    if padding == "same":
        assert out.shape[-1] == size
    else:
        assert out.shape[-1] == size - 2 * (3 * 2**depth - 2) * 2


def test_variants_norm_channels_classes():
    for norm in ("batch", "group"):
        cfg = UNetConfig(in_channels=3, num_classes=4, width=8, depth=2, norm=norm)
        out = UNet(cfg).eval()(torch.zeros(2, 3, 92, 92))
        assert out.shape[:2] == (2, 4)


def test_invalid_size_names_nearest_valid_sizes():
    with pytest.raises(TileSizeError, match=r"nearest valid sizes: 556 or 572"):
        check_input_size(UNetConfig(), 570)
    with pytest.raises(TileSizeError, match="188"):
        check_input_size(UNetConfig(), 100)


def test_invalid_configuration_is_refused():
    with pytest.raises(InputError):
        UNetConfig(depth=0)
    with pytest.raises(InputError):
        UNetConfig(padding="full")
    with pytest.raises(InputError):
        UNetConfig.from_dict({"width": 16, "evil": 1})


def test_small_preset_is_cpu_friendly():
    assert count_parameters(UNet(PRESETS["small"])) < 1_000_000


@settings(max_examples=60, deadline=None)
@given(
    depth=st.integers(1, 6), padding=st.sampled_from(["valid", "same"]), size=st.integers(1, 2000)
)
def test_tile_geometry_properties(depth, padding, size):
    cfg = UNetConfig(depth=depth, padding=padding, width=8)
    below, above = nearest_valid_sizes(cfg, size)
    assert is_valid_input_size(cfg, above) and above >= size
    if below is not None:
        assert is_valid_input_size(cfg, below) and below <= size
    if is_valid_input_size(cfg, size):
        assert below == above == size
        # the output, grown back by the border, is the input
        assert output_size(cfg, size) + 2 * border(cfg) == size
    else:
        with pytest.raises(TileSizeError):
            check_input_size(cfg, size)
    # every pooling step sees an even size
    if is_valid_input_size(cfg, size) and padding == "valid":
        s = size
        for _ in range(depth):
            s -= 4
            assert s % 2 == 0
            s //= 2


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_smallest_valid_size_is_its_own_nearest(depth, padding):
    """Regression: at exactly the smallest valid size, 'below' used to be None."""
    from napari_unet.model import min_input_size

    cfg = UNetConfig(depth=depth, padding=padding, width=8)
    low = min_input_size(cfg)
    assert nearest_valid_sizes(cfg, low) == (low, low)
    assert nearest_valid_sizes(cfg, low - 1) == (None, low)

"""The U-Net of Ronneberger et al. (2015) and its tile geometry.

Defaults reproduce the paper exactly: 1 input channel, 2 classes, width 64, depth 4, unpadded
("valid") 3x3 convolutions, 2x2 max-pooling, 2x2 up-convolutions, centre crop + concatenation,
1x1 head, He initialisation and dropout at the end of the contracting path: 23 conv layers,
31,030,658 parameters, a 572x572 input gives a 388x388 output.

Tile algebra for depth ``d`` with valid padding and ``b`` the spatial size at the bottom level::

    input  = 2**d * b + 4 * (2**d - 1)
    output = 2**d * b - 4 * (2**(d + 1) - 1)      (b >= 8, so the output is >= 1 px)

For ``same`` padding input == output and the size must be a multiple of ``2**d``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import nn

from napari_unet.defaults import form_field
from napari_unet.errors import InputError, TileSizeError

Padding = Literal["valid", "same"]
Norm = Literal["none", "batch", "group"]

MIN_BOTTOM_SIZE = 8  # smallest bottom-level size with a non-empty valid output for every depth


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net; stored in every model file.

    Parameters
    ----------
    in_channels : number of image channels.
    num_classes : number of output classes (background included).
    width : channels of the first level; doubled at every level down (paper: 64).
    depth : number of 2x2 max-pool steps (paper: 4).
    padding : ``"valid"`` (the paper's unpadded convolutions) or ``"same"``.
    norm : normalisation after each convolution: ``"none"`` (paper), ``"batch"`` or ``"group"``.
    dropout : dropout rate at the end of the contracting path (paper: 0.5).
    """

    in_channels: int = 1
    num_classes: int = 2
    # field metadata: label, limits and tooltip of the widget form (napari_unet._widgets._forms)
    width: int = form_field(
        64,
        "custom width",
        "custom network: channels of the first level (paper: 64)",
        min=1,
        max=256,
    )
    depth: int = form_field(
        4, "custom depth", "custom network: pooling steps (paper: 4)", min=1, max=6
    )
    padding: Padding = form_field(
        "valid",
        "custom padding",
        "custom network: valid (the paper: output smaller than the input tile, "
        "seamless overlap-tile prediction) or same (output as large as the input)",
        choices=["valid", "same"],
    )
    norm: Norm = "none"
    dropout: float = 0.5

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.in_channels <= 64:
            problems.append(f"in_channels must be 1..64, got {self.in_channels}")
        if not 2 <= self.num_classes <= 256:
            problems.append(f"num_classes must be 2..256, got {self.num_classes}")
        if not 1 <= self.width <= 256:
            problems.append(f"width must be 1..256, got {self.width}")
        if not 1 <= self.depth <= 6:
            problems.append(f"depth must be 1..6, got {self.depth}")
        if self.padding not in ("valid", "same"):
            problems.append(f"padding must be 'valid' or 'same', got {self.padding!r}")
        if self.norm not in ("none", "batch", "group"):
            problems.append(f"norm must be 'none', 'batch' or 'group', got {self.norm!r}")
        if self.norm == "group" and self.width % 8:
            problems.append("group norm needs a width divisible by 8")
        if not 0.0 <= float(self.dropout) < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise InputError("invalid U-Net configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build from a dictionary, refusing unknown keys and wrong types."""
        if not isinstance(data, dict):
            raise InputError("U-Net configuration must be a mapping")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"unknown U-Net configuration keys: {', '.join(unknown)}")
        clean: dict[str, Any] = {}
        for name, value in data.items():
            if name in ("padding", "norm"):
                if not isinstance(value, str):
                    raise InputError(f"U-Net configuration {name} must be a string")
            elif name == "dropout":
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise InputError("U-Net configuration dropout must be a number")
                value = float(value)
            elif not isinstance(value, int) or isinstance(value, bool):
                raise InputError(f"U-Net configuration {name} must be an integer")
            clean[name] = value
        return cls(**clean)

    def with_(self, **changes: Any) -> UNetConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


#: Named architectures. ``paper`` is the 2015 network; ``small`` trains in minutes on a laptop CPU.
PRESETS: dict[str, UNetConfig] = {
    "paper": UNetConfig(),
    "small": UNetConfig(width=16, depth=3, norm="batch", dropout=0.1),
}


# --------------------------------------------------------------------------------------------
# Tile geometry
# --------------------------------------------------------------------------------------------


def border(config: UNetConfig) -> int:
    """Pixels lost on each side of a tile (92 for the paper's network, 0 for ``same``)."""
    if config.padding == "same":
        return 0
    return 2 * (3 * 2**config.depth - 2)


def _input_for_bottom(config: UNetConfig, bottom: int) -> int:
    if config.padding == "same":
        return 2**config.depth * bottom
    return 2**config.depth * bottom + 4 * (2**config.depth - 1)


def min_input_size(config: UNetConfig) -> int:
    """Smallest valid input tile edge (188 for the paper's network)."""
    if config.padding == "same":
        return 2**config.depth
    return _input_for_bottom(config, MIN_BOTTOM_SIZE)


def is_valid_input_size(config: UNetConfig, size: int) -> bool:
    """Whether an input tile edge passes every pooling step on an even size."""
    step = 2**config.depth
    if size < min_input_size(config):
        return False
    return (size - _input_for_bottom(config, 0)) % step == 0


def output_size(config: UNetConfig, input_size: int) -> int:
    """Output edge for an input edge; raises :class:`TileSizeError` for invalid sizes."""
    check_input_size(config, input_size)
    return input_size - 2 * border(config)


def input_size_for_output(config: UNetConfig, min_output: int) -> int:
    """Smallest valid input edge whose output is at least ``min_output``."""
    size = min_input_size(config)
    step = 2**config.depth
    need = max(int(min_output), 1) + 2 * border(config)
    if need > size:
        size += math.ceil((need - size) / step) * step
    return size


def nearest_valid_sizes(config: UNetConfig, size: int) -> tuple[int | None, int]:
    """The valid input edges just below (None if there is none) and just above ``size``."""
    step = 2**config.depth
    low = min_input_size(config)
    if size < low:
        return (None, low)
    if size == low:
        return (low, low)
    above = low + math.ceil((size - low) / step) * step
    below = above if above == size else above - step
    return (below, above)


def check_input_size(config: UNetConfig, size: int) -> None:
    """Refuse an input edge the network cannot process, naming the nearest valid edges."""
    if isinstance(size, bool) or not isinstance(size, (int,)) and not hasattr(size, "__index__"):
        raise TileSizeError(f"tile size must be an integer, got {size!r}")
    size = int(size)
    if is_valid_input_size(config, size):
        return
    below, above = nearest_valid_sizes(config, size)
    options = f"{below} or {above}" if below is not None else f"{above} (the smallest)"
    raise TileSizeError(
        f"tile size {size} is not valid for this network "
        f"(depth {config.depth}, {config.padding} padding); nearest valid sizes: {options}"
    )


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class DoubleConv(nn.Sequential):
    """[3x3 conv -> (norm) -> ReLU] x 2."""

    def __init__(self, in_ch: int, out_ch: int, padding: int, norm: str) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=padding, bias=bias),
            _norm_layer(norm, out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=padding, bias=bias),
            _norm_layer(norm, out_ch),
            nn.ReLU(inplace=True),
        )


def center_crop(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the centre ``height x width`` of an NCHW tensor."""
    top = (features.shape[-2] - height) // 2
    left = (features.shape[-1] - width) // 2
    return features[..., top : top + height, left : left + width]


class UpConcat(nn.Module):
    """2x2 up-convolution halving the channels, crop-and-concatenate the skip, then DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, padding: int, norm: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_ch, out_ch, padding, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        skip = center_crop(skip, x.shape[-2], x.shape[-1])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """The U-Net; ``forward`` maps N x C x H x W to N x K x H' x W' class scores (logits)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        cfg = self.config
        pad = 1 if cfg.padding == "same" else 0
        widths = [cfg.width * 2**level for level in range(cfg.depth + 1)]
        self.down = nn.ModuleList()
        in_ch = cfg.in_channels
        for level in range(cfg.depth):
            self.down.append(DoubleConv(in_ch, widths[level], pad, cfg.norm))
            in_ch = widths[level]
        self.pool = nn.MaxPool2d(2)
        self.bottom = DoubleConv(widths[-2], widths[-1], pad, cfg.norm)
        # The released network drops out after the last two contracting levels.
        self.dropout = nn.Dropout2d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.up = nn.ModuleList(
            UpConcat(widths[level + 1], widths[level], pad, cfg.norm)
            for level in reversed(range(cfg.depth))
        )
        self.head = nn.Conv2d(widths[0], cfg.num_classes, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation: N(0, sqrt(2 / fan_in)) for every (up-)convolution; biases 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
                if isinstance(module, nn.ConvTranspose2d):
                    fan_in = (
                        module.weight.shape[0] * module.weight.shape[2] * module.weight.shape[3]
                    )
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level == self.config.depth - 1:
                x = self.dropout(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for block, skip in zip(self.up, reversed(skips), strict=False):
            x = block(x, skip)
        return self.head(x)


def widen_input(model: UNet, channels: int) -> UNet:
    """A copy of a one-channel ``model`` that takes ``channels`` channels.

    The first convolution's weights are split equally between the channels, so the copy starts
    out computing exactly what ``model`` computes on the channels' mean; every other weight is
    copied. This is how a grey-scale starting model is fine-tuned on RGB (H&E) planes."""
    if model.config.in_channels != 1:
        raise ValueError(f"only a one-channel model can be widened, not {model.config.in_channels}")
    wide = UNet(model.config.with_(in_channels=channels))
    state = dict(model.state_dict())
    first = "down.0.0.weight"
    state[first] = state[first].repeat(1, channels, 1, 1) / channels
    wide.load_state_dict(state, strict=True)
    return wide.train(model.training)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_conv_layers(model: nn.Module) -> int:
    """Number of (up-)convolution layers, the head included (23 for the paper's network)."""
    return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())

"""Data augmentation for training tiles: elastic + rigid + gray-value variation, in torch.

Follows the U-Net paper (Ronneberger et al. 2015, section 3.1) and the released U-Net tooling
(Falk et al. 2019):

* elastic deformation: random displacement vectors on a coarse ``elastic_grid`` x ``elastic_grid``
  grid, each component drawn from a Gaussian with ``elastic_sigma`` px standard deviation, upsampled
  to a per-pixel field with bicubic interpolation;
* rotation by any angle, random horizontal/vertical flips, optional uniform shift;
* gray-value variation: black level ``+-0.05``, white level ``1 +- 0.05`` and a monotone curve whose
  slope at mid-gray is ``1 +- 0.2`` (all scaled by ``intensity * strength``).

The elastic field and the rigid transform are composed into one sampling grid per sample, so every
tensor is interpolated exactly once: the image bilinearly, the target and the weight map together
with nearest neighbour (so ignore regions stay exactly 0 and weights stay consistent with targets).
Outside the tile the data are extrapolated by mirroring (``padding_mode="reflection"``).

All randomness comes from a CPU :class:`torch.Generator`; sampled numbers are then moved to the
tensors' device, so a seed gives the same result on CPU, CUDA and MPS (up to float rounding).

Conventions: displacement fields are ``(2, H, W)`` with channel 0 the row (y) and channel 1 the
column (x) displacement in pixels; sampling grids are ``(N, H, W, 2)`` in the ``(x, y)``
normalised coordinates of :func:`torch.nn.functional.grid_sample` with ``align_corners=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from napari_unet.errors import InputError

__all__ = [
    "AugmentConfig",
    "augment_batch",
    "augment_preview",
    "preview_row",
    "elastic_displacement",
    "sampling_grid",
    "warp",
]

ALIGN_CORNERS = True  # pixel centres of the first/last row/column map to -1/+1
MAX_STRENGTH = 5.0


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings; the defaults are the paper's.

    Parameters
    ----------
    elastic_sigma : standard deviation (px) of the coarse-grid displacement vectors (paper: 10).
    elastic_grid : number of coarse grid points per axis (paper: 3, i.e. 3x3).
    rotate : rotate every sample by a uniformly random angle in [0, 360) degrees.
    flip : flip every sample horizontally and vertically, each with probability 1/2.
    shift : maximal shift (px) per axis, drawn uniformly; 0 because training tiles are usually
        cut at random positions anyway.
    intensity : strength of the gray-value variation (1 = Falk et al.'s ranges).
    strength : scales ``elastic_sigma``, ``shift`` and ``intensity`` together; 0 switches every
        augmentation off, rotations and flips included (the exact identity).
    """

    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    rotate: bool = True
    flip: bool = True
    shift: float = 0.0
    intensity: float = 1.0
    strength: float = field(
        default=1.0,
        metadata={  # label, limits and tooltip of the widget form (napari_unet._widgets._forms)
            "label": "augmentation",
            "widget_type": "FloatSlider",
            "min": 0.0,
            "max": 2.0,
            "tooltip": "strength of the augmentation: 1 = the paper's elastic deformation "
            "(3x3 grid, sigma 10 px) with rotations, flips and gray-value variation; 0 switches "
            "all of it off; 2 doubles the deformation",
        },
    )

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= float(self.elastic_sigma) <= 100.0:
            problems.append(f"elastic_sigma must be 0..100 px, got {self.elastic_sigma}")
        if isinstance(self.elastic_grid, bool) or not isinstance(self.elastic_grid, int):
            problems.append(f"elastic_grid must be an integer, got {self.elastic_grid!r}")
        elif not 2 <= self.elastic_grid <= 64:
            problems.append(f"elastic_grid must be 2..64, got {self.elastic_grid}")
        if not 0.0 <= float(self.shift) <= 1000.0:
            problems.append(f"shift must be 0..1000 px, got {self.shift}")
        if not 0.0 <= float(self.strength) <= MAX_STRENGTH:
            problems.append(f"strength must be 0..{MAX_STRENGTH:g}, got {self.strength}")
        if not 0.0 <= float(self.intensity) * float(self.strength) <= 2.0:
            problems.append(
                "intensity * strength must be 0..2 so that the gray-value curve stays monotone, "
                f"got {float(self.intensity) * float(self.strength):g}"
            )
        if problems:
            raise InputError("invalid augmentation configuration: " + "; ".join(problems))

    @classmethod
    def none(cls) -> AugmentConfig:
        """The identity: no deformation, rotation, flip, shift or gray-value change."""
        return cls(
            elastic_sigma=0.0, rotate=False, flip=False, shift=0.0, intensity=0.0, strength=0.0
        )

    @property
    def is_identity(self) -> bool:
        """True when :func:`augment_batch` returns its inputs unchanged."""
        s = float(self.strength)
        return s == 0.0 or (
            self.elastic_sigma == 0
            and self.shift == 0
            and self.intensity == 0
            and not self.rotate
            and not self.flip
        )


def elastic_displacement(
    shape: tuple[int, int],
    config: AugmentConfig,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Smooth random displacement field of one sample, in pixels.

    Parameters
    ----------
    shape : (H, W) of the field.
    config : uses ``elastic_sigma * strength`` and ``elastic_grid``.
    generator : CPU generator; the only source of randomness.
    device : device of the returned field (default CPU).

    Returns
    -------
    Tensor
        float32 ``(2, H, W)``: row (y) and column (x) displacement. At the coarse grid points the
        values are exactly the drawn Gaussians (std ``elastic_sigma * strength``); in between the
        bicubic interpolation averages them, so the pooled std over all pixels is a bit lower.
    """
    return _elastic_fields(1, shape, config, generator, torch.device(device or "cpu"))[0]


def _elastic_fields(
    n: int,
    shape: tuple[int, int],
    config: AugmentConfig,
    generator: torch.Generator,
    device: torch.device,
) -> Tensor:
    h, w = int(shape[0]), int(shape[1])
    g = config.elastic_grid
    sigma = float(config.elastic_sigma) * float(config.strength)
    coarse = torch.randn((n, 2, g, g), generator=generator, dtype=torch.float32) * sigma
    return F.interpolate(coarse.to(device), size=(h, w), mode="bicubic", align_corners=True)


def sampling_grid(
    shape: tuple[int, int],
    displacement: Tensor | None = None,
    matrix: Tensor | None = None,
    shift: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Combine elastic displacement and an affine map into ``grid_sample`` grids.

    Output pixel ``p = (x, y)`` samples the input at ``c + M (p + d(p) - c) + t`` with ``c`` the
    tile centre, ``d`` the displacement, ``M`` the 2x2 matrix acting on ``(x, y)`` and ``t`` the
    shift.

    Parameters
    ----------
    shape : (H, W).
    displacement : ``(N, 2, H, W)`` (rows y, x) in px, or None for no deformation.
    matrix : ``(N, 2, 2)`` acting on ``(x, y)`` column vectors, or None for the identity.
        A rotation matrix ``[[cos a, -sin a], [sin a, cos a]]`` with ``a = pi/2`` turns the
        content like ``np.rot90(image, k=1)`` (counter-clockwise on screen).
    shift : ``(N, 2)`` as ``(x, y)`` in px, or None.
    device : device used when none of the tensors gives one.

    Returns
    -------
    Tensor
        float32 ``(N, H, W, 2)`` in ``align_corners=True`` coordinates.
    """
    h, w = int(shape[0]), int(shape[1])
    given = [t for t in (displacement, matrix, shift) if t is not None]
    dev = given[0].device if given else torch.device(device or "cpu")
    n = given[0].shape[0] if given else 1
    ys = torch.arange(h, dtype=torch.float32, device=dev)
    xs = torch.arange(w, dtype=torch.float32, device=dev)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    gy, gx = torch.meshgrid(ys - cy, xs - cx, indexing="ij")
    px = gx.expand(n, h, w)
    py = gy.expand(n, h, w)
    if displacement is not None:
        px = px + displacement[:, 1].to(dev, torch.float32)
        py = py + displacement[:, 0].to(dev, torch.float32)
    if matrix is not None:
        m = matrix.to(dev, torch.float32)[:, :, :, None, None]
        px, py = m[:, 0, 0] * px + m[:, 0, 1] * py, m[:, 1, 0] * px + m[:, 1, 1] * py
    if shift is not None:
        t = shift.to(dev, torch.float32)
        px = px + t[:, 0, None, None]
        py = py + t[:, 1, None, None]
    # pixel -> normalised (align_corners=True): centre 0, first/last pixel centre -1/+1
    nx = px * (2.0 / max(w - 1, 1))
    ny = py * (2.0 / max(h - 1, 1))
    return torch.stack((nx, ny), dim=-1)


def warp(
    image: Tensor,
    target: Tensor,
    weight: Tensor,
    grid: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Resample image (bilinear) and target + weight (nearest, one call) on ``grid``.

    Parameters
    ----------
    image : float ``(N, C, H, W)``.
    target : integer ``(N, H, W)``, values below 2**24.
    weight : float ``(N, H, W)``.
    grid : ``(N, H, W, 2)`` from :func:`sampling_grid`.

    Returns
    -------
    tuple of Tensor
        Warped image, target and weight with the input shapes and dtypes, mirrored at the edges.
    """
    img_dtype = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
    out_img = F.grid_sample(
        image.to(img_dtype),
        grid.to(img_dtype),
        mode="bilinear",
        padding_mode="reflection",
        align_corners=ALIGN_CORNERS,
    )
    # target and weight share one nearest lookup; float32 holds class indices < 2**24 exactly
    exact64 = weight.dtype == torch.float64 and image.device.type != "mps"
    lab_dtype = torch.float64 if exact64 else torch.float32
    pair = torch.stack((target.to(lab_dtype), weight.to(lab_dtype)), dim=1)
    out_pair = F.grid_sample(
        pair,
        grid.to(lab_dtype),
        mode="nearest",
        padding_mode="reflection",
        align_corners=ALIGN_CORNERS,
    )
    out_target = out_pair[:, 0].round().to(target.dtype)
    out_weight = out_pair[:, 1].to(weight.dtype)
    return out_img.to(image.dtype), out_target, out_weight


def _uniform(n: int, half_width: float, generator: torch.Generator, centre: float = 0.0) -> Tensor:
    return centre + (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * half_width


def _gray_curve(x: Tensor, slope: Tensor) -> Tensor:
    """Monotone map with f(0)=0, f(1)=1, f'(1/2)=slope; linear continuation outside [0, 1].

    Inside [0, 1]: ``f = 1/2 + u + k u (u^2 - 1/4)`` with ``u = x - 1/2`` and ``k = 4 (1 - slope)``.
    Its derivative lies between ``slope`` and ``3 - 2 slope``, both > 0 for slope in (0, 1.5).
    """
    k = 4.0 * (1.0 - slope)
    end_slope = 3.0 - 2.0 * slope
    u = x.clamp(0.0, 1.0) - 0.5
    inside = 0.5 + u + k * u * (u * u - 0.25)
    below = x.clamp(max=0.0) * end_slope
    above = (x.clamp(min=1.0) - 1.0) * end_slope
    return inside + below + above


def augment_batch(
    image: Tensor,
    target: Tensor,
    weight: Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Augment a batch of training tiles, each sample with its own random transform.

    Parameters
    ----------
    image : float ``(N, C, H, W)``, normalised roughly to [0, 1].
    target : int64 ``(N, H, W)`` class indices.
    weight : float ``(N, H, W)`` per-pixel loss weights (0 = ignored).
    config : the augmentation settings.
    generator : CPU :class:`torch.Generator`, the only source of randomness.

    Returns
    -------
    tuple of Tensor
        Augmented image, target and weight: same shapes, dtypes and device as the inputs. Target
        and weight are warped by the same nearest-neighbour lookup, so they stay consistent.
    """
    if image.ndim != 4 or target.ndim != 3 or weight.ndim != 3:
        raise InputError(
            "augmentation needs an image (N, C, H, W), a target (N, H, W) and a weight (N, H, W)"
        )
    n, _, h, w = image.shape
    if tuple(target.shape) != (n, h, w) or tuple(weight.shape) != (n, h, w):
        raise InputError(
            f"target {tuple(target.shape)} and weight {tuple(weight.shape)} must match the image "
            f"{(n, h, w)}"
        )
    if config.is_identity or n == 0:
        return image.clone(), target.clone(), weight.clone()
    dev = image.device
    s = float(config.strength)

    displacement = None
    if config.elastic_sigma * s > 0:
        displacement = _elastic_fields(n, (h, w), config, generator, dev)
    angle = (
        torch.rand(n, generator=generator, dtype=torch.float64) * (2 * math.pi)
        if config.rotate
        else torch.zeros(n, dtype=torch.float64)
    )
    if config.flip:
        flips = torch.randint(0, 2, (n, 2), generator=generator).to(torch.float64) * -2 + 1
    else:
        flips = torch.ones((n, 2), dtype=torch.float64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # sample position = R(angle) @ diag(flip_x, flip_y) @ output position (about the centre)
    matrix = torch.stack(
        (
            torch.stack((cos * flips[:, 0], -sin * flips[:, 1]), -1),
            torch.stack((sin * flips[:, 0], cos * flips[:, 1]), -1),
        ),
        1,
    )
    shift = None
    if config.shift * s > 0:
        shift = torch.stack(
            (_uniform(n, config.shift * s, generator), _uniform(n, config.shift * s, generator)), -1
        ).to(torch.float32)
    grid = sampling_grid((h, w), displacement, matrix.to(torch.float32), shift, device=dev)
    out_img, out_target, out_weight = warp(image, target, weight, grid)

    amount = float(config.intensity) * s
    if amount > 0:
        black = _uniform(n, 0.05 * amount, generator)
        white = _uniform(n, 0.05 * amount, generator, centre=1.0)
        slope = _uniform(n, 0.2 * amount, generator, centre=1.0)
        shape = (n, 1, 1, 1)
        calc = out_img.to(torch.float32) if out_img.dtype != torch.float64 else out_img
        curved = _gray_curve(calc, slope.to(dev, calc.dtype).view(shape))
        lo = black.to(dev, calc.dtype).view(shape)
        hi = white.to(dev, calc.dtype).view(shape)
        out_img = (lo + (hi - lo) * curved).to(image.dtype)
    return out_img, out_target, out_weight


def augment_preview(
    image: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    config: AugmentConfig,
    n: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented versions of one tile, for the GUI's Preview button.

    Parameters
    ----------
    image : ``(H, W)`` or ``(C, H, W)``. Float data within about [0, 1] are used as they are;
        anything else is first normalised as for training
        (:func:`napari_unet.normalization.normalize_plane`).
    target : ``(H, W)`` integer class or label image.
    weight : ``(H, W)`` loss weights (0 = ignored).
    config : the augmentation settings.
    n : number of augmented samples.
    seed : seed of the random generator.

    Returns
    -------
    tuple of numpy.ndarray
        float32 images ``(n, H, W)`` or ``(n, C, H, W)``, targets ``(n, H, W)`` with the input's
        dtype, float32 weights ``(n, H, W)``.
    """
    image = np.asarray(image)
    target = np.asarray(target)
    weight = np.asarray(weight)
    if image.ndim not in (2, 3):
        raise InputError(f"preview needs a 2D image (H, W) or (C, H, W), got shape {image.shape}")
    if n < 1:
        raise InputError(f"the number of preview samples must be at least 1, got {n}")
    img = image[None] if image.ndim == 2 else image
    if target.shape != img.shape[1:] or weight.shape != img.shape[1:]:
        raise InputError(
            f"target {target.shape} and weight {weight.shape} must match the image {img.shape[1:]}"
        )
    img = _normalise(img)
    t_img = torch.from_numpy(np.repeat(img[None], n, axis=0))
    t_tgt = torch.from_numpy(np.repeat(target[None].astype(np.int64), n, axis=0))
    t_wgt = torch.from_numpy(np.repeat(weight[None].astype(np.float32), n, axis=0))
    gen = torch.Generator().manual_seed(int(seed))
    out_img, out_tgt, out_wgt = augment_batch(t_img, t_tgt, t_wgt, config, gen)
    out_img = out_img.numpy()
    if image.ndim == 2:
        out_img = out_img[:, 0]
    return out_img, out_tgt.numpy().astype(target.dtype), out_wgt.numpy()


def _normalise(img: np.ndarray) -> np.ndarray:
    """float32 copy; normalised as for training unless already float within about [0, 1]."""
    from napari_unet.normalization import normalize_plane

    out = img.astype(np.float32, copy=True)
    in_range = out.size and out.min() >= -0.1 and out.max() <= 1.1
    if np.issubdtype(img.dtype, np.floating) and in_range:
        return out
    return normalize_plane(out)


PREVIEW_EDGE = 256  # preview samples are cut around the annotated pixels to at most this size
PREVIEW_GAP = 8  # pixels between preview samples


def _preview_window(weight: np.ndarray, edge: int) -> tuple[slice, slice]:
    """A window of at most ``edge`` pixels centred on the annotated (weight > 0) pixels."""
    ys, xs = np.nonzero(weight > 0)
    cy, cx = (ys.mean(), xs.mean()) if ys.size else (weight.shape[0] / 2, weight.shape[1] / 2)
    spans = []
    for centre, size in ((cy, weight.shape[0]), (cx, weight.shape[1])):
        length = min(edge, size)
        start = int(np.clip(round(centre - length / 2), 0, size - length))
        spans.append(slice(start, start + length))
    return spans[0], spans[1]


def _montage(samples: np.ndarray, fill: float) -> np.ndarray:
    """Put (n, [C,] H, W) samples side by side: ([C,] H, n * (W + GAP) - GAP)."""
    parts = []
    for i, sample in enumerate(samples):
        if i:
            parts.append(np.full(sample.shape[:-1] + (PREVIEW_GAP,), fill, sample.dtype))
        parts.append(sample)
    return np.concatenate(parts, axis=-1)


def preview_row(
    raw: np.ndarray,
    labels: np.ndarray,
    annotation,
    config: AugmentConfig,
    n: int = 4,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` augmented versions of an annotated plane side by side, as training sees them.

    ``raw``: the ``(C, H, W)`` plane, ``labels``: its annotations, ``annotation``: an
    :class:`~napari_unet.annotation.schema.AnnotationConfig`. A window of at most
    :data:`PREVIEW_EDGE` px around the annotated pixels is augmented. Returns the images (the
    first channel) and the targets (0 where ignored), each ``(H, n * (W + gap) - gap)``.
    """
    from napari_unet.annotation.schema import plane_targets
    from napari_unet.normalization import normalize_plane

    target, weight, _ = plane_targets(np.asarray(labels), annotation)
    rows, cols = _preview_window(weight, PREVIEW_EDGE)
    norm = normalize_plane(raw[:, rows, cols], annotation.normalization)
    seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
    image = norm[0] if norm.shape[0] == 1 else norm
    images, targets, weights = augment_preview(
        image, target[rows, cols], weight[rows, cols], config, n=n, seed=seed
    )
    if images.ndim == 4:  # several channels: show the first
        images = images[:, 0]
    targets = np.where(weights > 0, targets, 0).astype(np.uint8)
    return _montage(images, 0.0), _montage(targets, 0)

"""Synthetic microscopy of touching cells with ground-truth instances.

The images imitate a fluorescence image of a cytoplasmic stain: irregular cells, many in small
colonies touching each other (with a thin darker boundary, or none), a textured bright cytoplasm
that fades towards the cell edge, a darker nucleus in most cells, a non-uniform background, smooth
uneven illumination, optical blur and Poisson + Gaussian noise. Everything is deterministic for a
given seed and fast (a stack of 8 planes of 256 x 256 takes well under a second).

How the geometry is made: every cell ``i`` has a centre ``c_i`` and an irregular outline
``r_i(theta)`` (mean radius times a sum of a few random low harmonics). A pixel ``p`` belongs to
the cell with the smallest normalised distance ``|p - c_i| / r_i(theta)`` (a weighted Voronoi
partition) if that distance, plus a little smooth roughness, is below the cell's limit: 1 for a
free cell, ``GROWN_LIMIT`` for a "touching" cell, which therefore grows until it meets its
neighbours along the Voronoi boundary. Free cells also stop short of that boundary, so with
``touching=0`` no two cells touch. Cells are seeded mostly in colonies (new cells bud off existing
ones), so most touching cells have neighbours to touch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label

from .errors import InputError

__all__ = [
    "CellSampleConfig",
    "make_cells",
    "make_cell_stack",
    "sample_cells_2d",
    "sample_cells_stack",
]

GROWN_LIMIT = 1.6  # normalised reach of a "touching" cell (free cells: 1.0)
FREE_GAP = 0.8  # a free cell stops where its distance exceeds 0.8x that of the next cell
N_HARMONICS = 4  # outline harmonics k = 2 .. N_HARMONICS + 1


@dataclass(frozen=True)
class CellSampleConfig:
    """What the synthetic cell images look like.

    Parameters
    ----------
    shape : (H, W) of one plane.
    n_cells : number of cells per plane.
    cell_radius : mean radius (px) of a free cell; touching cells reach up to 1.6x further.
    touching : fraction (0..1) of cells that grow until they meet their neighbours.
    blur : standard deviation (px) of the Gaussian optical blur.
    noise : relative noise level: Poisson noise with ``1 / noise**2`` photons at full
        brightness plus Gaussian read noise of ``noise / 3``.
    texture : strength (0..1) of the cytoplasm's fine texture.
    """

    shape: tuple[int, int] = (256, 256)
    n_cells: int = 24
    cell_radius: float = 14.0
    touching: float = 0.8
    blur: float = 1.5
    noise: float = 0.08
    texture: float = 0.3

    def __post_init__(self) -> None:
        problems = []
        shape = tuple(self.shape)
        if len(shape) != 2 or not all(
            isinstance(s, (int, np.integer)) and 16 <= s <= 8192 for s in shape
        ):
            problems.append(f"shape must be two integers 16..8192, got {self.shape}")
        if not 1 <= int(self.n_cells) <= 10000:
            problems.append(f"n_cells must be 1..10000, got {self.n_cells}")
        if not 2.0 <= float(self.cell_radius) <= 500.0:
            problems.append(f"cell_radius must be 2..500 px, got {self.cell_radius}")
        for name in ("touching", "texture"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                problems.append(f"{name} must be 0..1, got {getattr(self, name)}")
        if not 0.0 <= float(self.blur) <= 20.0:
            problems.append(f"blur must be 0..20 px, got {self.blur}")
        if not 0.0 <= float(self.noise) <= 1.0:
            problems.append(f"noise must be 0..1, got {self.noise}")
        if problems:
            raise InputError("invalid cell sample configuration: " + "; ".join(problems))


@dataclass
class _Cells:
    """Mutable state of the cells of one plane (arrays of length n)."""

    centre: np.ndarray  # (n, 2) y, x
    radius: np.ndarray  # (n,) mean radius
    amp: np.ndarray  # (n, K) harmonic amplitudes
    phase: np.ndarray  # (n, K)
    limit: np.ndarray  # (n,) 1 (free) or GROWN_LIMIT (touching)
    bright: np.ndarray  # (n,) cytoplasm brightness
    edge_dark: np.ndarray  # (n,) darkening of boundaries to other cells, 0..0.5
    nucleus: np.ndarray  # (n, 6): dy, dx, semi-axes a, b (all in radii), angle, depth; a = 0: none
    velocity: np.ndarray  # (n, 2) px per plane


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise (coarse grid + zoom when sigma is big)."""
    step = max(1, int(sigma // 4))
    small = rng.standard_normal((shape[0] // step + 2, shape[1] // step + 2)).astype(np.float32)
    field = ndi.gaussian_filter(small, sigma / step, mode="wrap")
    if step > 1:
        field = ndi.zoom(field, step, order=1)[: shape[0], : shape[1]]
    field = field[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-12)


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Unit-std cytoplasm texture: fine granules on top of cloudier patches."""
    return 0.8 * _smooth_noise(rng, shape, 1.0) + 0.6 * _smooth_noise(rng, shape, 4.0)


def _place_cells(cfg: CellSampleConfig, rng: np.random.Generator) -> _Cells:
    h, w = cfg.shape
    n, r = int(cfg.n_cells), float(cfg.cell_radius)
    min_dist = 1.7 * r
    centres: list[np.ndarray] = []
    tries = 0
    while len(centres) < n:
        tries += 1
        if tries % 500 == 0:
            min_dist *= 0.9  # crowded: relax the spacing rather than loop forever
        if centres and rng.random() < 0.75:  # colonies: bud off an existing cell
            base = centres[rng.integers(len(centres))]
            ang = rng.uniform(0, 2 * np.pi)
            cand = base + rng.uniform(1.8, 2.6) * r * np.array([np.sin(ang), np.cos(ang)])
        else:
            cand = rng.uniform((0, 0), (h - 1, w - 1))
        if not (0 <= cand[0] <= h - 1 and 0 <= cand[1] <= w - 1):
            continue
        if centres and np.min(np.hypot(*(np.asarray(centres) - cand).T)) < min_dist:
            continue
        centres.append(cand)
    k = np.arange(2, N_HARMONICS + 2)
    nucleus = np.column_stack(
        [
            rng.normal(0, 0.12, (n, 2)),
            rng.uniform(0.4, 0.55, n),
            rng.uniform(0.3, 0.42, n),
            rng.uniform(0, np.pi, n),
            rng.uniform(0.3, 0.5, n),
        ]
    )
    nucleus[rng.random(n) < 0.25, 2] = 0.0  # about a quarter without a visible nucleus
    return _Cells(
        centre=np.asarray(centres, dtype=np.float64),
        radius=r * rng.uniform(0.75, 1.25, n),
        amp=rng.normal(0, 1, (n, N_HARMONICS)) * (0.16 / k)
        + np.where(k == 2, 0.08, 0.0) * rng.choice([-1, 1], (n, N_HARMONICS)),
        phase=rng.uniform(0, 2 * np.pi, (n, N_HARMONICS)),
        limit=np.where(rng.random(n) < cfg.touching, GROWN_LIMIT, 1.0),
        bright=rng.uniform(0.5, 0.9, n),
        edge_dark=np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0.1, 0.5, n)),
        nucleus=nucleus,
        velocity=rng.normal(0, 0.6, (n, 2)),
    )


def _partition(cells: _Cells, shape: tuple[int, int], rough: np.ndarray):
    """Instance labels (ids = cell index + 1) and each pixel's normalised distance to its cell."""
    h, w = shape
    dist = np.full(shape, np.inf, np.float32)
    second = np.full(shape, np.inf, np.float32)
    owner = np.zeros(shape, np.int32)
    k = np.arange(2, N_HARMONICS + 2)
    reach = (cells.limit + 0.4) * cells.radius * (1 + np.abs(cells.amp).sum(1)) + 2  # + roughness
    for i, (cy, cx) in enumerate(cells.centre):
        y0, y1 = max(0, int(cy - reach[i])), min(h, int(cy + reach[i]) + 2)
        x0, x1 = max(0, int(cx - reach[i])), min(w, int(cx + reach[i]) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        theta = np.arctan2(dy, dx)
        outline = 1 + np.tensordot(
            cells.amp[i], np.cos(k[:, None, None] * theta - cells.phase[i][:, None, None]), axes=1
        )
        d = np.hypot(dy, dx) / (cells.radius[i] * np.maximum(outline, 0.4))
        box_d, box_2, box_o = dist[y0:y1, x0:x1], second[y0:y1, x0:x1], owner[y0:y1, x0:x1]
        box_2[:] = np.minimum(box_2, np.maximum(box_d, d))
        closer = d < box_d
        box_d[closer] = d[closer]
        box_o[closer] = i + 1
    limit = np.concatenate([[0.0], cells.limit])[owner]
    # free cells keep a gap to their Voronoi boundary; grown cells fill up to it
    inside = (dist + rough < limit) & ((limit > 1.0) | (dist < FREE_GAP * second))
    labels = np.where(inside, owner, 0)
    return _keep_largest_pieces(labels), dist


def _keep_largest_pieces(labels: np.ndarray) -> np.ndarray:
    """Set every 4-connected piece of a cell except its largest one to background."""
    comp = label(labels, connectivity=1, background=0)
    n_comp = int(comp.max())
    if n_comp == int(labels.max()):
        return labels
    sizes = np.bincount(comp.ravel(), minlength=n_comp + 1)[1:]
    comp_id = np.zeros(n_comp + 1, labels.dtype)
    comp_id[comp] = labels
    comp_id = comp_id[1:]
    order = np.lexsort((-sizes, comp_id))  # by id, largest first
    first = np.ones(n_comp, bool)
    first[1:] = comp_id[order][1:] != comp_id[order][:-1]
    keep = np.zeros(n_comp + 1, bool)
    keep[order[first] + 1] = True
    return np.where(keep[comp], labels, 0)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Cell pixels with a 4-neighbour that belongs to another cell."""
    out = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        a = labels.swapaxes(0, axis)
        o = out.swapaxes(0, axis)
        differ = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
        o[1:] |= differ
        o[:-1] |= differ
    return out


def _render(
    cells: _Cells,
    labels: np.ndarray,
    dist: np.ndarray,
    fields: dict[str, np.ndarray],
    cfg: CellSampleConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """uint8 image of one plane."""
    fg = labels > 0
    idx = labels[fg] - 1
    ys, xs = np.nonzero(fg)
    cyto = np.zeros(labels.shape, np.float32)
    # bright cytoplasm, thicker (brighter) in the middle, with fine texture
    value = cells.bright[idx] * (1 - 0.4 * np.minimum(dist[fg] / cells.limit[idx], 1.0) ** 2)
    value *= np.maximum(1 + 0.6 * cfg.texture * fields["texture"][fg], 0.2)
    # darker nucleus: a soft-edged ellipse near the centre
    nuc = cells.nucleus[idx]
    r = cells.radius[idx]
    u = ys - (cells.centre[idx, 0] + nuc[:, 0] * r)
    v = xs - (cells.centre[idx, 1] + nuc[:, 1] * r)
    cos, sin = np.cos(nuc[:, 4]), np.sin(nuc[:, 4])
    with np.errstate(divide="ignore", invalid="ignore"):
        e = ((cos * u + sin * v) / (nuc[:, 2] * r)) ** 2 + (
            (cos * v - sin * u) / (nuc[:, 3] * r)
        ) ** 2
    inner = np.clip((1.25 - np.nan_to_num(e, nan=9.0, posinf=9.0)) / 0.4, 0.0, 1.0)
    value *= 1 - nuc[:, 5] * inner * (nuc[:, 2] > 0)
    cyto[fg] = value
    # thin darker line where cells touch (not for every cell)
    edge = _boundaries(labels)
    cyto[edge] *= 1 - cells.edge_dark[labels[edge] - 1]
    image = (fields["background"] + cyto) * fields["illumination"]
    if cfg.blur > 0:
        image = ndi.gaussian_filter(image, cfg.blur)
    if cfg.noise > 0:
        photons = 1.0 / cfg.noise**2
        image = rng.poisson(np.maximum(image, 0) * photons) / photons
        image = image + rng.normal(0, cfg.noise / 3, image.shape)
    return np.clip(np.rint(image * 190), 0, 255).astype(np.uint8)


def _evolve(cells: _Cells, shape: tuple[int, int], rng: np.random.Generator) -> None:
    """Move, grow and reshape the cells a little (one plane further)."""
    n = len(cells.radius)
    cells.velocity = 0.8 * cells.velocity + rng.normal(0, 0.3, (n, 2))
    cells.centre = cells.centre + cells.velocity
    for axis, size in enumerate(shape):  # reflect at the image edges
        c = cells.centre[:, axis]
        c[:] = np.abs(c)
        c[:] = (size - 1) - np.abs((size - 1) - c)
    cells.radius = cells.radius * (1 + rng.normal(0.01, 0.01, n))
    cells.phase = cells.phase + rng.normal(0, 0.08, cells.phase.shape)
    cells.amp = cells.amp + rng.normal(0, 0.005, cells.amp.shape)
    cells.nucleus[:, :2] += rng.normal(0, 0.02, (n, 2))


def _generate(n_planes: int, cfg: CellSampleConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 1 <= int(n_planes) <= 10000:
        raise InputError(f"the number of planes must be 1..10000, got {n_planes}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in cfg.shape)
    cells = _place_cells(cfg, rng)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = ((yy - h / 2) * np.sin(ang) + (xx - w / 2) * np.cos(ang)) / (max(h, w) / 2)
    fields = {
        "illumination": (1 + 0.15 * ramp + 0.08 * _smooth_noise(rng, shape, max(h, w) / 5)),
        "background": (
            0.1 + 0.025 * _smooth_noise(rng, shape, 20) + 0.01 * _smooth_noise(rng, shape, 2)
        ),
        "texture": _texture(rng, shape),
    }
    rough = _smooth_noise(rng, shape, 3)
    images = np.empty((n_planes, h, w), np.uint8)
    instances = np.empty((n_planes, h, w), np.uint16)
    keep = 0.85  # plane-to-plane correlation of texture and outline roughness
    for z in range(n_planes):
        if z:
            _evolve(cells, shape, rng)
            fresh = np.sqrt(1 - keep**2) * _texture(rng, shape)
            fields["texture"] = keep * fields["texture"] + fresh
            rough = keep * rough + np.sqrt(1 - keep**2) * _smooth_noise(rng, shape, 3)
        labels, dist = _partition(cells, shape, 0.07 * rough)
        images[z] = _render(cells, labels, dist, fields, cfg, rng)
        instances[z] = _sequential(labels)
    return images, instances


def _sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the ids present to 1..n, keeping their order."""
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(int(labels.max()) + 1, np.uint16)
    lut[present] = np.arange(1, len(present) + 1)
    return lut[labels]


def make_cells(
    config: CellSampleConfig | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image of touching cells and its ground truth.

    Parameters
    ----------
    config : appearance; default :class:`CellSampleConfig()`.
    seed : random seed; the same seed gives the same result.

    Returns
    -------
    image : uint8 ``(H, W)``.
    instances : uint16 ``(H, W)``, 0 = background, cells numbered 1..n consecutively.
        Equal to the first plane of ``make_cell_stack(n, config, seed)``.
    """
    images, instances = _generate(1, config or CellSampleConfig(), seed)
    return images[0], instances[0]


def make_cell_stack(
    n_planes: int = 8, config: CellSampleConfig | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A stack of planes in which the cells drift, grow and change shape slowly.

    Neighbouring planes look alike but not identical, like a time series or a z-stack; the
    texture, outline roughness and nuclei change smoothly, the noise independently.

    Parameters
    ----------
    n_planes : number of planes Z.
    config : appearance of every plane; default :class:`CellSampleConfig()`.
    seed : random seed; the same seed gives the same result.

    Returns
    -------
    images : uint8 ``(Z, H, W)``.
    instances : uint16 ``(Z, H, W)``, 0 = background. Ids are consecutive (1..n) in each plane.
        Cells stay in the image, so an id normally marks the same cell in every plane; if a cell
        is squeezed out of a plane the ids after it shift down by one in that plane.
    """
    return _generate(n_planes, config or CellSampleConfig(), seed)


def sample_cells_2d() -> list[tuple]:
    """napari sample-data hook: one 256 x 256 image and its ground-truth instances."""
    image, instances = make_cells()
    return [
        (image, {"name": "cells 2D"}, "image"),
        (instances, {"name": "cells 2D ground truth"}, "labels"),
    ]


def sample_cells_stack() -> list[tuple]:
    """napari sample-data hook: a stack of 8 planes of 256 x 256 and its ground truth."""
    images, instances = make_cell_stack(8)
    return [
        (images, {"name": "cells stack"}, "image"),
        (instances, {"name": "cells stack ground truth"}, "labels"),
    ]

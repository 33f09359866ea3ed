"""Synthetic microscopy of touching cells with ground-truth instances.

One geometry of irregular cells, many in small colonies touching each other, can be imaged in four
modalities (:data:`MODALITIES`, ``CellSampleConfig.modality``), e.g. to train a generalist
starting model:

- ``"fluorescence"`` (default): a cytoplasmic stain: a textured bright cytoplasm that fades
  towards the cell edge, a thin darker boundary between touching cells (or none), a darker nucleus
  in most cells, a non-uniform background, smooth uneven illumination, optical blur and Poisson +
  Gaussian noise.
- ``"phase"``: positive phase contrast of cells on a dish, like the Cell Tracking Challenge's
  PhC-C2DH-U373: a mid-grey background, each cell's optical thickness (a thin flat lamella,
  some of it a broad faint lamellipodium, a ruffled edge, a thick rounded body; some cells rounded
  up and bright) high-passed, so edges get a dark rim inside and a thin bright halo outside,
  touching cells are separated by a faint line only, plus faint texture and unlabelled specks.
- ``"dic"``: differential interference contrast: the derivative along a shear direction
  (``CellSampleConfig.shear_angle``) of a smooth optical-thickness map (dome-shaped cells with a
  raised nucleus and a groove where they touch) on a flat grey background: a shadow-cast relief,
  bright on the side facing the apparent light, dark on the other.
- ``"em"``: transmission electron microscopy of tissue, like the ISBI 2012 neural-tissue stack:
  with a dense configuration (e.g. :func:`random_modality_config`) the cells tile the plane (any
  gaps go to the nearest cell); dark 1-3 px membranes along every boundary (label 0 there, as in
  ISBI's labels), textured grey cytoplasm whose brightness varies per cell, small ringed vesicles
  and darker mitochondria.

Only the rendering differs: for a seed and a configuration that differ only in the modality the
instances are identical, except in ``"em"`` (membranes are background 0, gaps are filled).
Everything is deterministic for a given seed and fast (a 256 x 256 plane takes about 0.05 to
0.3 s).

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

from napari_unet.errors import InputError

__all__ = [
    "MODALITIES",
    "CellSampleConfig",
    "make_cells",
    "make_cell_stack",
    "random_modality_config",
    "sample_cells_2d",
    "sample_cells_stack",
]

MODALITIES = ("fluorescence", "phase", "dic", "em")

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
    modality : how the cells are imaged, one of :data:`MODALITIES`: ``"fluorescence"`` (the
        default), ``"phase"`` (phase contrast), ``"dic"`` (differential interference contrast) or
        ``"em"`` (electron microscopy of tissue; give it a dense config, see
        :func:`random_modality_config`). The cells (and so the instances) do not depend on it,
        except that ``"em"`` gives any gaps to the nearest cell and sets the 1-3 px membranes
        between cells to background 0.
    shear_angle : ``"dic"`` only: direction (degrees, counter-clockwise from the +x axis as the
        image is displayed, i.e. 90 = up) from which the relief seems lit: the cell edges facing
        it are bright, the opposite ones dark. ``None``: a random direction for each seed.
    """

    shape: tuple[int, int] = (256, 256)
    n_cells: int = 24
    cell_radius: float = 14.0
    touching: float = 0.8
    blur: float = 1.5
    noise: float = 0.08
    texture: float = 0.3
    modality: str = "fluorescence"
    shear_angle: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.modality not in MODALITIES:
            problems.append(
                f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}"
            )
        if self.shear_angle is not None and not (
            isinstance(self.shear_angle, (int, float, np.integer, np.floating))
            and np.isfinite(self.shear_angle)
        ):
            problems.append(
                f"shear_angle must be a finite number of degrees or None, got {self.shear_angle!r}"
            )
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
    centres = np.empty((n, 2), np.float64)
    m = 0  # cells placed so far
    tries = 0
    while m < n:
        tries += 1
        if tries % 500 == 0:
            min_dist *= 0.9  # crowded: relax the spacing rather than loop forever
        if m and rng.random() < 0.75:  # colonies: bud off an existing cell
            base = centres[rng.integers(m)]
            ang = rng.uniform(0, 2 * np.pi)
            cand = base + rng.uniform(1.8, 2.6) * r * np.array([np.sin(ang), np.cos(ang)])
        else:
            cand = rng.uniform((0, 0), (h - 1, w - 1))
        if not (0 <= cand[0] <= h - 1 and 0 <= cand[1] <= w - 1):
            continue
        if m and np.min(np.hypot(*(centres[:m] - cand).T)) < min_dist:
            continue
        centres[m] = cand
        m += 1
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
        centre=centres,
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


def _ellipse(
    ys: np.ndarray,
    xs: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    angle: np.ndarray,
) -> np.ndarray:
    """Normalised squared distance of pixels (ys, xs) to ellipses: < 1 inside, 1 on the edge."""
    u, v = ys - cy, xs - cx
    cos, sin = np.cos(angle), np.sin(angle)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = ((cos * u + sin * v) / a) ** 2 + ((cos * v - sin * u) / b) ** 2
    return np.nan_to_num(e, nan=9.0, posinf=9.0)


def _dome(e: np.ndarray) -> np.ndarray:
    """Height profile of a rounded body from its normalised squared distance ``e``."""
    return np.sqrt(np.clip(1.0 - e, 0.0, 1.0))


def _add_noise(image: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise with ``1 / noise**2`` photons at intensity 1, plus Gaussian read noise."""
    if noise <= 0:
        return image
    photons = 1.0 / noise**2
    image = rng.poisson(np.maximum(image, 0) * photons) / photons
    return image + rng.normal(0, noise / 3, image.shape)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Intensity 0..1 to uint8 0..255."""
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


@dataclass
class _Look:
    """How one image or stack looks in the phase, dic or em modality.

    Holds its own random stream (so the cells do not depend on the modality) and the per-cell and
    per-image appearance, drawn once so that a stack keeps the look of its cells from plane to
    plane.
    """

    cfg: CellSampleConfig
    rng: np.random.Generator
    cell: dict[str, np.ndarray]  # per-cell parameters, arrays of length n
    image: dict[str, float]  # per-image parameters
    field: dict[str, np.ndarray]  # static per-image fields
    # em: (m, 7) owner cell index, dy, dx (cell radii), semi-axes a, b (px), angle, kind
    organelles: np.ndarray

    @classmethod
    def new(cls, cfg: CellSampleConfig, cells: _Cells, seed: int | None) -> _Look:
        """Draw the look of the cells ``cells`` in ``cfg.modality``."""
        index = MODALITIES.index(cfg.modality)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        n = len(cells.radius)
        shape = tuple(int(s) for s in cfg.shape)
        cell: dict[str, np.ndarray] = {}
        image: dict[str, float] = {}
        field: dict[str, np.ndarray] = {}
        organelles = np.zeros((0, 7))
        if cfg.modality == "phase":
            # a rounded, thick cell body (off-centre in cells with a broad flat lamellipodium)
            # and a thin flat lamella up to the cell edge, which is a little ruffled (thicker)
            fan = rng.random(n) < 0.5
            rounded = ~fan & (rng.random(n) < 0.25)  # rounded up (e.g. dividing): thick, haloed
            ang = rng.uniform(0, 2 * np.pi, n)
            off = np.where(fan, rng.uniform(0.25, 0.45, n), rng.uniform(0.0, 0.15, n))
            off[rounded] = 0.0
            cell["body_dy"], cell["body_dx"] = off * np.sin(ang), off * np.cos(ang)
            cell["body_a"] = np.where(fan, rng.uniform(0.35, 0.5, n), rng.uniform(0.55, 0.85, n))
            cell["body_b"] = np.where(fan, rng.uniform(0.3, 0.45, n), rng.uniform(0.5, 0.75, n))
            cell["body_a"][rounded] = cell["body_b"][rounded] = 1.2 * GROWN_LIMIT
            cell["body_angle"] = rng.uniform(0, np.pi, n)
            cell["height"] = np.where(rounded, rng.uniform(1.0, 1.6, n), rng.uniform(0.6, 1.4, n))
            cell["glow"] = np.where(rounded, rng.uniform(0.5, 1.0, n), 0.0)
            cell["lamella"] = rng.uniform(0.06, 0.2, n)
            cell["ruffle"] = rng.uniform(0.15, 0.45, n)
            image["halo"] = rng.uniform(2.0, 4.0)
            image["contrast"] = rng.uniform(1.5, 2.2)
            image["darken"] = rng.uniform(0.05, 0.2)
            image["background"] = rng.uniform(0.3, 0.45)
            # debris on the dish: tiny unlabelled specks
            specks = np.zeros(shape, np.float32)
            m = rng.poisson(shape[0] * shape[1] / 6000)
            specks[rng.integers(0, shape[0], m), rng.integers(0, shape[1], m)] = rng.uniform(
                -3, 8, m
            )
            field["specks"] = ndi.gaussian_filter(specks, 1.2)
        elif cfg.modality == "dic":
            cell["height"] = rng.uniform(0.6, 1.0, n)
            cell["nucleus"] = rng.uniform(0.2, 0.5, n)
            angle = cfg.shear_angle if cfg.shear_angle is not None else rng.uniform(0, 360)
            image["angle"] = float(np.deg2rad(angle))
            image["amplitude"] = rng.uniform(0.2, 0.35)
            image["smooth"] = rng.uniform(0.8, 1.8)
            image["background"] = rng.uniform(0.4, 0.55)
        else:  # em
            cell["bright"] = rng.uniform(0.6, 0.8, n)
            image["membrane"] = rng.uniform(0.06, 0.2)
            image["shoulder"] = rng.uniform(0.1, 0.4)
            image["width"] = rng.uniform(1.2, 2.8) * min(1.0, cfg.cell_radius / 16)
            field["width"] = _smooth_noise(rng, shape, 6.0)
            # vesicles (small rings) and mitochondria (larger dark ellipses) inside the cells,
            # placed in cell coordinates so that they move with their cell in a stack
            area = np.pi * (cells.radius * 1.2) ** 2
            n_ves = rng.poisson(area * rng.exponential(1 / 300, n))
            n_mito = rng.poisson(area * rng.exponential(1 / 2500, n))
            rows = []
            for kind, counts in ((0, n_ves), (1, n_mito)):
                owner = np.repeat(np.arange(n), counts)
                m = len(owner)
                rho, phi = 0.95 * np.sqrt(rng.random(m)), rng.uniform(0, 2 * np.pi, m)
                limit = 0.6 * cells.radius[owner]
                if kind == 0:
                    a = np.minimum(rng.uniform(1.8, 3.5, m), limit)
                    b = a * rng.uniform(0.8, 1.0, m)
                else:
                    a = np.minimum(rng.uniform(4.0, 10.0, m), limit)
                    b = np.minimum(rng.uniform(2.5, 5.0, m), a)
                rows.append(
                    np.column_stack(
                        [
                            owner,
                            rho * np.sin(phi),
                            rho * np.cos(phi),
                            a,
                            b,
                            rng.uniform(0, np.pi, m),
                            np.full(m, kind),
                        ]
                    )
                )
            organelles = np.concatenate(rows)
        return cls(cfg, rng, cell, image, field, organelles)

    def render(
        self, cells: _Cells, labels: np.ndarray, dist: np.ndarray, fields: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 image of one plane and its instances (em: without the membranes)."""
        if self.cfg.modality == "phase":
            image = self._phase(cells, labels, fields)
        elif self.cfg.modality == "dic":
            image = self._dic(cells, labels, dist, fields)
        else:
            image, labels = self._em(cells, labels, fields)
        if self.cfg.blur > 0:
            image = ndi.gaussian_filter(image, self.cfg.blur)
        return _to_uint8(_add_noise(image, self.cfg.noise, self.rng)), labels

    def _phase(
        self, cells: _Cells, labels: np.ndarray, fields: dict[str, np.ndarray]
    ) -> np.ndarray:
        """Positive phase contrast: optical thickness high-passed (dark rim, bright halo)."""
        c, p, texture = self.cell, self.image, self.cfg.texture
        fg = labels > 0
        idx = labels[fg] - 1
        ys, xs = np.nonzero(fg)
        r = cells.radius[idx]
        e = _ellipse(
            ys,
            xs,
            cells.centre[idx, 0] + c["body_dy"][idx] * r,
            cells.centre[idx, 1] + c["body_dx"][idx] * r,
            c["body_a"][idx] * r,
            c["body_b"][idx] * r,
            c["body_angle"][idx],
        )
        tex = fields["texture"][fg]
        depth = ndi.distance_transform_edt(fg)[fg]  # px to the nearest background pixel
        thick = np.zeros(labels.shape, np.float32)
        thick[fg] = (
            c["lamella"][idx] * np.maximum(1 + 0.8 * texture * tex, 0.2)
            + c["height"][idx] * _dome(e) * (1 + 0.3 * texture * tex)
            + c["ruffle"][idx] * np.exp(-(depth - 1) / 1.5) * np.maximum(1 + 0.7 * tex, 0.1)
        )
        edge = _boundaries(labels)  # touching cells: a faint line
        thick[edge] *= 1 + cells.edge_dark[labels[edge] - 1]
        thick = ndi.gaussian_filter(thick, 0.7) + self.field["specks"]
        high = thick - ndi.gaussian_filter(thick, p["halo"])
        glow = np.zeros(labels.shape, np.float32)  # rounded cells look bright
        glow[fg] = c["glow"][idx] * _dome(e)
        mottle = fields["background"] - 0.1
        lamp = 1 + 0.5 * (fields["illumination"] - 1)  # phase contrast: fairly even lighting
        return (
            p["background"]
            * lamp
            * (1 - p["contrast"] * high - p["darken"] * thick + glow + mottle)
        )

    def _dic(
        self,
        cells: _Cells,
        labels: np.ndarray,
        dist: np.ndarray,
        fields: dict[str, np.ndarray],
    ) -> np.ndarray:
        """DIC: derivative of the smoothed optical thickness along the shear direction."""
        c, p, texture = self.cell, self.image, self.cfg.texture
        fg = labels > 0
        idx = labels[fg] - 1
        ys, xs = np.nonzero(fg)
        r = cells.radius[idx]
        nuc = cells.nucleus[idx]
        e = _ellipse(
            ys,
            xs,
            cells.centre[idx, 0] + nuc[:, 0] * r,
            cells.centre[idx, 1] + nuc[:, 1] * r,
            nuc[:, 2] * r,
            nuc[:, 3] * r,
            nuc[:, 4],
        )
        x = np.minimum(dist[fg] / cells.limit[idx], 1.0)
        thick = np.zeros(labels.shape, np.float32)
        thick[fg] = (
            c["height"][idx]
            * (np.sqrt(1 - x**2) + c["nucleus"][idx] * _dome(e) * (nuc[:, 2] > 0))
            * (1 + 0.25 * texture * fields["texture"][fg])
        )
        edge = _boundaries(labels)  # a groove where cells touch
        thick[edge] *= 1 - 0.5 * cells.edge_dark[labels[edge] - 1]
        gy, gx = np.gradient(ndi.gaussian_filter(thick, p["smooth"]))
        # minus the slope towards the light: edges facing it are bright
        relief = np.sin(p["angle"]) * gy - np.cos(p["angle"]) * gx
        scale = p["amplitude"] / (np.percentile(np.abs(relief), 99.5) + 1e-6)
        lamp = 1 + 0.5 * (fields["illumination"] - 1)
        return (p["background"] + scale * relief + fields["background"] - 0.1) * lamp

    def _em(
        self, cells: _Cells, labels: np.ndarray, fields: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """EM of tissue: grey textured cells with organelles, dark 1-3 px membranes = label 0."""
        c, p, texture = self.cell, self.image, self.cfg.texture
        shape = labels.shape
        # tissue has no background: the gaps between cells (few with a dense config) go to the
        # nearest cell
        gaps = labels == 0
        if gaps.any() and not gaps.all():
            near = ndi.distance_transform_edt(gaps, return_distances=False, return_indices=True)
            labels = labels[tuple(near)]
        # membranes: a 1 px line on one side of each boundary, 2 or 3 px wide where the smooth
        # width field says so
        line = labels == 0
        for axis in (0, 1):
            a = labels.swapaxes(0, axis)
            differ = a[1:] != a[:-1]
            line.swapaxes(0, axis)[1:] |= differ
        wide = _boundaries(labels) | (labels == 0)
        thick = ndi.binary_dilation(line, ndi.generate_binary_structure(2, 1))
        width = p["width"] + 0.8 * self.field["width"]
        membrane = line | (wide & (width > 1.5)) | (thick & (width > 2.5))
        labels = _keep_largest_pieces(np.where(membrane, 0, labels))
        fg = labels > 0
        idx = labels[fg] - 1
        fine = _smooth_noise(self.rng, shape, 0.7)
        image = np.zeros(shape, np.float32)
        image[fg] = c["bright"][idx] * (
            1 + 0.1 * texture * fields["texture"][fg] + 0.2 * texture * fine[fg]
        )
        image[~fg] = p["membrane"] * (1 + 0.3 * fine[~fg])
        # the membranes' stain spreads a little into the cells next to them
        shoulder = fg & ndi.binary_dilation(~fg, ndi.generate_binary_structure(2, 1))
        image[shoulder] *= 1 - p["shoulder"]
        # organelles: a dark ring (their membrane); mitochondria also darker inside
        h, w = shape
        for owner, dy, dx, a, b, angle, kind in self.organelles:
            i = int(owner)
            cy = cells.centre[i, 0] + dy * cells.radius[i]
            cx = cells.centre[i, 1] + dx * cells.radius[i]
            y0, y1 = max(0, int(cy - a - 2)), min(h, int(cy + a + 3))
            x0, x1 = max(0, int(cx - a - 2)), min(w, int(cx + a + 3))
            if y0 >= y1 or x0 >= x1:
                continue
            yy = np.arange(y0, y1, dtype=np.float32)[:, None]
            xx = np.arange(x0, x1, dtype=np.float32)[None, :]
            e = np.sqrt(_ellipse(yy, xx, cy, cx, a, b, angle))
            ring = np.exp(-(((e - 1) * b / 0.8) ** 2))
            shade = 1 - 0.6 * ring - (0.3 if kind else 0.0) * (e < 1)
            box = image[y0:y1, x0:x1]
            own = labels[y0:y1, x0:x1] == i + 1
            box[own] *= shade[own]
        image = ndi.gaussian_filter(image, 0.5)
        return image * fields["illumination"], labels


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
    # the other modalities draw their own randomness from a separate stream, so that the cells
    # (drawn from ``rng``) are the same whatever the modality
    look = None if cfg.modality == "fluorescence" else _Look.new(cfg, cells, seed)
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
        if look is None:
            images[z] = _render(cells, labels, dist, fields, cfg, rng)
        else:
            images[z], modality_labels = look.render(cells, labels, dist, fields)
            if z + 1 < n_planes and cfg.noise > 0:
                # the fluorescence noise draws advance ``rng`` by an amount that depends on the
                # image: make them (and throw the image away) so later planes keep the same cells
                _render(cells, labels, dist, fields, cfg, rng)
            labels = modality_labels
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


def random_modality_config(
    rng: np.random.Generator,
    shape: tuple[int, int] = (256, 256),
    modality: str | None = None,
) -> CellSampleConfig:
    """A randomly varied configuration, for drawing diverse training examples.

    Parameters
    ----------
    rng : the random generator to draw from (the same state gives the same configuration).
    shape : (H, W) of the images.
    modality : one of :data:`MODALITIES`; ``None``: drawn uniformly among them.

    Returns
    -------
    A :class:`CellSampleConfig` with a cell radius of 6..40 px (log-uniform), a density, blur,
    noise, texture and fraction of touching cells typical of the modality, and for ``"dic"`` a
    random shear direction. For ``"em"`` the cells are dense and all touching, so that they tile
    the whole plane (no background but the membranes), and their radius is 10..40 px.
    """
    if modality is None:
        modality = MODALITIES[int(rng.integers(len(MODALITIES)))]
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    shape = (int(shape[0]), int(shape[1]))
    # em: no tiny profiles, whose 1 px membranes alone would be a fifth of the plane
    smallest = 10.0 if modality == "em" else 6.0
    radius = float(np.exp(rng.uniform(np.log(smallest), np.log(40.0))))
    # density: fraction of the plane that n free cells of that radius would cover
    density, touching, blur, noise, texture = {
        "fluorescence": lambda: (
            rng.uniform(0.1, 0.6),
            rng.uniform(0.0, 1.0),
            rng.uniform(0.5, 2.5),
            rng.uniform(0.02, 0.15),
            rng.uniform(0.0, 0.6),
        ),
        "phase": lambda: (
            rng.uniform(0.05, 0.5),
            rng.uniform(0.0, 1.0),
            rng.uniform(0.3, 1.2),
            rng.uniform(0.01, 0.06),
            rng.uniform(0.1, 0.7),
        ),
        "dic": lambda: (
            rng.uniform(0.1, 0.6),
            rng.uniform(0.0, 1.0),
            rng.uniform(0.5, 2.0),
            rng.uniform(0.01, 0.06),
            rng.uniform(0.1, 0.7),
        ),
        "em": lambda: (
            rng.uniform(1.1, 1.4),
            1.0,
            rng.uniform(0.3, 1.2),
            rng.uniform(0.02, 0.06),
            rng.uniform(0.3, 0.9),
        ),
    }[modality]()
    n_cells = int(np.clip(round(density * shape[0] * shape[1] / (np.pi * radius**2)), 1, 10000))
    shear = float(rng.uniform(0.0, 360.0)) if modality == "dic" else None
    return CellSampleConfig(
        shape=shape,
        n_cells=n_cells,
        cell_radius=radius,
        touching=float(touching),
        blur=float(blur),
        noise=float(noise),
        texture=float(texture),
        modality=modality,
        shear_angle=shear,
    )


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

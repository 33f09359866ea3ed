"""From network output to label images: semantic classes, foreground, instances.

The U-Net predicts per-pixel class probabilities ``(K, ...)``. :func:`semantic_labels` takes the
arg-max, :func:`foreground_mask` selects the object classes and :func:`instance_labels` turns the
foreground into numbered objects. Ways to part touching objects (``method``):

* ``relative-cores`` (the default of new models): each connected component of the foreground
  is split at its confident cores, where "confident" is measured against the component's own
  confidence: a core is where the smoothed foreground log-odds exceed ``core_ratio`` x the 90th
  percentile of the component's log-odds, but never a stricter level than ``seed_threshold``
  (0.98). A network sure of itself is read as the paper's cores; one less sure of itself
  overall (another seed, another lab's data, a fine-tuned start) scales its log-odds down, the
  level follows it, and a dip of confidence at a faint membrane between two cells stays a dip
  instead of every cell falling apart between its few confident patches. The cores seed a
  watershed (scikit-image) over the log-odds; separation gaps are given back.
* ``interiors`` (models trained with three classes -- background, interior, border band;
  ``--instance-targets interiors``): every connected region whose most probable class is
  "interior" is one seed; a watershed (scikit-image) grows the seeds through the foreground
  (interior or border) over the "not interior" probability. Only arg-max decisions are taken,
  so a less confident network (another seed, another lab's data, a fine-tuned start) gives the
  same objects as long as it ranks the classes the same way.
* ``necks``: connected components of the foreground split where they narrow: the maxima of
  the distance transform (scipy.ndimage) that stand at least ``neck_depth`` x the annotated
  objects' radius above the neck joining them to a higher maximum (h-maxima,
  scikit-image) seed a watershed over the distance. Only the arg-max foreground is used, so a
  network's confidence does not move the objects; separation gaps are given back.
* ``cores`` (model files written before ``relative-cores``): connected components split at
  cores where the smoothed foreground probability exceeds the fixed ``seed_threshold`` (0.98),
  and separation gaps given back. Older files still segment exactly as before.

Then holes are optionally filled and specks below ``min_size`` removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed

from napari_unet.defaults import form_field
from napari_unet.errors import InputError

METHODS = ("relative-cores", "cores", "interiors", "necks")


@dataclass(frozen=True)
class PostprocessConfig:
    """Options of :func:`instance_labels`.

    Attributes
    ----------
    foreground_classes : tuple of int
        Semantic classes that form objects; all others are background.
    method : {"relative-cores", "cores", "interiors", "necks"}
        How touching objects are parted (module docstring). A model file says which its network
        was trained for (:func:`napari_unet.annotation.derived.postprocess_config`).
    core_ratio : float
        ``relative-cores``: a pixel is part of a core when its smoothed foreground log-odds
        exceed this fraction of the 90th percentile of its component's log-odds (or the
        log-odds of ``seed_threshold``, whichever is lower); higher parts more, lower merges
        more.
    join_wide : float
        ``relative-cores``: parts of one component that touch along at least this many times the
        width of the smaller part (its equivalent diameter; in 3D the cross-section of its
        equivalent ball) are joined again: a cell cut between two confident patches of its own
        touches its other half along its whole width, two cells parted at a faint membrane meet
        along a short stretch of it. 0 (or None): no joining.
    join_shallow : float or None
        ``relative-cores``: join parts only where the smoothed log-odds along their contact
        stay at least this fraction of their cores' level (a shallow valley; with
        ``join_wide``, both must hold: new model files record both). None: no such criterion;
        without ``join_wide`` nothing is joined.
    neck_depth : float
        ``necks``: how much narrower than the object a neck must be to part it, as a fraction of
        the object radius (``object_diameter / 2``).
    object_diameter : float or None
        Typical object diameter in pixels (derived from the annotations); None: necks deeper
        than 2 px part objects.
    interior_class : int
        ``interiors``: the class whose connected regions seed one object each.
    min_size : int
        Instances with fewer pixels than this are removed (0 or 1: keep all).
    fill_holes : bool
        Fill background regions enclosed by foreground before labelling.
    watershed : bool
        Split touching objects with a watershed seeded at the peaks of the distance transform
        (or of the foreground probability, when probabilities are given).
    watershed_min_distance : int
        Minimal distance in pixels between two seeds of the watershed.
    connectivity : int
        Neighbourhood of the labelling: 1 = 4 (2D) / 6 (3D) neighbours, 2 = 8 / 18, 3 = 26.
    per_plane : bool
        For 3D (and higher) input, label each plane along axis 0 on its own (ids unique over the
        stack) instead of using a 3D neighbourhood.
    seed_threshold : float or None
        Split objects at their confident cores (needs the probabilities): the foreground
        probability, smoothed by a Gaussian of 1 px, above this value forms one seed per
        connected core, and a watershed on the probability grows the seeds through the
        foreground. A thin, uncertain bridge between two cells (a membrane the network saw only
        faintly) thus no longer merges them. A foreground region without a core stays one
        object. None: plain connected components.
    close_gaps : int
        Give back the separation gaps the network learned from the weight maps (training turns a
        contact between two objects into a 2 px background gap): a background pixel with two
        different objects at most this many pixels apart joins the nearer one. 0 = keep the gaps.
        Not
        used with ``watershed`` (the watershed splits objects inside the foreground instead).
    """

    foreground_classes: tuple[int, ...] = (1,)
    method: Literal["relative-cores", "cores", "interiors", "necks"] = "cores"
    interior_class: int = 1
    core_ratio: float = form_field(
        0.6,  # chosen on all six shared sets, several seeds (docs/benchmarks.md)
        "core level",
        "objects are parted at cores where the network is at least this sure relative to the "
        "object's own confidence (log-odds over their 90th percentile, capped at p = 0.98; "
        "method relative-cores; the model file records the value); higher parts more, lower "
        "merges more",
        min=0.05,
        max=0.99,
        step=0.05,
    )
    join_wide: float = form_field(
        0.0,  # off for files written before it; new models record JOIN_WIDE (annotation/derived.py)
        "join width",
        "parts of one object that touch along at least this many times the width of the "
        "smaller part are joined again (a cell cut between two confident patches of its own); "
        "0 = never; method relative-cores; the model file records the value",
        min=0.0,
        max=3.0,
        step=0.1,
    )
    join_shallow: float | None = None
    neck_depth: float = form_field(
        0.4,
        "neck depth",
        "objects are parted where they narrow by more than this fraction of the "
        "annotated objects' radius (method necks; the model file records the value); "
        "smaller parts more, larger merges more",
        min=0.05,
        max=2.0,
        step=0.05,
    )
    object_diameter: float | None = None
    # field metadata: label, limits and tooltip of the widget form (napari_unet._widgets._forms)
    min_size: int = form_field(
        0,
        "min size (px)",
        "objects smaller than this many pixels are removed; auto: a quarter of "
        "the smallest object annotated for training (recorded in the model file), the same "
        "rule as the command line; 0 keeps every object, specks included",
        min=0,
        max=1_000_000,
        suffix=" px",
    )
    fill_holes: bool = form_field(
        False,
        "fill holes",
        "fill holes inside objects; set from the model file (on when no "
        "annotated object had a hole)",
    )
    watershed: bool = form_field(
        False,
        "split touching objects (watershed)",
        "also split touching objects at the peaks of the distance transform "
        "(objects are already split at the network's confident cores)",
    )
    watershed_min_distance: int = form_field(
        5,
        "seed distance",
        "smallest distance between two watershed seeds: about the radius of the smallest object",
        min=1,
        max=1000,
        suffix=" px",
    )
    connectivity: int = 1
    per_plane: bool = True
    seed_threshold: float | None = 0.98
    close_gaps: int = 2

    def __post_init__(self) -> None:
        classes = tuple(self.foreground_classes)
        valid = all(isinstance(c, (int, np.integer)) and 0 <= c < 256 for c in classes)
        if not classes or not valid:
            raise InputError(
                "foreground_classes must be a non-empty tuple of classes 0..255, "
                f"got {self.foreground_classes!r}."
            )
        object.__setattr__(self, "foreground_classes", tuple(int(c) for c in classes))
        if self.min_size < 0:
            raise InputError(f"min_size must be >= 0, got {self.min_size}.")
        if self.watershed_min_distance < 1:
            raise InputError(
                f"watershed_min_distance must be >= 1, got {self.watershed_min_distance}."
            )
        if self.seed_threshold is not None and not 0 < self.seed_threshold < 1:
            raise InputError(f"seed_threshold must be between 0 and 1, got {self.seed_threshold}.")
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if not 0 < self.core_ratio < 1:
            raise InputError(f"core_ratio must be between 0 and 1, got {self.core_ratio}.")
        for name in ("join_wide", "join_shallow"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise InputError(f"{name} must be 0 (off) or positive, got {value}.")
        if not self.neck_depth > 0:
            raise InputError(f"neck_depth must be positive, got {self.neck_depth}.")
        if self.object_diameter is not None and not self.object_diameter > 0:
            raise InputError(f"object_diameter must be positive, got {self.object_diameter}.")
        if self.close_gaps < 0:
            raise InputError(f"close_gaps must be >= 0, got {self.close_gaps}.")
        if self.connectivity < 1:
            raise InputError(f"connectivity must be >= 1, got {self.connectivity}.")


def semantic_labels(probabilities: np.ndarray) -> np.ndarray:
    """Most probable class per pixel.

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(K, ...)`` class probabilities (or scores), class axis first, 1 <= K <= 256.

    Returns
    -------
    numpy.ndarray
        uint8 class index per pixel, shape ``probabilities.shape[1:]``.
    """
    p = np.asarray(probabilities)
    if p.ndim < 2 or p.size == 0:
        raise InputError(f"probabilities must have shape (K, ...) with K >= 1, got {p.shape}.")
    if not np.issubdtype(p.dtype, np.number) or np.iscomplexobj(p):
        raise InputError(f"probabilities must be real numbers, got dtype {p.dtype}.")
    if p.shape[0] > 256:
        raise InputError(f"At most 256 classes are supported, got {p.shape[0]}.")
    return np.argmax(p, axis=0).astype(np.uint8)


def _check_semantic(semantic: np.ndarray) -> np.ndarray:
    s = np.asarray(semantic)
    if s.dtype == bool:
        return s.astype(np.uint8)
    if not np.issubdtype(s.dtype, np.integer):
        raise InputError(f"semantic must be an integer class image, got dtype {s.dtype}.")
    if s.size == 0 or s.ndim < 1:
        raise InputError(f"semantic must be a non-empty image, got shape {s.shape}.")
    return s


def foreground_mask(semantic: np.ndarray, config: PostprocessConfig | None = None) -> np.ndarray:
    """Boolean mask of the pixels whose class is one of ``config.foreground_classes``.

    Parameters
    ----------
    semantic : numpy.ndarray
        Integer class image (e.g. from :func:`semantic_labels`).
    config : PostprocessConfig, optional
        Defaults to ``PostprocessConfig()`` (class 1 is foreground).

    Returns
    -------
    numpy.ndarray
        bool array of the same shape.
    """
    cfg = config if config is not None else PostprocessConfig()
    return np.isin(_check_semantic(semantic), cfg.foreground_classes)


def _seeds(components: np.ndarray, surface: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Watershed markers: plateaus of local maxima of ``surface``, at least one per component."""
    fg = components > 0
    size = 2 * cfg.watershed_min_distance + 1
    peaks = fg & (surface == ndimage.maximum_filter(surface, size=size, mode="nearest"))
    # a plateau (e.g. the ridge of an elongated object) is one seed, but never spans two objects
    plateaus, _ = ndimage.label(peaks, structure=np.ones((3,) * fg.ndim, bool))
    n = int(components.max())
    key = np.where(peaks, plateaus.astype(np.int64) * (n + 1) + components, 0)
    markers = relabel_sequential(key)[0]
    # a component whose maxima were all suppressed by a brighter neighbour gets itself as seed
    has_seed = np.zeros(n + 1, bool)
    has_seed[components[peaks]] = True
    missing = ~has_seed[components] & fg
    markers[missing] = markers.max() + components[missing]
    return markers


def _instances(
    fg: np.ndarray,
    fg_prob: np.ndarray | None,
    cfg: PostprocessConfig,
    interior: np.ndarray | None = None,
    interior_prob: np.ndarray | None = None,
) -> np.ndarray:
    """Label one image (2D or nD) of foreground; returns ids 1..n."""
    structure = ndimage.generate_binary_structure(fg.ndim, cfg.connectivity)
    if cfg.fill_holes:
        fg = ndimage.binary_fill_holes(fg)
    if cfg.method == "interiors" and interior is not None:
        labels = grow_interiors(fg, interior, interior_prob, cfg)
    elif cfg.method == "necks" and not cfg.watershed:
        labels = close_gaps(split_at_necks(fg, cfg), cfg.close_gaps)
    elif cfg.method == "relative-cores" and not cfg.watershed and fg_prob is not None:
        components = ndimage.label(fg, structure=structure)[0]
        cores = split_at_relative_cores(
            components,
            fg_prob,
            cfg.core_ratio,
            cfg.seed_threshold,
            cfg.connectivity,
            min_core=cfg.min_size // 2,
            wide=cfg.join_wide,
            shallow=cfg.join_shallow,
        )
        labels = close_gaps(cores, cfg.close_gaps)
    else:
        labels = _parted_components(fg, fg_prob, cfg, structure)
    if cfg.min_size > 1:
        small = np.bincount(labels.ravel()) < cfg.min_size
        small[0] = False
        labels[small[labels]] = 0
    return relabel_sequential(labels)[0]


def _parted_components(fg, fg_prob, cfg: PostprocessConfig, structure) -> np.ndarray:
    """Connected components, split by a watershed or at confident cores (method ``cores``)."""
    labels, n = ndimage.label(fg, structure=structure)
    if cfg.watershed and n:
        surface = ndimage.distance_transform_edt(fg) if fg_prob is None else fg_prob
        markers = _seeds(labels, surface, cfg)
        labels = watershed(-surface, markers, mask=fg, connectivity=cfg.connectivity)
    else:
        if n and fg_prob is not None and cfg.seed_threshold is not None:
            labels = split_at_cores(
                labels, fg_prob, cfg.seed_threshold, cfg.connectivity, min_core=cfg.min_size // 2
            )
        labels = close_gaps(labels, cfg.close_gaps)
    return labels


def grow_interiors(
    fg: np.ndarray,
    interior: np.ndarray,
    interior_prob: np.ndarray | None,
    cfg: PostprocessConfig,
) -> np.ndarray:
    """Objects of method ``interiors``: one seed per connected interior region, grown through
    the foreground by a watershed over ``1 - interior_prob`` (without probabilities: over the
    distance to the nearest interior). Interior specks smaller than a quarter of ``min_size``
    seed nothing; a foreground region without any seed stays one object."""
    structure = ndimage.generate_binary_structure(fg.ndim, cfg.connectivity)
    seeds, n = ndimage.label(interior & fg, structure=structure)
    if n and cfg.min_size > 3:
        small = np.bincount(seeds.ravel()) < cfg.min_size // 4
        small[0] = False
        seeds[small[seeds]] = 0
    regions, n_regions = ndimage.label(fg, structure=structure)
    if not n_regions:
        return regions
    markers = seeds.astype(np.int64)
    seeded = np.zeros(n_regions + 1, bool)
    seeded[regions[markers > 0]] = True
    lonely = fg & ~seeded[regions]
    markers[lonely] = markers.max() + regions[lonely]
    if interior_prob is not None:
        elevation = 1.0 - interior_prob.astype(np.float32)
    else:
        elevation = ndimage.distance_transform_edt(~(markers > 0)).astype(np.float32)
    return watershed(elevation, markers, mask=fg, connectivity=cfg.connectivity)


def split_at_necks(fg: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Objects of method ``necks``: the foreground's connected components, parted where they
    narrow by more than ``neck_depth`` x the object radius (see the module docstring)."""
    structure = ndimage.generate_binary_structure(fg.ndim, cfg.connectivity)
    regions, n = ndimage.label(fg, structure=structure)
    if not n:
        return regions
    depth = 2.0
    if cfg.object_diameter:
        depth = max(1.0, cfg.neck_depth * cfg.object_diameter / 2.0)
    distance = ndimage.distance_transform_edt(fg)
    # h-maxima on a fixed-point copy: float plateaus would make ties depend on rounding
    peaks = h_maxima(np.round(distance * 10).astype(np.int32), int(round(depth * 10))) > 0
    seeds, n_seeds = ndimage.label(peaks & fg, structure=np.ones((3,) * fg.ndim, bool))
    markers = seeds.astype(np.int64)
    seeded = np.zeros(n + 1, bool)
    seeded[regions[seeds > 0]] = True
    lonely = fg & ~seeded[regions]
    markers[lonely] = n_seeds + regions[lonely]
    return watershed(-distance, markers, mask=fg, connectivity=cfg.connectivity)


def log_odds(probability: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float32, with p kept within [1e-7, 1 - 1e-7]."""
    p = np.clip(np.asarray(probability, np.float64), 1e-7, 1 - 1e-7)
    return (np.log(p) - np.log1p(-p)).astype(np.float32)


def component_percentile(values: np.ndarray, components: np.ndarray, q: float) -> np.ndarray:
    """Per component id (index), the ``q``-th percentile (nearest rank) of ``values`` over its
    pixels; 0 for id 0 and for ids without pixels. One sort, no loop over components."""
    flat_ids = components.ravel()
    order = np.lexsort((values.ravel(), flat_ids))
    counts = np.bincount(flat_ids, minlength=int(components.max()) + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = starts + np.floor(q / 100 * np.maximum(counts - 1, 0)).astype(np.int64)
    out = values.ravel()[order][np.minimum(rank, flat_ids.size - 1)].astype(np.float32)
    out[counts == 0] = 0
    out[0] = 0
    return out


def split_at_relative_cores(
    components: np.ndarray,
    fg_prob: np.ndarray,
    ratio: float,
    cap: float | None = 0.98,
    connectivity: int = 1,
    min_core: int = 0,
    wide: float | None = None,
    shallow: float | None = None,
) -> np.ndarray:
    """Split connected components at cores relative to their own confidence (method
    ``relative-cores``, module docstring): log-odds above ``ratio`` x the component's 90th
    percentile, or above the log-odds of ``cap`` where that is lower. A component without a
    core stays one object. Parts whose contact is ``wide`` (and, when given, ``shallow``;
    :func:`join_contacts`) are joined again; without ``wide`` nothing is joined."""
    surface = ndimage.gaussian_filter(log_odds(fg_prob), 1.0)
    fg = components > 0
    top = component_percentile(surface, components, 90)
    level = ratio * np.maximum(top, 0)
    if cap is not None:
        level = np.minimum(level, np.log(cap / (1 - cap)))
    core_mask = fg & (surface > level[components])
    parted = _grow_from_cores(components, core_mask, surface, connectivity, min_core)
    if wide and parted.max() > 0:  # the valley is a further condition; width 0: no joining
        owner = np.zeros(int(parted.max()) + 1, np.int64)
        owner[parted.ravel()] = components.ravel()
        parted = join_contacts(parted, wide, shallow, surface, level[owner])
    return parted


def _grow_from_cores(components, core_mask, surface, connectivity: int, min_core: int):
    """Watershed of ``-surface`` from the connected cores (those of at least ``min_core``
    pixels) through the components; a component without a core keeps its own label."""
    fg = components > 0
    structure = ndimage.generate_binary_structure(fg.ndim, connectivity)
    cores, n_cores = ndimage.label(core_mask, structure=structure)
    if n_cores and min_core > 1:
        small = np.bincount(cores.ravel()) < min_core
        small[0] = False
        cores[small[cores]] = 0
        cores, n_cores = ndimage.label(cores > 0, structure=structure)
    if n_cores == 0:
        return components
    has_core = np.zeros(int(components.max()) + 1, bool)
    has_core[components[cores > 0]] = True
    has_core[0] = False
    markers = cores.astype(np.int64)
    lonely = has_core[components] == 0
    markers[lonely & fg] = n_cores + components[lonely & fg]
    return watershed(-surface, markers, mask=fg, connectivity=connectivity)


def split_at_cores(
    components: np.ndarray,
    fg_prob: np.ndarray,
    threshold: float,
    connectivity: int = 1,
    min_core: int = 0,
) -> np.ndarray:
    """Split connected components at their confident cores (see ``seed_threshold``).

    Cores smaller than ``min_core`` pixels do not count (a fleck of confidence is no object).
    """
    smooth = ndimage.gaussian_filter(fg_prob.astype(np.float32), 1.0)
    core_mask = (smooth > threshold) & (components > 0)
    return _grow_from_cores(components, core_mask, smooth, connectivity, min_core)


def _first_object(
    labels: np.ndarray, step: tuple[int, ...], width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the first object id met walking up to ``width`` steps along ``step``, and the
    number of steps taken (``width + 1`` where none is met)."""
    found = np.zeros_like(labels)
    dist = np.full(labels.shape, width + 1, np.int32)
    padded = np.pad(labels, width)
    inner = tuple(slice(width, width + n) for n in labels.shape)
    for k in range(width, 0, -1):  # nearer objects overwrite farther ones
        window = zip(inner, step, strict=True)
        view = padded[tuple(slice(s.start + k * d, s.stop + k * d) for s, d in window)]
        hit = view > 0
        found[hit] = view[hit]
        dist[hit] = k
    return found, dist


def close_gaps(labels: np.ndarray, width: int) -> np.ndarray:
    """Give separation gaps back to the objects they separate.

    A background pixel inside a gap of at most ``width`` pixels between two different objects,
    measured along a straight line (axis-parallel or diagonal), joins the nearer object.
    Wider gaps, background around isolated objects and the open ends of a gap stay background.
    """
    if width < 1 or labels.max() < 2:
        return labels
    out = labels.copy()
    best = np.full(labels.shape, 2 * width + 3, np.int32)
    steps = [d for d in np.ndindex(*(3,) * labels.ndim)]
    for raw in steps:
        step = tuple(int(v) - 1 for v in raw)
        if not any(step) or next(v for v in step if v) < 0:
            continue  # each line once (the first non-zero component positive)
        fwd, dist_f = _first_object(labels, step, width)
        back, dist_b = _first_object(labels, tuple(-v for v in step), width)
        between = (labels == 0) & (fwd > 0) & (back > 0) & (fwd != back)
        span = dist_f + dist_b
        take = between & (span <= width + 1) & (span < best)
        out[take] = np.where(dist_f <= dist_b, fwd, back)[take]
        best[take] = span[take]
    return out


def instance_labels(
    semantic: np.ndarray,
    config: PostprocessConfig | None = None,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Number the objects of a semantic segmentation.

    Steps: foreground = ``config.foreground_classes``; optional hole filling; connected components
    (``config.connectivity``); optional watershed split of touching objects, seeded at the peaks
    (at least ``watershed_min_distance`` apart) of the distance transform, or of the summed
    foreground probability when ``probabilities`` is given; removal of instances smaller than
    ``min_size``; consecutive ids. With ``per_plane`` (default) a 3D or higher input is processed
    plane by plane along axis 0 and the ids of each plane are offset to stay unique.

    Parameters
    ----------
    semantic : numpy.ndarray
        Integer class image, 2D or nD.
    config : PostprocessConfig, optional
        Options; defaults to ``PostprocessConfig()``.
    probabilities : numpy.ndarray, optional
        ``(K,) + semantic.shape`` class probabilities, used for the watershed seeds and surface.

    Returns
    -------
    numpy.ndarray
        int32 instance labels, 0 = background, ids 1..n.
    """
    cfg = config if config is not None else PostprocessConfig()
    fg = foreground_mask(semantic, cfg)
    fg_prob = None
    if probabilities is not None:
        prob = np.asarray(probabilities)
        if prob.ndim != fg.ndim + 1 or prob.shape[1:] != fg.shape:
            raise InputError(f"probabilities must have shape (K,) + {fg.shape}, got {prob.shape}.")
        if max(cfg.foreground_classes) >= prob.shape[0]:
            raise InputError(
                f"foreground class {max(cfg.foreground_classes)} has no probability map "
                f"(K = {prob.shape[0]})."
            )
        fg_prob = prob[list(cfg.foreground_classes)].sum(axis=0, dtype=np.float64)
    interior = interior_prob = None
    if cfg.method == "interiors":
        interior = np.asarray(semantic) == cfg.interior_class
        if probabilities is not None:
            interior_prob = np.asarray(probabilities)[cfg.interior_class]
    stack = cfg.per_plane and fg.ndim >= 3
    spatial = fg.ndim - 1 if stack else fg.ndim
    if cfg.connectivity > spatial:
        raise InputError(
            f"connectivity must be between 1 and {spatial} for {spatial}D labelling, "
            f"got {cfg.connectivity}."
        )

    def part(a, k):
        return None if a is None else a[k]

    if not stack:
        out = _instances(fg, fg_prob, cfg, interior, interior_prob)
    else:
        planes = [
            _instances(fg[k], part(fg_prob, k), cfg, part(interior, k), part(interior_prob, k))
            for k in range(fg.shape[0])
        ]
        offsets = np.cumsum([0] + [int(pl.max()) for pl in planes[:-1]])
        pairs = zip(planes, offsets, strict=True)
        out = np.stack([np.where(pl > 0, pl + off, 0) for pl, off in pairs])
    if out.max() > np.iinfo(np.int32).max:
        raise InputError("Too many objects for int32 labels.")
    return out.astype(np.int32)


def contacts(
    labels: np.ndarray, surface: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of touching labels: ``(a, b, size, height)`` with a < b.

    ``size`` is the length (2D) or area (3D) of the contact: with f_k the number of
    face-adjacent pixel pairs between the two across axis k, sqrt(sum f_k^2) -- exact for a
    straight contact at any angle, where the plain count of faces would make a diagonal one
    up to sqrt(2) x longer. ``height`` is the mean of ``surface`` over those pixel pairs (zeros
    without ``surface``)."""
    firsts, seconds, axes, values = [], [], [], []
    for axis in range(labels.ndim):
        head = labels.take(np.arange(labels.shape[axis] - 1), axis=axis).ravel()
        tail = labels.take(np.arange(1, labels.shape[axis]), axis=axis).ravel()
        touch = (head != tail) & (head > 0) & (tail > 0)
        firsts.append(np.minimum(head[touch], tail[touch]))
        seconds.append(np.maximum(head[touch], tail[touch]))
        axes.append(np.full(int(touch.sum()), axis))
        if surface is not None:
            s_head = surface.take(np.arange(labels.shape[axis] - 1), axis=axis).ravel()
            s_tail = surface.take(np.arange(1, labels.shape[axis]), axis=axis).ravel()
            values.append((s_head[touch] + s_tail[touch]) / 2)
    a = np.concatenate(firsts).astype(np.int64)
    b = np.concatenate(seconds).astype(np.int64)
    if a.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float64), np.zeros(0, np.float64)
    key = a * (int(labels.max()) + 1) + b
    unique, index, inverse, faces = np.unique(
        key, return_index=True, return_inverse=True, return_counts=True
    )
    axis_of = np.concatenate(axes)
    per_axis = [
        np.bincount(inverse[axis_of == k], minlength=unique.size) for k in range(labels.ndim)
    ]
    size = np.sqrt(np.sum(np.square(per_axis, dtype=np.float64), axis=0))
    height = np.zeros(unique.size, np.float64)
    if surface is not None:
        height = np.bincount(inverse, np.concatenate(values), minlength=unique.size) / faces
    return a[index], b[index], size, height


def _cross_section(labels: np.ndarray) -> np.ndarray:
    """Per label, the cross-section of its equivalent disk (2D: diameter) or ball (3D: area
    of the central disk)."""
    area = np.bincount(labels.ravel()).astype(np.float64)
    if labels.ndim >= 3:
        radius = (area * 3 / (4 * np.pi)) ** (1 / 3)
        return np.pi * radius**2
    return 2 * np.sqrt(area / np.pi)


def join_labels(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``labels`` with every pair (a[i], b[i]) joined into one object (chains included), each
    group taking its smallest id (``scipy.sparse.csgraph.connected_components``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(labels.max()) + 1
    graph = coo_matrix((np.ones(len(a), bool), (np.asarray(a), np.asarray(b))), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    smallest = np.full(group.max() + 1, n, np.int64)
    np.minimum.at(smallest, group, np.arange(n))
    return smallest[group][labels]


def join_contacts(
    labels: np.ndarray,
    wide: float | None = None,
    shallow: float | None = None,
    surface: np.ndarray | None = None,
    level: np.ndarray | None = None,
) -> np.ndarray:
    """Join touching objects whose contact meets every criterion given: ``wide`` -- its
    length at least ``wide`` x the cross-section of the smaller object (:func:`_cross_section`);
    ``shallow`` -- the mean ``surface`` along it at least ``shallow`` x the lower of the two
    objects' ``level`` (per label): the valley between them is shallow."""
    a, b, size, height = contacts(labels, surface if shallow else None)
    keep = np.ones(a.size, bool)
    if wide:
        cross = _cross_section(labels)
        keep &= size >= wide * np.minimum(cross[a], cross[b])
    if shallow:
        keep &= height >= shallow * np.minimum(level[a], level[b])
    return join_labels(labels, a[keep], b[keep]) if keep.any() else labels

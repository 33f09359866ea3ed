"""The instance rules of the default (three classes: background, interior, border band)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.annotation.derived import (
    CORE_RATIO,
    JOIN_SHALLOW,
    JOIN_WIDE,
    derive_settings,
    describe,
    join_text,
    postprocess_config,
)
from napari_unet.annotation.schema import (
    AnnotationConfig,
    border_targets,
    plane_targets,
    separate_touching,
    training_planes,
)
from napari_unet.inference.postprocess import (
    PostprocessConfig,
    component_percentile,
    contacts,
    instance_labels,
    join_contacts,
    join_labels,
)
from napari_unet.metrics import matching
from napari_unet.sample_data import make_cell_stack

INTERIORS = PostprocessConfig(method="interiors", foreground_classes=(1, 2))


@pytest.fixture(scope="module")
def cells():
    _, truth = make_cell_stack(1, seed=3)
    return truth[0].astype(np.int32)


def _network(target: np.ndarray, confidence: float, rng=None) -> np.ndarray:
    """Probabilities of a network that ranks the classes right with ``confidence`` on the
    winner (optionally with noise that never changes the ranking)."""
    probs = np.full((3,) + target.shape, (1 - confidence) / 2, np.float32)
    for c in range(3):
        probs[c][target == c] = confidence
    if rng is not None:
        probs += rng.uniform(0, 0.3 * (confidence - (1 - confidence) / 2), probs.shape)
        probs /= probs.sum(axis=0, keepdims=True)
    return probs


def test_border_targets_give_every_object_a_seed_and_part_touching_ones(cells):
    target = border_targets(cells)
    assert set(np.unique(target)) == {0, 1, 2}
    assert np.array_equal(target > 0, cells > 0)  # the band is inside the objects
    ids = np.unique(cells[cells > 0])
    with_interior = np.unique(cells[target == 1])
    assert np.array_equal(ids, with_interior)  # every object keeps interior pixels
    # no interior pixel touches an interior pixel of another object (4-neighbours)
    inner = np.where(target == 1, cells, 0)
    right = (inner[:, 1:] > 0) & (inner[:, :-1] > 0) & (inner[:, 1:] != inner[:, :-1])
    down = (inner[1:] > 0) & (inner[:-1] > 0) & (inner[1:] != inner[:-1])
    assert not right.any() and not down.any()


def test_a_thin_object_keeps_an_interior():
    labels = np.zeros((20, 40), np.int32)
    labels[5:8, 2:38] = 1  # 3 px thin, far thinner than two bands of 8 px
    target = border_targets(labels, width=8)
    assert (target == 1).any()


@pytest.mark.parametrize("confidence", [0.95, 0.6, 0.4])
def test_a_confident_and_an_unconfident_network_give_the_same_objects(cells, confidence):
    target = border_targets(cells)
    rng = np.random.default_rng(0)
    confident = _network(target, 0.99)
    unsure = _network(target, confidence, rng)
    expected = instance_labels(confident.argmax(0), INTERIORS, probabilities=confident)
    got = instance_labels(unsure.argmax(0), INTERIORS, probabilities=unsure)
    assert matching(got, cells)["f1"] == 1.0
    assert matching(got, expected, 0.75)["f1"] == 1.0  # noise moves band pixels only


def test_the_paper_cores_split_an_unconfident_network_differently(cells):
    """Why the default changed: at p < 0.98 the core threshold finds no cores, and touching
    cells merge (the same network output, read by the paper's two-class rule)."""
    target = border_targets(cells)
    probs = _network(target, 0.6)
    two = np.stack([probs[0], probs[1] + probs[2]])
    semantic = (probs.argmax(0) > 0).astype(np.uint8)
    cores = instance_labels(semantic, PostprocessConfig(), probabilities=two)
    interiors = instance_labels(probs.argmax(0), INTERIORS, probabilities=probs)
    assert matching(interiors, cells)["f1"] > matching(cores, cells)["f1"]


def test_interiors_without_probabilities_use_the_distance_to_the_seeds(cells):
    target = border_targets(cells)
    got = instance_labels(target.astype(np.uint8), INTERIORS)
    assert matching(got, cells)["f1"] == 1.0


def _planes(labels: np.ndarray, config: AnnotationConfig | None = None):
    image = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    return training_planes(image, labels, config or AnnotationConfig())[0]


def test_stray_pixels_in_annotations_do_not_move_derived_settings(cells):
    clean = derive_settings(_planes(cells[None]), AnnotationConfig())
    stray = cells.copy()
    rng = np.random.default_rng(1)
    background = np.argwhere(stray == 0)
    for k, (y, x) in enumerate(background[rng.choice(len(background), 40, replace=False)]):
        stray[y, x] = 1000 + k  # 40 one-pixel pieces with ids of their own
    noisy = derive_settings(_planes(stray[None]), AnnotationConfig())
    assert clean["min_size"] > 10
    assert noisy["min_size"] == clean["min_size"]
    assert noisy["fill_holes"] == clean["fill_holes"]
    assert "40 stray piece(s)" in noisy["derived_from"]


def test_a_single_annotated_object_derives_its_own_size():
    labels = np.zeros((1, 64, 64), np.int32)
    yy, xx = np.mgrid[:64, :64]
    labels[0][(yy - 32) ** 2 + (xx - 32) ** 2 < 100] = 1
    config = AnnotationConfig(instance_targets="interiors")
    derived = derive_settings(_planes(labels, config), config)
    area = int((labels > 0).sum())
    assert derived["min_size"] == area // 4
    assert derived["method"] == "relative-cores" and derived["foreground_classes"] == [1, 2]
    line = describe(derived)
    assert "min size" in line and "relative cores at 0.6, cut cells joined" in line


def test_the_paper_preset_trains_two_classes_and_records_relative_cores(cells):
    config = AnnotationConfig(instance_targets="paper")
    target, _, classes = plane_targets(cells, config)
    assert classes == 2 and set(np.unique(target)) == {0, 1}
    derived = derive_settings(_planes(cells[None], config), config)
    assert derived["method"] == "relative-cores" and derived["core_ratio"] == CORE_RATIO
    post = postprocess_config(derived)
    assert post.method == "relative-cores" and post.foreground_classes == (1,)
    assert derived["join_wide"] == post.join_wide == JOIN_WIDE
    assert derived["join_shallow"] == post.join_shallow == JOIN_SHALLOW
    assert postprocess_config(derived, core_ratio=0.5).core_ratio == 0.5  # an option wins


def test_model_files_without_a_method_segment_as_before():
    """Files written before the three-class default recorded only min size and holes."""
    old = postprocess_config({"min_size": 12, "fill_holes": True})
    assert old.method == "cores" and old.foreground_classes == (1,) and old.min_size == 12
    assert old.seed_threshold == 0.98
    relative = postprocess_config({"method": "relative-cores", "core_ratio": 0.6})
    assert not relative.join_wide and relative.join_shallow is None  # before cut cells were joined
    assert postprocess_config({"method": "interiors", "foreground_classes": [1, 2]}).method == (
        "interiors"
    )


def test_cli_says_what_was_derived_and_predict_flags_override_it(tmp_path, capsys):
    import tifffile

    from napari_unet.cli import main
    from napari_unet.sample_data import CellSampleConfig

    image, truth = make_cell_stack(2, CellSampleConfig(shape=(96, 96), n_cells=6), seed=1)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", truth)
    model = tmp_path / "m.safetensors"
    code = main(["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "--out",
                 str(model), "--steps", "2", "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0
    code = main(["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "--out",
                 str(model), "--steps", "2", "--device", "cpu",
                 "--instance-targets", "interiors"])  # fmt: skip
    err = capsys.readouterr().err
    joined = join_text(JOIN_WIDE, JOIN_SHALLOW)
    relative = f"instances: relative cores at {CORE_RATIO}{joined}, min size"
    assert code == 0 and f"derived from the annotations: {relative}" in err
    out = tmp_path / "labels.npy"
    code = main(["predict", str(model), str(tmp_path / "image.tif"), "--out", str(out),
                 "--instances", "--method", "cores", "--min-size", "7",
                 "--no-fill-holes"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert "instances: cores at 0.98, min size 7 px, fill holes off" in err
    assert "--min-size, --method, --fill-holes as given" in err
    code = main(["predict", str(model), str(tmp_path / "image.tif"), "--out", str(out),
                 "--instances", "--core-ratio", "0.4"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and f"instances: relative cores at 0.4{joined}, min size" in err
    assert "--core-ratio as given" in err
    code = main(["predict", str(model), str(tmp_path / "image.tif"), "--out", str(out),
                 "--instances", "--core-ratio", "1.5"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "core_ratio must be between 0 and 1" in err[0]


NECKS = PostprocessConfig(method="necks", object_diameter=24.0, close_gaps=0)


def _discs(*centres: tuple[int, int], radius: int = 12, shape=(48, 96)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.any([(yy - y) ** 2 + (xx - x) ** 2 <= radius**2 for y, x in centres], axis=0)


def test_necks_part_two_touching_discs_and_keep_an_elongated_object_whole():
    pair = _discs((24, 36), (24, 58))  # overlapping discs: a neck much narrower than a disc
    labels = instance_labels(pair.astype(np.uint8), NECKS)
    assert labels.max() == 2
    left, right = labels[24, 30], labels[24, 64]
    assert left != right and left > 0 and right > 0
    rod = np.zeros((48, 96), bool)
    rod[16:32, 10:86] = True  # a long object of even width: no neck anywhere
    assert instance_labels(rod.astype(np.uint8), NECKS).max() == 1


def _bridged_gaps(cells: np.ndarray, bridges: int = 6) -> np.ndarray:
    """The paper network's foreground: touching cells parted by the learned gaps, except at a
    few places where it saw the membrane only faintly (3x3 bridges across the gap)."""
    foreground = separate_touching(cells) > 0
    gap = (cells > 0) & ~foreground
    ys, xs = np.nonzero(gap)
    for i in np.random.default_rng(0).choice(len(ys), bridges, replace=False):
        window = (slice(ys[i] - 1, ys[i] + 2), slice(xs[i] - 1, xs[i] + 2))
        foreground[window] |= gap[window]
    return foreground


@pytest.mark.parametrize("confidence", [0.99, 0.7, 0.55])
def test_necks_give_the_same_objects_for_any_confidence(cells, confidence):
    """Two classes (the paper's), read by necks: only the arg-max counts, so a less confident
    network (another seed, a fine-tuned start) gives exactly the same objects, and bridges
    across the learned gaps are cut at their necks."""
    foreground = _bridged_gaps(cells).astype(np.float32)
    probs = np.stack([1 - foreground, foreground])
    unsure = 0.5 + (probs - 0.5) * (2 * confidence - 1)
    config = PostprocessConfig(method="necks", object_diameter=36.0)
    expected = instance_labels(probs.argmax(0), config, probabilities=probs)
    got = instance_labels(unsure.argmax(0), config, probabilities=unsure)
    assert np.array_equal(got, expected)
    bridged = instance_labels(probs.argmax(0), PostprocessConfig(seed_threshold=None))
    assert bridged.max() < cells.max()  # the bridges merge cells without parting
    assert matching(got, cells)["f1"] >= 0.9


def _logits_with_bridges(cells: np.ndarray) -> np.ndarray:
    """Foreground log-odds of a paper network: high in the middle of each cell (growing with
    the distance to its edge, up to 6), just above 0 on a few bridges across the learned gaps,
    -2 on the background."""
    foreground = _bridged_gaps(cells)
    depth = np.minimum(ndimage.distance_transform_edt(foreground), 6.0)
    return np.where(foreground, depth - 0.5, -2.0).astype(np.float32)


@pytest.mark.parametrize("join", [(0, None), (JOIN_WIDE, JOIN_SHALLOW)])
@pytest.mark.parametrize("temperature", [0.25, 3.0, 8.0])
def test_relative_cores_give_the_same_objects_for_any_confidence(cells, temperature, join):
    """A network more or less sure of itself scales its log-odds: relative cores part the
    bridged cells the same way at every scale (at 0.25 the level is capped at p = 0.98, so
    the cores are larger but part the same cells), the paper's fixed 0.98 does not."""
    logits = _logits_with_bridges(cells)

    def network(t: float) -> np.ndarray:
        fg = 1 / (1 + np.exp(-logits / t))
        return np.stack([1 - fg, fg])

    config = PostprocessConfig(method="relative-cores", join_wide=join[0], join_shallow=join[1])
    sure, unsure = network(1.0), network(temperature)
    expected = instance_labels(sure.argmax(0), config, probabilities=sure)
    got = instance_labels(unsure.argmax(0), config, probabilities=unsure)
    if temperature > 1:
        assert np.array_equal(got, expected)
    else:
        assert matching(got, expected, 0.9)["f1"] == 1.0
    assert matching(got, cells)["f1"] >= 0.9
    fixed = instance_labels(unsure.argmax(0), PostprocessConfig(), probabilities=unsure)
    if temperature > 1:  # no pixel reaches 0.98: the bridges merge cells
        assert fixed.max() < got.max()


def test_relative_cores_without_probabilities_are_plain_components(cells):
    config = PostprocessConfig(method="relative-cores")
    got = instance_labels((cells > 0).astype(np.uint8), config)
    assert got.max() == ndimage.label(cells > 0)[0].max()


def test_component_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.random((30, 40)).astype(np.float32)
    components = ndimage.label(rng.random((30, 40)) > 0.4)[0]
    got = component_percentile(values, components, 90)
    for k in range(1, components.max() + 1):
        mine = np.sort(values[components == k])
        assert got[k] == mine[int(np.floor(0.9 * (mine.size - 1)))]
    assert got[0] == 0


def test_contacts_measure_the_length_between_touching_labels_and_their_height():
    labels = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 0]])
    surface = np.arange(12, dtype=np.float32).reshape(3, 4)
    a, b, size, height = contacts(labels, surface)
    found = zip(a, b, size, height, strict=True)
    pairs = {(int(i), int(j)): (float(f), float(h)) for i, j, f, h in found}
    assert set(pairs) == {(1, 2), (1, 3), (2, 3)}  # 0 is background, never a contact
    assert pairs[(1, 2)] == (2.0, (1 + 2 + 5 + 6) / 4)
    assert pairs[(1, 3)][0] == 2.0 and pairs[(2, 3)][0] == 1.0
    assert contacts(np.zeros((3, 3), int))[0].size == 0


@pytest.mark.parametrize("angle", [0, 20, 45, 70])
def test_a_straight_contact_measures_its_length_at_any_angle(angle):
    """Two half-planes meeting along a straight line through a 200 px disc: the contact is
    the chord, 200 px long, whatever its angle (the plain count of faces would give up to
    283 at 45 degrees)."""
    yy, xx = np.mgrid[:241, :241] - 120.0
    disc = yy**2 + xx**2 <= 100**2
    side = np.cos(np.radians(angle)) * xx + np.sin(np.radians(angle)) * yy > 0
    labels = np.where(disc, np.where(side, 2, 1), 0)
    _, _, size, _ = contacts(labels)
    assert size.size == 1 and abs(size[0] - 200) <= 4


def test_join_labels_follows_chains():
    labels = np.arange(6).reshape(1, 6)
    joined = join_labels(labels, np.array([1, 4, 2]), np.array([2, 5, 3]))
    assert joined.tolist() == [[0, 1, 1, 1, 4, 4]]


def _two_patches(radius: int = 12, shape=(40, 80)) -> tuple[np.ndarray, np.ndarray]:
    """One round cell seen by an unsure network (two confident patches, a faint middle) beside
    two cells that touch along a short stretch of a faint membrane."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - 20) ** 2 + (xx - 16) ** 2 <= radius**2
    logits = np.where(disc, 1.0, -3.0)
    for x in (10, 22):
        logits = np.where(disc & ((yy - 20) ** 2 + (xx - x) ** 2 <= 16), 4.0, logits)
    pair = _discs((20, 44), (20, 68), radius=radius - 1, shape=shape)
    pair |= (np.abs(yy - 20) <= 1) & (xx >= 54) & (xx <= 58)  # a short, faint bridge
    depth = np.minimum(ndimage.distance_transform_edt(pair), 6.0)
    logits = np.where(pair, depth - 0.5, logits)
    fg = 1 / (1 + np.exp(-logits))
    return np.stack([1 - fg, fg]).astype(np.float32), disc


def test_a_cell_cut_between_its_own_confident_patches_is_joined_again():
    probs, disc = _two_patches()
    semantic = probs.argmax(0)
    cut = instance_labels(semantic, PostprocessConfig(method="relative-cores"), probs)
    default = PostprocessConfig(
        method="relative-cores", join_wide=JOIN_WIDE, join_shallow=JOIN_SHALLOW
    )
    joined = instance_labels(semantic, default, probs)
    assert np.unique(cut[disc]).size == 2  # without joining, the cell is cut in two
    assert np.unique(joined[disc]).size == 1 and joined.max() == 3  # the touching pair stays
    assert np.array_equal(join_contacts(cut, wide=JOIN_WIDE) > 0, cut > 0)  # only ids change
    off = PostprocessConfig(method="relative-cores", join_wide=0, join_shallow=JOIN_SHALLOW)
    assert np.array_equal(instance_labels(semantic, off, probs), cut)  # width 0: no joining


def test_cli_join_wide_flag_turns_joining_off(tmp_path, capsys):
    import tifffile

    from napari_unet.cli import main
    from napari_unet.sample_data import CellSampleConfig

    image, truth = make_cell_stack(1, CellSampleConfig(shape=(64, 64), n_cells=4), seed=2)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", truth)
    model, out = tmp_path / "m.safetensors", tmp_path / "labels.npy"
    code = main(["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "--out",
                 str(model), "--steps", "1", "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0
    code = main(["predict", str(model), str(tmp_path / "image.tif"), "--out", str(out),
                 "--instances"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and join_text(JOIN_WIDE, JOIN_SHALLOW) in err
    code = main(["predict", str(model), str(tmp_path / "image.tif"), "--out", str(out),
                 "--instances", "--join-wide", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "cut cells joined" not in err
    assert "--join-wide as given" in err
    with pytest.raises(SystemExit):
        main(["predict", str(model), str(tmp_path / "image.tif"), "--out", str(out),
              "--join-wide", "-1"])  # fmt: skip
    assert "expected 0 or a positive number" in capsys.readouterr().err

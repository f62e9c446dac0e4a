"""Tests of ``medseg_env.metrics``: hand-computed cases, edge cases and library cross-checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist
from scipy.spatial.distance import dice as scipy_dice_distance
from scipy.spatial.distance import jaccard as scipy_jaccard_distance
from skimage.metrics import hausdorff_distance as skimage_hausdorff

from medseg_env.metrics import (
    NSD_TOLERANCE_MM,
    area_under_curve,
    dice,
    dice_iou,
    hausdorff_distance,
    hd95,
    iou,
    noc,
    nsd,
    reached,
    surface_distances,
)

# ---------------------------------------------------------------------------------------------
# Independent references (no scipy.ndimage, no shared code with the module)
# ---------------------------------------------------------------------------------------------


def ref_boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour that is background or outside the image."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    inner = m[1:-1, 1:-1]
    all_neighbours_fg = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return inner & ~all_neighbours_fg


def ref_directed(pred, gt, spacing):
    sp = np.asarray(spacing, dtype=float)
    cp = np.argwhere(ref_boundary(pred)) * sp
    cg = np.argwhere(ref_boundary(gt)) * sp
    d = cdist(cp, cg)
    return d.min(axis=1), d.min(axis=0)


def ref_hd(pred, gt, spacing, q):
    d_pg, d_gp = ref_directed(pred, gt, spacing)
    return float(np.percentile(np.concatenate([d_pg, d_gp]), q))


def ref_surface_elements(mask, spacing):
    """Centres (mm) and contour lengths (mm) of the surface elements of ``mask``, by brute force.

    One element per 2x2 cell of pixel centres (image padded with background) whose pixels
    differ; its length is that of the marching-squares segments joining the midpoints of the
    cell sides with differing ends (two such sides: one segment; a saddle, four sides: two
    segments, each cutting off one corner).
    """
    sr, sc = spacing
    m = np.pad(mask.astype(bool), 1)
    tl, tr, bl, br = m[:-1, :-1], m[:-1, 1:], m[1:, :-1], m[1:, 1:]
    differs = {"top": tl != tr, "bottom": bl != br, "left": tl != bl, "right": tr != br}
    mid = {"top": (0.0, 0.5), "bottom": (1.0, 0.5), "left": (0.5, 0.0), "right": (0.5, 1.0)}

    def seg(a, b):
        return math.hypot((mid[a][0] - mid[b][0]) * sr, (mid[a][1] - mid[b][1]) * sc)

    count = sum(d.astype(int) for d in differs.values())  # 0, 2 or 4 sides
    names = list(differs)
    one_segment = sum(
        (differs[a] & differs[b]) * seg(a, b) for k, a in enumerate(names) for b in names[k + 1 :]
    )
    length = np.where(count == 4, seg("top", "left") + seg("bottom", "right"), one_segment)
    on_surface = count > 0
    centres = np.argwhere(on_surface) * np.asarray(spacing, dtype=float)
    return centres, length[on_surface]


def ref_nsd(pred, gt, spacing, tol):
    """NSD with surface elements weighted by contour length (DeepMind's definition)."""
    cp, lp = ref_surface_elements(pred, spacing)
    cg, lg = ref_surface_elements(gt, spacing)
    d = cdist(cp, cg)
    d_pg, d_gp = d.min(axis=1), d.min(axis=0)
    return (lp[d_pg <= tol].sum() + lg[d_gp <= tol].sum()) / (lp.sum() + lg.sum())


def random_blobs(rng: np.random.Generator, shape=(48, 48), n=3) -> np.ndarray:
    """A few random rectangles and discs, some of which touch the border."""
    m = np.zeros(shape, dtype=bool)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        if rng.random() < 0.5:
            r0, c0 = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            m[r0 : r0 + rng.integers(1, 20), c0 : c0 + rng.integers(1, 20)] = True
        else:
            r, c, rad = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(1, 12)
            m |= (rr - r) ** 2 + (cc - c) ** 2 <= rad**2
    return m


def random_pairs(seed: int, count: int, shape=(48, 48)):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield random_blobs(rng, shape), random_blobs(rng, shape)


# ---------------------------------------------------------------------------------------------
# Dice / IoU
# ---------------------------------------------------------------------------------------------


def test_dice_iou_hand_computed():
    pred = np.zeros((4, 4), dtype=bool)
    gt = np.zeros((4, 4), dtype=bool)
    pred[0, 0:3] = True  # 3 pixels
    gt[0, 1:4] = True  # 3 pixels, 2 shared
    assert dice(pred, gt) == pytest.approx(4 / 6)
    assert iou(pred, gt) == pytest.approx(2 / 4)
    assert dice_iou(pred, gt) == pytest.approx((4 / 6, 0.5))


def test_dice_iou_identical_and_disjoint():
    a = np.zeros((5, 5), dtype=bool)
    a[1:3, 1:4] = True
    b = np.zeros((5, 5), dtype=bool)
    b[4, 4] = True
    assert dice_iou(a, a) == (1.0, 1.0)
    assert dice_iou(a, b) == (0.0, 0.0)


def test_dice_iou_empty_conventions():
    empty = np.zeros((6, 7), dtype=bool)
    full = np.ones((6, 7), dtype=bool)
    assert dice_iou(empty, empty) == (1.0, 1.0)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice_iou(empty, full) == (0.0, 0.0)
    assert dice_iou(full, empty) == (0.0, 0.0)


def test_returns_python_floats():
    a = np.eye(5, dtype=np.uint8)
    for value in (*dice_iou(a, a.T), dice(a, a), iou(a, a), nsd(a, a), hd95(a, a)):
        assert type(value) is float


def test_accepts_zero_one_numeric_masks():
    a = np.zeros((5, 5), dtype=np.uint8)
    a[1:4, 1:4] = 1
    b = np.zeros((5, 5), dtype=np.float32)
    b[2:5, 2:5] = 1.0
    assert dice_iou(a, b) == dice_iou(a.astype(bool), b.astype(bool))
    assert dice(a.astype(np.int64), b) == pytest.approx(2 * 4 / 18)


@pytest.mark.parametrize("bad", [np.full((4, 4), 0.5), np.full((4, 4), 2), np.full((4, 4), -1)])
def test_rejects_non_binary_masks(bad):
    ok = np.zeros((4, 4), dtype=bool)
    with pytest.raises(ValueError):
        dice(bad, ok)
    with pytest.raises(ValueError):
        nsd(ok, bad)


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="2D"):
        dice(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3), bool))


@pytest.mark.parametrize(
    "fn",
    [dice, iou, dice_iou, nsd, hd95, hausdorff_distance, surface_distances],
)
def test_shape_mismatch_names_both_shapes(fn):
    a = np.zeros((4, 5), dtype=bool)
    b = np.zeros((5, 4), dtype=bool)
    with pytest.raises(ValueError) as info:
        fn(a, b)
    assert "(4, 5)" in str(info.value) and "(5, 4)" in str(info.value)


def test_dice_iou_match_scipy_distances():
    for pred, gt in random_pairs(seed=0, count=25, shape=(32, 40)):
        if not pred.any() or not gt.any():
            continue
        d, j = dice_iou(pred, gt)
        assert d == pytest.approx(1.0 - scipy_dice_distance(pred.ravel(), gt.ravel()), abs=1e-12)
        assert j == pytest.approx(1.0 - scipy_jaccard_distance(pred.ravel(), gt.ravel()), abs=1e-12)


def test_dice_iou_properties_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(50):
        density = rng.random()
        pred = rng.random((20, 30)) < density
        gt = rng.random((20, 30)) < rng.random()
        d, j = dice_iou(pred, gt)
        assert 0.0 <= j <= d <= 1.0
        assert (d, j) == dice_iou(gt, pred)  # symmetric
        assert d == pytest.approx(2 * j / (1 + j), abs=1e-12)
        assert d == dice(pred, gt) and j == iou(pred, gt)


# ---------------------------------------------------------------------------------------------
# Surface distances, NSD, HD95
# ---------------------------------------------------------------------------------------------


def _lines():
    """Two horizontal 1-pixel lines two rows apart, every surface pixel 2 rows from the other."""
    gt = np.zeros((8, 10), dtype=bool)
    pred = np.zeros((8, 10), dtype=bool)
    gt[2, 2:7] = True
    pred[4, 2:7] = True
    return pred, gt


def test_parallel_lines_hand_computed():
    pred, gt = _lines()
    assert hd95(pred, gt) == pytest.approx(2.0)
    assert hausdorff_distance(pred, gt) == pytest.approx(2.0)
    # NSD's surface elements sit between pixel centres: each 1-pixel line has two rows of them,
    # of equal length (half above, half below the line). gt's lower row is 1 from pred's upper
    # row, its upper row 2 from it (and the same the other way round).
    assert nsd(pred, gt, tolerance_mm=2.0) == 1.0  # tolerance is inclusive
    assert nsd(pred, gt, tolerance_mm=1.9) == pytest.approx(0.5)
    assert nsd(pred, gt, tolerance_mm=1.0) == pytest.approx(0.5)
    assert nsd(pred, gt, tolerance_mm=0.9) == 0.0
    d_pg, d_gp = surface_distances(pred, gt)
    np.testing.assert_allclose(d_pg, 2.0)
    np.testing.assert_allclose(d_gp, 2.0)


def test_anisotropic_spacing_hand_computed():
    pred, gt = _lines()  # offset of 2 rows, no column offset
    assert hd95(pred, gt, spacing=(2.0, 0.5)) == pytest.approx(4.0)
    assert hd95(pred, gt, spacing=(0.5, 2.0)) == pytest.approx(1.0)
    assert nsd(pred, gt, spacing=(0.5, 2.0), tolerance_mm=1.0) == 1.0  # elements 0.5 and 1 away
    assert nsd(pred, gt, spacing=(2.0, 0.5), tolerance_mm=3.0) == pytest.approx(0.5)  # 2 and 4
    assert nsd(pred, gt, spacing=(2.0, 0.5), tolerance_mm=1.9) == 0.0

    # Single pixels: 3 rows and 4 columns apart.
    a = np.zeros((10, 10), dtype=bool)
    b = np.zeros((10, 10), dtype=bool)
    a[1, 1] = True
    b[4, 5] = True
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(3 * 2.0, 4 * 0.5))
    assert hd95(a, b, spacing=(0.5, 2.0)) == pytest.approx(math.hypot(3 * 0.5, 4 * 2.0))


def test_nsd_partial_hand_computed():
    gt = np.zeros((6, 12), dtype=bool)
    pred = np.zeros((6, 12), dtype=bool)
    gt[2, 2:7] = True  # 5 pixels, each 1 from pred
    pred[3, 2:9] = True  # 7 pixels: 5 at 1, one at sqrt(2), one at sqrt(5) from gt
    # Surface elements (cells of 2x2 pixel centres, indexed by their lower-right pixel): gt has
    # rows 2-3, columns 2-7; pred rows 3-4, columns 2-9. A row of elements is two end cells of
    # length h = sqrt(2)/2 and unit cells between: gt rows 4 + 2h long, pred rows 6 + 2h.
    h = math.sqrt(2) / 2
    total = 2 * (4 + 2 * h) + 2 * (6 + 2 * h)
    # gt row 3 lies on pred's row 3 (0), gt row 2 is 1 away. pred row 3: columns 2-7 at 0,
    # column 8 at 1, column 9 (an end, h) at 2; pred row 4: columns 2-7 at 1, column 8 (unit)
    # at sqrt(2), column 9 (h) at sqrt(5).
    assert nsd(pred, gt, tolerance_mm=0.5) == pytest.approx((4 + 2 * h + h + 5) / total)
    assert nsd(pred, gt, tolerance_mm=1.0) == pytest.approx((total - 1 - 2 * h) / total)
    assert nsd(pred, gt, tolerance_mm=1.5) == pytest.approx((total - 2 * h) / total)
    assert nsd(pred, gt, tolerance_mm=3.0) == 1.0
    assert hausdorff_distance(pred, gt) == pytest.approx(math.sqrt(5))
    # pooled distances: ten 1s, one sqrt(2), one sqrt(5)
    pooled = [1.0] * 10 + [math.sqrt(2), math.sqrt(5)]
    assert hd95(pred, gt) == pytest.approx(float(np.percentile(pooled, 95)))


def test_target_touching_the_border():
    # gt fills the whole 4x4 image: its surface is the outer ring of 12 pixels.
    gt = np.ones((4, 4), dtype=bool)
    assert nsd(gt, gt) == 1.0 and hd95(gt, gt) == 0.0
    # pred is the left three columns: surface of 10 pixels. By hand: pred->gt has eight 0s and
    # two 1s (rows 1-2 of column 2); gt->pred has eight 0s and four 1s (column 3).
    pred = gt.copy()
    pred[:, 3] = False
    d_pg, d_gp = surface_distances(pred, gt)
    assert sorted(d_pg.tolist()) == [0.0] * 8 + [1.0] * 2
    assert sorted(d_gp.tolist()) == [0.0] * 8 + [1.0] * 4
    # NSD elements: gt's ring of 5x5 cells, 12 unit sides and 4 corners of h = sqrt(2)/2;
    # pred's ring of 5x4 cells, 10 unit sides and 4 corners. Off by 1 (the rest are shared):
    # pred's right column of 3 units; gt's right column of 3 units and 2 corners.
    h = math.sqrt(2) / 2
    total = (12 + 4 * h) + (10 + 4 * h)
    assert nsd(pred, gt, tolerance_mm=0.5) == pytest.approx((total - 6 - 2 * h) / total)
    assert nsd(pred, gt, tolerance_mm=1.0) == 1.0
    assert hd95(pred, gt) == pytest.approx(1.0)
    assert hd95(pred, gt, spacing=(1.0, 3.0)) == pytest.approx(3.0)


def test_border_target_matches_reference():
    gt = np.zeros((20, 20), dtype=bool)
    gt[:8, :6] = True  # touches top and left borders
    pred = np.zeros((20, 20), dtype=bool)
    pred[2:10, :9] = True  # touches the left border
    for spacing in [(1.0, 1.0), (2.0, 0.5)]:
        assert hd95(pred, gt, spacing) == pytest.approx(ref_hd(pred, gt, spacing, 95))
        assert nsd(pred, gt, spacing, 1.0) == pytest.approx(ref_nsd(pred, gt, spacing, 1.0))
    # Treating the outside as foreground would move gt's surface off the border and change this.
    assert nsd(pred, gt, tolerance_mm=0.0) == pytest.approx(ref_nsd(pred, gt, (1.0, 1.0), 0.0))


def test_surface_empty_conventions():
    empty = np.zeros((5, 5), dtype=bool)
    some = np.zeros((5, 5), dtype=bool)
    some[2, 2] = True
    assert nsd(empty, empty) == 1.0
    assert hd95(empty, empty) == 0.0
    assert hausdorff_distance(empty, empty) == 0.0
    assert nsd(empty, some) == 0.0 and nsd(some, empty) == 0.0
    assert hd95(empty, some) == math.inf and hd95(some, empty) == math.inf
    with pytest.raises(ValueError):
        surface_distances(empty, some)


def test_bad_spacing_tolerance_percentile():
    a = np.eye(4, dtype=bool)
    for spacing in [(0.0, 1.0), (1.0, -1.0), (1.0,), (1.0, float("nan"))]:
        with pytest.raises(ValueError):
            hd95(a, a, spacing=spacing)
    with pytest.raises(ValueError):
        nsd(a, a, tolerance_mm=-1.0)
    with pytest.raises(ValueError):
        hausdorff_distance(a, a, percentile=101)


def test_hd95_and_nsd_match_bruteforce_reference():
    for i, (pred, gt) in enumerate(random_pairs(seed=3, count=20)):
        if not pred.any() or not gt.any():
            continue
        spacing = [(1.0, 1.0), (2.0, 0.5), (0.7, 1.3)][i % 3]
        assert hd95(pred, gt, spacing) == pytest.approx(ref_hd(pred, gt, spacing, 95), abs=1e-9)
        assert hausdorff_distance(pred, gt, spacing, 50) == pytest.approx(
            ref_hd(pred, gt, spacing, 50), abs=1e-9
        )
        for tol in (0.0, 1.0, 2.5):
            assert nsd(pred, gt, spacing, tol) == pytest.approx(
                ref_nsd(pred, gt, spacing, tol), abs=1e-12
            )
        d_pg, d_gp = surface_distances(pred, gt, spacing)
        r_pg, r_gp = ref_directed(pred, gt, spacing)  # both in row-major pixel order
        np.testing.assert_allclose(d_pg, r_pg, atol=1e-9)
        np.testing.assert_allclose(d_gp, r_gp, atol=1e-9)


def test_max_hausdorff_matches_skimage():
    for pred, gt in random_pairs(seed=4, count=20):
        if not pred.any() or not gt.any():
            continue
        expected = skimage_hausdorff(ref_boundary(pred), ref_boundary(gt))
        assert hausdorff_distance(pred, gt) == pytest.approx(expected, abs=1e-9)
        d_pg, d_gp = surface_distances(pred, gt)
        assert max(d_pg.max(), d_gp.max()) == pytest.approx(expected, abs=1e-9)


def test_surface_metric_properties_on_random_masks():
    for pred, gt in random_pairs(seed=5, count=20):
        n = nsd(pred, gt, tolerance_mm=1.5)
        assert 0.0 <= n <= 1.0
        assert n == nsd(gt, pred, tolerance_mm=1.5)
        h = hd95(pred, gt)
        assert h == hd95(gt, pred)
        assert h >= 0.0
        if pred.any() and gt.any():
            assert h <= hausdorff_distance(pred, gt) + 1e-12
    a = random_blobs(np.random.default_rng(6))
    assert nsd(a, a, tolerance_mm=0.0) == 1.0 and hd95(a, a) == 0.0


def test_nsd_monotone_in_tolerance():
    for pred, gt in random_pairs(seed=7, count=8):
        values = [nsd(pred, gt, tolerance_mm=t) for t in (0.0, 0.5, 1.0, 2.0, 4.0, 100.0)]
        assert values == sorted(values)
        if pred.any() and gt.any():
            assert values[-1] == 1.0


def test_nsd_default_tolerance():
    assert NSD_TOLERANCE_MM == 2.0
    pred, gt = _lines()
    assert nsd(pred, gt) == nsd(pred, gt, tolerance_mm=NSD_TOLERANCE_MM)
    assert nsd(pred, gt) != nsd(pred, gt, tolerance_mm=1.0)  # 1.0 vs 0.5: the default is used


def _boundary_noise(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip about a third of the pixels within one pixel of the boundary."""
    band = ndimage.binary_dilation(m ^ ndimage.binary_erosion(m))
    return m ^ (band & (rng.random(m.shape) < 0.3))


_PERTURBATIONS = (
    lambda m, rng: ndimage.binary_dilation(m, iterations=int(rng.integers(1, 4))),
    lambda m, rng: ndimage.binary_erosion(m, iterations=int(rng.integers(1, 3))),
    lambda m, rng: np.roll(m, tuple(int(v) for v in rng.integers(-4, 5, size=2)), axis=(0, 1)),
    lambda m, rng: m ^ (rng.random(m.shape) < 0.01),  # salt-and-pepper noise
    _boundary_noise,
)


def test_nsd_matches_deepmind_surface_distance_on_real_masks(demo):
    """``nsd`` equals DeepMind's ``surface-distance`` (the dev extra installs it) to 1e-6."""
    import surface_distance  # the reference: `pip install -e .[dev]`

    rng = np.random.default_rng(0)
    compared = 0
    for k, sample in enumerate(demo):
        gt = sample.mask
        for pert in (_PERTURBATIONS[k % 5], _PERTURBATIONS[(k + 2) % 5]):
            pred = pert(gt, rng)
            if not pred.any():
                continue
            for spacing in (tuple(sample.spacing), (0.5, 1.5), (1.2, 0.7)):
                with warnings.catch_warnings():  # its scipy.ndimage.filters/morphology imports
                    warnings.simplefilter("ignore", DeprecationWarning)
                    dists = surface_distance.compute_surface_distances(gt, pred, spacing)
                for tol in (1.0, 2.0):
                    expected = surface_distance.compute_surface_dice_at_tolerance(dists, tol)
                    assert nsd(pred, gt, spacing, tol) == pytest.approx(expected, abs=1e-6)
                    compared += 1
    assert compared >= 900


def test_bruteforce_nsd_reference_matches_deepmind():
    """The brute-force ``ref_nsd`` above is DeepMind's definition too (so the tests using it
    check the same thing), including on masks touching the image border."""
    import surface_distance

    for i, (pred, gt) in enumerate(random_pairs(seed=9, count=12, shape=(24, 20))):
        if not pred.any() or not gt.any():
            continue
        spacing = [(1.0, 1.0), (0.5, 1.5), (1.2, 0.7)][i % 3]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            dists = surface_distance.compute_surface_distances(gt, pred, spacing)
        for tol in (0.0, 1.0, 2.0):
            expected = surface_distance.compute_surface_dice_at_tolerance(dists, tol)
            assert ref_nsd(pred, gt, spacing, tol) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# NoC / NoF / AUC
# ---------------------------------------------------------------------------------------------


def test_noc_reached_at_first_turn():
    assert noc([0.95, 0.2], threshold=0.9, budget=20) == 1
    assert reached([0.95, 0.2], threshold=0.9, budget=20)


def test_noc_middle_turn_and_threshold_equality():
    ious = [0.5, 0.8, 0.85, 0.9, 0.95]
    assert noc(ious, threshold=0.85, budget=20) == 3  # exactly equal counts
    assert noc(ious, threshold=0.9, budget=20) == 4
    assert noc(ious, threshold=0.86, budget=20) == 4


def test_noc_never_reached_returns_budget():
    assert noc([0.1, 0.2, 0.3], threshold=0.9, budget=20) == 20
    assert noc([], threshold=0.9, budget=5) == 5
    assert not reached([0.1, 0.2, 0.3], threshold=0.9, budget=20)
    assert not reached([], threshold=0.9, budget=5)


def test_noc_ignores_turns_after_budget():
    ious = [0.1, 0.2, 0.3, 0.95]
    assert noc(ious, threshold=0.9, budget=3) == 3
    assert not reached(ious, threshold=0.9, budget=3)
    assert noc(ious, threshold=0.9, budget=4) == 4
    assert reached(ious, threshold=0.9, budget=4)


def test_noc_nan_and_numpy_input():
    assert noc([float("nan"), 0.9], threshold=0.85, budget=3) == 2
    assert noc(np.array([0.1, 0.86]), threshold=0.85, budget=3) == 2
    assert reached(np.array([0.1, 0.86]), threshold=0.85, budget=3)
    assert type(noc(np.array([0.9]), 0.85, 3)) is int


@pytest.mark.parametrize("budget", [0, -1, 2.5])
def test_noc_rejects_bad_budget(budget):
    with pytest.raises(ValueError):
        noc([0.9], 0.85, budget)
    with pytest.raises(ValueError):
        reached([0.9], 0.85, budget)


def test_area_under_curve():
    assert area_under_curve([0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert area_under_curve([1.0]) == 1.0
    assert area_under_curve([0.0, 0.0]) == 0.0
    assert type(area_under_curve(np.array([0.2, 0.4]))) is float
    rng = np.random.default_rng(8)
    for _ in range(20):
        v = rng.random(rng.integers(1, 30))
        assert 0.0 <= area_under_curve(v) <= 1.0
    with pytest.raises(ValueError):
        area_under_curve([])

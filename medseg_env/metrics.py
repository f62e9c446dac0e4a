"""Segmentation metrics: the one place every metric of the project lives.

All mask arguments are 2D arrays of shape ``(H, W)``, either ``bool`` or numeric with values in
``{0, 1}`` (anything else raises ``ValueError``, so a probability map passed by mistake is caught).
Both masks of a pair must have the same shape, otherwise ``ValueError`` names both shapes.
Every metric returns a plain Python ``float`` (or ``int`` / ``bool`` / ``tuple`` as stated).

Conventions for empty masks (checked before anything else):

=================  ==========  ==========  ==========  ==============
case               dice / iou  nsd         hd95        hausdorff
=================  ==========  ==========  ==========  ==============
both empty         1.0         1.0         0.0         0.0
exactly one empty  0.0         0.0         ``inf``     ``inf``
=================  ==========  ==========  ==========  ==============

Surfaces (for :func:`hd95`, :func:`hausdorff_distance`, :func:`surface_distances`) are the
boundary pixels of a mask: foreground pixels with at least one 4-neighbour (up, down, left,
right) that is background *or outside the image*. So a target touching the image border has its
border pixels on its surface, and a mask covering the whole image has a surface (its outer
ring). Distances are Euclidean between pixel centres, in millimetres, with
``spacing = (row_mm, col_mm)`` the pixel size along rows (y) and columns (x). This is medpy's
surface, and :func:`hd95` equals medpy's ``hd95``.

:func:`nsd` instead follows the field's reference, DeepMind's ``surface-distance``
(``compute_surface_distances`` + ``compute_surface_dice_at_tolerance``, as copied by MedSAM's
evaluation): its surface is made of contour elements weighted by their length in millimetres
(see :func:`nsd`), with the outside of the image again counted as background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "NSD_TOLERANCE_MM",
    "area_under_curve",
    "dice",
    "dice_iou",
    "hausdorff_distance",
    "hd95",
    "iou",
    "noc",
    "nsd",
    "reached",
    "surface_distances",
]

Spacing = tuple[float, float]

#: Default tolerance of :func:`nsd`, in millimetres (the one place it is set: the benchmark's
#: config and CLI default to it).
NSD_TOLERANCE_MM = 2.0


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _as_mask(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` (already an ndarray of ndim 2) as a ``bool`` array, checking values are 0/1."""
    if arr.dtype == np.bool_:
        return arr
    kind = arr.dtype.kind
    if kind not in "uif":
        raise ValueError(f"{name} must be a bool or 0/1 numeric mask; got dtype {arr.dtype}")
    if arr.size:
        if kind == "u":
            ok = arr.max() <= 1
        elif kind == "i":
            ok = arr.min() >= 0 and arr.max() <= 1
        else:  # float: every value exactly 0 or 1 (rejects NaN and fractional probabilities)
            ok = bool(np.all((arr == 0) | (arr == 1)))
        if not ok:
            raise ValueError(f"{name} must contain only 0 and 1 (or be bool)")
    return arr != 0


def _mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2D (H, W); got shape {arr.shape}")
    return _as_mask(arr, name)


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch: pred has shape {p.shape}, gt has shape {g.shape}")
    if p.ndim != 2:
        raise ValueError(f"masks must be 2D (H, W); got shape {p.shape}")
    return _as_mask(p, "pred"), _as_mask(g, "gt")


def _spacing(spacing: Sequence[float]) -> Spacing:
    try:
        sr, sc = (float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be (row_mm, col_mm); got {spacing!r}") from None
    if not (math.isfinite(sr) and math.isfinite(sc) and sr > 0 and sc > 0):
        raise ValueError(f"spacing must be two positive finite numbers; got {spacing!r}")
    return sr, sc


# ---------------------------------------------------------------------------------------------
# Overlap metrics
# ---------------------------------------------------------------------------------------------


def dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two ``(H, W)`` masks from one count of intersection and sizes.

    ``dice = 2|P∩G| / (|P| + |G|)``, ``iou = |P∩G| / |P∪G|``. Both empty -> ``(1.0, 1.0)``;
    exactly one empty -> ``(0.0, 0.0)``. Unitless, in ``[0, 1]``.
    """
    p, g = _pair(pred, gt)
    inter = int(np.count_nonzero(p & g))
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    if total == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / (total - inter)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient ``2|P∩G| / (|P| + |G|)`` of two ``(H, W)`` masks, in ``[0, 1]``.

    Both empty -> 1.0; exactly one empty -> 0.0.
    """
    return dice_iou(pred, gt)[0]


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union (Jaccard) ``|P∩G| / |P∪G|`` of two ``(H, W)`` masks, in ``[0, 1]``.

    Both empty -> 1.0; exactly one empty -> 0.0.
    """
    return dice_iou(pred, gt)[1]


# ---------------------------------------------------------------------------------------------
# Surface metrics
# ---------------------------------------------------------------------------------------------


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour that is background or outside the array."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(
    p: np.ndarray, g: np.ndarray, spacing: Spacing
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances of two non-empty bool masks (already validated)."""
    # Work on the bounding box of the union only (a speed-up, exact): every surface pixel lies
    # inside it, so the distance transforms see all of both surfaces; and everything outside it
    # is background, so the erosion's border_value=0 at a crop edge inside the image says the
    # same as the real neighbours, while at an image edge it is the documented convention.
    union = p | g
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    bp = _boundary(p[r0:r1, c0:c1])
    bg = _boundary(g[r0:r1, c0:c1])
    # distance_transform_edt gives, for each non-zero input pixel, the distance to the nearest
    # zero pixel: feed it "not on the other surface".
    to_g = ndimage.distance_transform_edt(~bg, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~bp, sampling=spacing)
    return np.asarray(to_g[bp], dtype=np.float64), np.asarray(to_p[bg], dtype=np.float64)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty ``(H, W)`` masks, in millimetres.

    Returns ``(pred_to_gt, gt_to_pred)``: 1D ``float64`` arrays holding, for each surface pixel
    of ``pred`` (resp. ``gt``), in row-major order, the distance to the nearest surface pixel of
    ``gt`` (resp. ``pred``). ``spacing = (row_mm, col_mm)``. See the module docstring for what
    the surface is. Raises ``ValueError`` if either mask is empty (no surface to measure from).
    """
    p, g = _pair(pred, gt)
    sp = _spacing(spacing)
    if not p.any() or not g.any():
        raise ValueError("surface_distances needs two non-empty masks")
    return _directed_distances(p, g, sp)


def _contour_length_table(spacing: Spacing) -> np.ndarray:
    """Length in mm of the contour crossing a 2x2 cell of pixel centres, for each cell code.

    A cell's code has bit 8 for its top-left pixel being foreground, 4 top-right, 2 bottom-left,
    1 bottom-right. Marching squares joins the midpoints of the cell sides whose two ends differ:
    one corner apart from the other three cuts that corner with a segment half the cell's
    diagonal long; two pixels side by side split the cell with a segment one pixel long, across
    (``col_mm`` for a top or bottom pair, ``row_mm`` for a left or right pair); two diagonal
    pixels (a saddle) give two half-diagonal segments. Codes 0 and 15 have no contour.
    """
    row_mm, col_mm = spacing
    half_diag = 0.5 * math.hypot(row_mm, col_mm)
    table = np.full(16, half_diag)
    table[0b0000] = table[0b1111] = 0.0
    table[0b1100] = table[0b0011] = col_mm
    table[0b1010] = table[0b0101] = row_mm
    table[0b1001] = table[0b0110] = 2.0 * half_diag
    return table


def _cell_codes(mask: np.ndarray) -> np.ndarray:
    """Codes of the ``(H + 1, W + 1)`` cells of a mask padded with one background pixel around.

    Cell ``(i, j)`` has the pixels ``(i - 1 .. i, j - 1 .. j)`` of ``mask`` as its corners.
    """
    q = np.pad(mask.astype(np.uint8), 1)
    return (q[:-1, :-1] << 3) | (q[:-1, 1:] << 2) | (q[1:, :-1] << 1) | q[1:, 1:]


def nsd(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0),
    tolerance_mm: float = NSD_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice (Nikolov et al., 2021) of two ``(H, W)`` masks, in ``[0, 1]``.

    As DeepMind's ``surface-distance`` computes it (``compute_surface_dice_at_tolerance`` of
    ``compute_surface_distances``; MedSAM's evaluation uses a copy), which this equals to
    floating-point rounding. The surface of a mask is the set of cells of the dual grid (2x2
    blocks of pixel centres, the mask padded with background) whose four pixels are not all
    equal; each such cell weighs the length in mm of the marching-squares contour through it
    (see ``_contour_length_table``) and sits at its centre for distances. Then
    ``(L_p(d(., S_g) <= tol) + L_g(d(., S_p) <= tol)) / (L_p + L_g)``: the contour length of each
    surface lying within ``tol = tolerance_mm`` (inclusive) of the other surface, over the total
    length of both. Distances are Euclidean in millimetres with ``spacing = (row_mm, col_mm)``.

    Both empty -> 1.0; exactly one empty -> 0.0. (The reference gives NaN (0/0) when both are
    empty. When exactly one is, its formula gives 0.0, every distance to the missing surface
    being infinite, though ``surface-distance`` 0.1 itself raises ``AttributeError`` there under
    NumPy 2: it uses the removed ``np.Inf``.) MONAI's ``compute_surface_dice(...,
    use_subvoxels=True)`` computes the same value in float32 (NaN / 0.0 for the empty cases).
    """
    p, g = _pair(pred, gt)
    sp = _spacing(spacing)
    tol = float(tolerance_mm)
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tolerance_mm must be a finite number >= 0; got {tolerance_mm!r}")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 1.0
    if not has_p or not has_g:
        return 0.0
    # Work on the bounding box of the union (exact: all cells with a contour lie in the padded
    # box, and the padding says what the rest of the image says, background).
    union = p | g
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    code_p = _cell_codes(p[r0:r1, c0:c1])
    code_g = _cell_codes(g[r0:r1, c0:c1])
    surf_p = (code_p != 0) & (code_p != 15)
    surf_g = (code_g != 0) & (code_g != 15)
    lengths = _contour_length_table(sp)
    len_p = lengths[code_p[surf_p]]
    len_g = lengths[code_g[surf_g]]
    # Distance from every cell to the nearest surface cell of the other mask.
    d_pg = ndimage.distance_transform_edt(~surf_g, sampling=sp)[surf_p]
    d_gp = ndimage.distance_transform_edt(~surf_p, sampling=sp)[surf_g]
    within = float(len_p[d_pg <= tol].sum()) + float(len_g[d_gp <= tol].sum())
    return within / (float(len_p.sum()) + float(len_g.sum()))


def hausdorff_distance(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0),
    percentile: float = 100.0,
) -> float:
    """Percentile Hausdorff distance of two ``(H, W)`` masks, in millimetres.

    The ``percentile``-th percentile (``numpy.percentile``, linear interpolation) of the
    *pooled* symmetric surface distances: the distances from every surface pixel of ``pred``
    to the surface of ``gt`` together with those from every surface pixel of ``gt`` to the
    surface of ``pred`` (the medpy ``hd95`` definition; MONAI instead takes the larger of the
    two directed percentiles, which is >= this value). ``percentile=100`` is the classic
    (maximum) Hausdorff distance, for which both definitions agree.
    Both empty -> 0.0; exactly one empty -> ``inf``.
    """
    p, g = _pair(pred, gt)
    sp = _spacing(spacing)
    q = float(percentile)
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100]; got {percentile!r}")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 0.0
    if not has_p or not has_g:
        return math.inf
    d_pg, d_gp = _directed_distances(p, g, sp)
    pooled = np.concatenate((d_pg, d_gp))
    if q == 100.0:
        return float(pooled.max())
    return float(np.percentile(pooled, q))


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """95th-percentile Hausdorff distance of two ``(H, W)`` masks, in millimetres.

    The 95th percentile (``numpy.percentile``, linear interpolation) of the pooled symmetric
    surface distances, ``spacing = (row_mm, col_mm)``; see :func:`hausdorff_distance`.
    Both empty -> 0.0; exactly one empty -> ``float('inf')`` (reporters should count such
    cases separately rather than average them).
    """
    return hausdorff_distance(pred, gt, spacing, percentile=95.0)


# ---------------------------------------------------------------------------------------------
# Interactive-segmentation curve metrics
# ---------------------------------------------------------------------------------------------


def _budget(budget: int) -> int:
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise ValueError(f"budget must be an integer >= 1; got {budget!r}")
    return int(budget)


def noc(ious: Sequence[float], threshold: float, budget: int) -> int:
    """Number of clicks (turns) to reach ``threshold`` (RITM's NoC@threshold).

    ``ious[k]`` is the IoU after turn ``k + 1``. Returns the 1-based index of the first turn
    with ``iou >= threshold`` (equality counts as reached), looking only at the first ``budget``
    turns; returns ``budget`` if no such turn (including a shorter-than-budget curve that never
    gets there). NaN never counts as reached. ``budget`` must be an integer >= 1.
    """
    b = _budget(budget)
    thr = float(threshold)
    for turn, value in enumerate(ious, start=1):
        if turn > b:
            break
        if value >= thr:
            return turn
    return b


def reached(ious: Sequence[float], threshold: float, budget: int) -> bool:
    """Whether some IoU among the first ``budget`` turns is ``>= threshold``.

    NoF@threshold (number of failures) is the number of samples for which this is ``False``.
    Same conventions as :func:`noc`.
    """
    b = _budget(budget)
    thr = float(threshold)
    return any(value >= thr for value in list(ious)[:b])


def area_under_curve(values: Sequence[float]) -> float:
    """Normalised area under a metric-vs-turn curve: the mean of ``values``.

    ``values[k]`` is the metric (e.g. Dice) after turn ``k + 1``, for turns ``1..T``; the area
    is the sum of unit-width bars (one per turn) divided by ``T``, i.e. the plain mean, which
    lies in ``[0, 1]`` when all values do. For curves to be comparable they must cover the same
    number of turns (e.g. pad an episode that stopped early with its last value up to the
    budget). Raises ``ValueError`` for an empty sequence.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("area_under_curve needs at least one value")
    return float(arr.mean())

"""Every frame conversion of the project, and the box of a mask: the one place they live.

Frames (all continuous coordinates are ``(x, y)``: x to the right, y down; pixel ``(row r,
col c)`` covers ``[c, c+1) × [r, r+1)``, so its centre is ``(c + 0.5, r + 0.5)``):

- **image**: a sample at its original ``(H, W)`` size;
- **canvas**: the ``S×S`` observation (``S = obs_size``), where the image is *letterboxed*: its
  longest side resized to ``S``, the rest zero-padded at the bottom and right;
- **model input**: a SAM-family backend's square input (256 for LiteMedSAM, 1024 for SAM),
  reached from the image it encodes by the same longest-side rule;
- **normalised**: ``[0, 1]`` coordinates of a square frame, as actions carry them.

``LongestSide`` is the one implementation of "resize the longest side and pad" (as
segment-anything's ``ResizeLongestSide``): the env's letterbox, the SAM-family preprocessing
and upscaling, and the click-model training all call it, so a change of rounding moves every
frame together. The MLLM text protocols add their integer grids (0–999, 0–1000) here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage
from skimage.transform import resize

if TYPE_CHECKING:
    from .data.sample import Sample

PixelBox = tuple[int, int, int, int]
"""``(r0, c0, r1, c1)``: inclusive row/column pixel indices."""


@dataclass(frozen=True)
class LongestSide:
    """An ``(height, width)`` frame resized so its longest side is ``side``, padded to square.

    Attributes:
        height, width: the source frame's size in pixels.
        side: the square target's side in pixels.
    """

    height: int
    width: int
    side: int

    def __post_init__(self) -> None:
        if min(self.height, self.width, self.side) < 1:
            raise ValueError(
                f"frame sizes must be positive; got {self.height}x{self.width} -> {self.side}"
            )

    @classmethod
    def of(cls, shape: tuple[int, ...], side: int) -> LongestSide:
        """The frame of an array whose first two axes are ``(H, W)``."""
        return cls(int(shape[0]), int(shape[1]), int(side))

    @property
    def scale(self) -> float:
        """Target pixels per source pixel."""
        return self.side / max(self.height, self.width)

    @property
    def resized_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the resized content inside the square (the rest is padding).

        Rounded to the nearest pixel (Python's ``round``), and never below 1.
        """
        scale = self.scale
        return max(1, round(self.height * scale)), max(1, round(self.width * scale))

    @property
    def is_identity(self) -> bool:
        """True when the content is not resized (only padded, or not at all)."""
        return self.resized_shape == (self.height, self.width)

    def resized_spacing(self, spacing: tuple[float, float]) -> tuple[float, float]:
        """The ``(row_mm, col_mm)`` pixel size of the resized content, from the source's.

        Uses the rounded shape, so physical lengths are kept exactly across the resize.
        """
        new_h, new_w = self.resized_shape
        return spacing[0] * self.height / new_h, spacing[1] * self.width / new_w

    def to_target(self, coords: np.ndarray) -> np.ndarray:
        """Source ``(x, y)`` coordinates (any shape ending in 2 or 4) to target coordinates."""
        return np.asarray(coords) * self.scale

    def to_source(self, coords: np.ndarray) -> np.ndarray:
        """Target ``(x, y)`` coordinates back to the source frame (inverse of ``to_target``)."""
        return np.asarray(coords) / self.scale


# ---------------------------------------------------------------------------------------------
# The env's letterbox: a sample into the S×S canvas, and a canvas mask back
# ---------------------------------------------------------------------------------------------


def letterbox(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Resize the longest side of a sample to ``size`` and zero-pad to ``size×size``.

    Returns ``(image (S,S,3) uint8, target (S,S) bool, spacing (row_mm, col_mm))``. The target
    is resized by area coverage, and never vanishes: a target smaller than a canvas pixel keeps
    the pixel it covers most.
    """
    height, width = sample.mask.shape
    frame = LongestSide(height, width, size)
    new_h, new_w = frame.resized_shape
    scale = frame.scale
    image = np.zeros((size, size, 3), np.uint8)
    target = np.zeros((size, size), bool)
    if (new_h, new_w) == (height, width):
        image[:height, :width] = sample.image
        target[:height, :width] = sample.mask
    else:
        resized = resize(
            sample.image, (new_h, new_w), order=1, preserve_range=True, anti_aliasing=scale < 1
        )
        image[:new_h, :new_w] = np.clip(resized.round(), 0, 255).astype(np.uint8)
        coverage = resize(
            sample.mask.astype(np.float32), (new_h, new_w), order=1, anti_aliasing=scale < 1
        )
        target[:new_h, :new_w] = coverage >= 0.5
        if not target.any():
            r, c = np.unravel_index(np.argmax(coverage), coverage.shape)
            target[r, c] = True
    return image, target, frame.resized_spacing(sample.spacing)


def unletterbox_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A canvas mask back at the sample's ``(H, W)`` resolution (the inverse of ``letterbox``).

    Crops the content out of the ``S×S`` canvas and resizes it by nearest neighbour, so every
    sample pixel takes the value of the canvas pixel it falls in.
    """
    height, width = shape
    new_h, new_w = LongestSide(height, width, mask.shape[0]).resized_shape
    content = np.asarray(mask, bool)[:new_h, :new_w]
    if (new_h, new_w) == (height, width):
        return content.copy()
    rows = np.minimum((np.arange(height) + 0.5) * new_h / height, new_h - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * new_w / width, new_w - 1).astype(int)
    return content[np.ix_(rows, cols)]


def pad_square(mask: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` mask at its own resolution in an ``L×L`` square, ``L = max(H, W)``.

    The native frame of ``MedSegEnv(native_resolution=True)``: the mask unscaled at the
    top-left, zero-padded at the bottom/right, so normalised coordinates times ``L`` are the
    sample's own pixels (the letterbox geometry at scale 1). A fresh bool array.
    """
    height, width = mask.shape
    side = max(height, width)
    out = np.zeros((side, side), bool)
    out[:height, :width] = np.asarray(mask, bool)
    return out


def resample_square_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A square mask resampled to ``size×size`` by nearest neighbour (pixel centres).

    Each output pixel takes the value of the input pixel its centre falls in; both squares
    cover the same normalised extent (the native frame onto the canvas, and back).
    """
    side = mask.shape[0]
    if mask.shape != (side, side):
        raise ValueError(f"resample_square_mask needs a square mask; got shape {mask.shape}")
    index = np.minimum(((np.arange(size) + 0.5) * side / size).astype(int), side - 1)
    return np.asarray(mask, bool)[np.ix_(index, index)]


# ---------------------------------------------------------------------------------------------
# Normalised square coordinates ↔ pixels
# ---------------------------------------------------------------------------------------------


def to_pixels(normalized: np.ndarray, size: int) -> np.ndarray:
    """Normalised ``[0, 1]`` coordinates of a ``size``-pixel square to continuous pixels."""
    return np.asarray(normalized) * size


def to_normalized(pixels: np.ndarray, size: int) -> np.ndarray:
    """Continuous pixel coordinates of a ``size``-pixel square to normalised ``[0, 1]``."""
    return np.asarray(pixels, dtype=np.float64) / size


def pixel_center(row: int, col: int, size: int) -> tuple[float, float]:
    """Normalised ``(x, y)`` of the centre of pixel ``(row, col)`` of a ``size`` square."""
    return (col + 0.5) / size, (row + 0.5) / size


def pixel_box_edges(box: PixelBox) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` pixel edges of an inclusive ``(r0, c0, r1, c1)`` box.

    The edges enclose exactly the box's pixels: ``x1 = c1 + 1``, ``y1 = r1 + 1``.
    """
    r0, c0, r1, c1 = box
    return c0, r0, c1 + 1, r1 + 1


def pixel_box_normalized(box: PixelBox, size: int) -> tuple[float, float, float, float]:
    """Normalised ``(x0, y0, x1, y1)`` covering exactly an inclusive box of a ``size`` square."""
    x0, y0, x1, y1 = pixel_box_edges(box)
    return x0 / size, y0 / size, x1 / size, y1 / size


def pixel_of(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the pixels holding continuous ``(x, y)`` points (``(N, 2)``).

    A point on a pixel's left/top edge belongs to that pixel; points are clipped into the
    image, so ``x = W`` lands in column ``W - 1``.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    rows = np.clip(np.floor(pts[:, 1]).astype(np.int64), 0, shape[0] - 1)
    cols = np.clip(np.floor(pts[:, 0]).astype(np.int64), 0, shape[1] - 1)
    return rows, cols


# ---------------------------------------------------------------------------------------------
# Boxes of masks
# ---------------------------------------------------------------------------------------------


def box_from_mask(mask: np.ndarray) -> PixelBox | None:
    """Tight box ``(r0, c0, r1, c1)`` of the non-zero pixels of an ``(H, W)`` mask.

    Row/column pixel indices, both ends inclusive (so a single pixel at ``(r, c)`` gives
    ``(r, c, r, c)``). ``None`` if the mask is empty.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W); got shape {m.shape}")
    m = m != 0
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def box_edges_from_mask(mask: np.ndarray) -> np.ndarray:
    """The tight box of a non-empty mask as ``(x0, y0, x1, y1)`` float32 pixel edges.

    This is the box prompt a segmenter takes (``Prompts.box``) for the exact target box.
    """
    box = box_from_mask(mask)
    if box is None:
        raise ValueError("box_edges_from_mask needs a non-empty mask")
    return np.array(pixel_box_edges(box), np.float32)


def jittered_box(
    mask: np.ndarray,
    rng: np.random.Generator | None = None,
    jitter_px: float = 0,
    jitter_frac: float = 0.0,
    min_side: float = 1,
    *,
    outward: bool = False,
) -> PixelBox:
    """The tight box of a non-empty mask with each side shifted at random: a simulated user's
    box, the one implementation the oracle policies, the benchmarks and training draw from.

    Args:
        mask: ``(H, W)`` non-empty mask.
        rng: random generator; may be None only when there is no jitter. Always 4 draws (one
            per side) when given, so the stream does not depend on the mask.
        jitter_px: maximum shift of each side, in pixels.
        jitter_frac: maximum shift of each side, as a fraction of the box height (top and
            bottom sides) or width (left and right). Combined with ``jitter_px`` by addition.
        min_side: the box is widened (centred, inside the image) to at least this many pixels
            per side, e.g. the env's ``min_box_size`` so that a tiny target still gets a valid
            box.
        outward: shift each side only outwards (the box always holds the whole mask).

    Returns:
        ``(r0, c0, r1, c1)`` inclusive pixel indices: the tight box (``box_from_mask``) when
        there is no jitter; otherwise each side moves by an integer drawn uniformly from
        ``[-m, m]`` (``[0, m]`` outwards with ``outward``), ``m = floor(jitter_px + jitter_frac
        * side length)``, then the box is clipped to the image and its corners sorted (a large
        jitter can cross them).
    """
    mask = np.asarray(mask, dtype=bool)
    bbox = box_from_mask(mask)
    if bbox is None:
        raise ValueError("jittered_box needs a non-empty mask")
    if jitter_px < 0 or jitter_frac < 0:
        raise ValueError(f"jitter must be >= 0; got jitter_px={jitter_px}, frac={jitter_frac}")
    r0, c0, r1, c1 = bbox
    height, width = mask.shape
    if rng is not None:
        m_r = int(np.floor(jitter_px + jitter_frac * (r1 - r0 + 1)))
        m_c = int(np.floor(jitter_px + jitter_frac * (c1 - c0 + 1)))
        m = np.array([m_r, m_c, m_r, m_c])
        if outward:
            shift = rng.integers(0, m, endpoint=True) * np.array([-1, -1, 1, 1])
        else:
            shift = rng.integers(-m, m, endpoint=True)
        r0, c0, r1, c1 = (int(v) for v in np.array([r0, c0, r1, c1]) + shift)
        r0, r1 = sorted((min(max(r0, 0), height - 1), min(max(r1, 0), height - 1)))
        c0, c1 = sorted((min(max(c0, 0), width - 1), min(max(c1, 0), width - 1)))
    elif jitter_px or jitter_frac:
        raise ValueError("jittered_box needs an rng to jitter")
    need = int(np.ceil(min_side))
    r0, r1 = _grow_span(r0, r1, need, height)
    c0, c1 = _grow_span(c0, c1, need, width)
    return r0, c0, r1, c1


def _grow_span(lo: int, hi: int, need: int, limit: int) -> tuple[int, int]:
    """Widen the inclusive span ``lo..hi`` to ``need`` pixels, centred, kept in ``0..limit-1``."""
    deficit = need - (hi - lo + 1)
    if deficit <= 0:
        return lo, hi
    lo, hi = lo - deficit // 2, hi + deficit - deficit // 2
    shift = max(0, -lo) - max(0, hi - (limit - 1))  # slide back inside the image
    return max(0, lo + shift), min(limit - 1, hi + shift)


def padded_distance(region: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels) of each pixel of ``region`` to the nearest pixel outside it.

    ``region`` is an ``(H, W)`` bool mask; returns ``(H, W)`` float64, 0 outside the region.
    The region is padded with one pixel of background first, so the image border counts as
    boundary: a region touching the border is deepest away from it (RITM's ``padding=True``).
    """
    padded = np.pad(np.asarray(region, dtype=bool), 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def innermost_pixel(mask: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the pixel of a non-empty mask farthest from its boundary.

    Where a user clicks to say "this one" (and RITM's first simulated click); ties go to the
    first pixel in row-major order, so the point is a pure function of the mask.
    """
    depth = padded_distance(mask)
    if not depth.any():
        raise ValueError("innermost_pixel needs a non-empty mask")
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(row), int(col)


USER_POINT_TRIES = 32
"""Draws of :func:`user_point` before it falls back to the innermost pixel."""


def user_point(mask: np.ndarray, noise: float, rng: np.random.Generator) -> tuple[int, int]:
    """``(row, col)`` of a simulated user's "this one" point on a non-empty mask.

    Real users do not click the innermost pixel: the RClicks study (Antonov et al., NeurIPS
    2024 Datasets and Benchmarks) recorded thousands of real clicks and found them spread
    around the object's centre, off the distance-transform maximum that click simulators use.
    This is a simple, documented model of that spread, not a fit to their data:

    - the point is the innermost pixel (:func:`innermost_pixel`) plus an isotropic Gaussian
      offset with standard deviation ``noise * r`` pixels per axis, where
      ``r = sqrt(area / pi)`` is the radius of a disk of the mask's area, rounded to a pixel;
    - a draw outside the mask (or the image) is redrawn, up to ``USER_POINT_TRIES`` times; a
      user never points outside the object. If every draw misses (a thin object), the
      innermost pixel is used.

    ``noise = 0`` is the innermost pixel and draws nothing from ``rng``. Otherwise exactly two
    normal deviates are drawn per try, so the result is a pure function of the mask, ``noise``
    and the generator's state.
    """
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"user_point needs noise >= 0 (a finite number); got {noise!r}")
    row, col = innermost_pixel(mask)
    if noise == 0:
        return row, col
    mask = np.asarray(mask, dtype=bool)
    sigma = noise * math.sqrt(float(mask.sum()) / math.pi)
    height, width = mask.shape
    for _ in range(USER_POINT_TRIES):
        dr, dc = rng.normal(0.0, sigma, size=2)
        r, c = int(round(row + dr)), int(round(col + dc))
        if 0 <= r < height and 0 <= c < width and mask[r, c]:
            return r, c
    return row, col


# ---------------------------------------------------------------------------------------------
# MLLM integer grids
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridFrame:
    """The integer grid an MLLM writes coordinates in, with its released rounding to pixels.

    A grid value ``v`` (``0 <= v <= max_value``) becomes a pixel coordinate of an image side of
    ``size`` pixels exactly as the released code computes it, in float64:

    - ``rounding="round"``: Python's ``round`` (half to even) of the scaled value;
    - ``rounding="floor"``: Python's ``int`` of it (truncation, the floor for ``v >= 0``);
    - ``multiply_first``: ``v * size / divisor`` when True, ``v / divisor * size`` when False
      (the two differ in the last bit of some products, which can move a pixel).

    Because ``max_value <= divisor``, every grid value lands in ``[0, size]``.

    Attributes:
        name: what the grid is, for messages.
        max_value: the largest grid value (the smallest is 0).
        divisor: grid units per image side.
        rounding: ``"round"`` or ``"floor"``, as above.
        multiply_first: the order of the scaling, as above.
    """

    name: str
    max_value: int
    divisor: int
    rounding: Literal["round", "floor"] = "round"
    multiply_first: bool = False

    def __post_init__(self) -> None:
        if self.rounding not in ("round", "floor"):
            raise ValueError(f"rounding must be 'round' or 'floor'; got {self.rounding!r}")
        if not 1 <= self.max_value <= self.divisor:
            raise ValueError(
                f"a grid needs 1 <= max_value <= divisor; got {self.max_value}, {self.divisor}"
            )

    def to_pixels(self, values: np.ndarray, size: int) -> np.ndarray:
        """Grid values (any shape) to integer pixel coordinates of a ``size``-pixel side."""
        _check_side(size)
        v = _finite(values, "grid values")
        scaled = (v * size) / self.divisor if self.multiply_first else (v / self.divisor) * size
        pixels = np.rint(scaled) if self.rounding == "round" else np.trunc(scaled)
        return pixels.astype(np.int64)

    def from_pixels(self, pixels: np.ndarray, size: int) -> np.ndarray:
        """The grid values (int64, same shape) that ``to_pixels`` maps back to ``pixels``.

        Of the grid values that give back the pixel, the one nearest the centre of their range
        (``p * divisor / size`` for ``"round"``, ``(p + 0.5) * divisor / size`` for
        ``"floor"``); where none does (a grid coarser than the image, or a pixel outside the
        image), the value whose pixel is nearest. Always inside ``[0, max_value]``.
        """
        _check_side(size)
        p = _finite(pixels, "pixels")
        centre = (p + (0.5 if self.rounding == "floor" else 0.0)) * self.divisor / size
        base = np.floor(centre)
        best = best_err = best_dist = None
        for offset in (-1, 0, 1, 2):
            cand = np.clip(base + offset, 0, self.max_value)
            err = np.abs(self.to_pixels(cand, size) - p)
            dist = np.abs(cand - centre)
            if best is None:
                best, best_err, best_dist = cand, err, dist
                continue
            better = (err < best_err) | ((err == best_err) & (dist < best_dist))
            best = np.where(better, cand, best)
            best_err = np.where(better, err, best_err)
            best_dist = np.where(better, dist, best_dist)
        return np.asarray(best).astype(np.int64)


def _check_side(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"an image side must be a positive integer; got {size!r}")


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be finite; got {values!r}")
    return arr


GRID_999_ROUND = GridFrame("0..999, round(v / 999 * size)", 999, 999, "round")
"""MedSAM-Agent's EVAL path: ``round(v / 999.0 * size)`` (``infer/``), values 0..999."""

GRID_1000_FLOOR = GridFrame("0..999, int(v * size / 1000)", 999, 1000, "floor", True)
"""MedSAM-Agent's RL path: ``int(v * size / 1000)`` (its verl tools), values 0..999."""

GRID_1000_ROUND = GridFrame("0..1000, round(v / 1000 * size)", 1000, 1000, "round")
"""SegAgent's points: ``round(v / 1000 * size)`` (``evaltools/``), values 0..1000."""

GRID_999_FLOOR = GridFrame("0..999, int(v / 999 * size)", 999, 999, "floor")
"""SegAgent's boxes: ``int(v / 999 * size)`` (its box-predicting variant), values 0..999."""

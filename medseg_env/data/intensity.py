"""Intensity handling: turn raw scanner / microscope values into display-ready ``uint8``.

* CT: a window (level, width) in Hounsfield units, by preset name or as numbers.
* MR and everything else: percentile normalisation, by default 0.5-99.5 %, computed once on the
  whole volume so that every slice of a case shares the same mapping.
* :func:`to_rgb_uint8` turns any 2D grey or RGB array into the ``(H, W, 3) uint8`` that
  :class:`~medseg_env.data.sample.Sample` stores.

NaN and infinite values cannot be shown: NaN and ``-inf`` become black (0), ``+inf`` white (255).
The loaders pass ``where=`` (the file) to :func:`intensity_to_uint8` / :func:`to_rgb_uint8`, which
then warn (``RuntimeWarning``) with the file and the count of such pixels.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np

#: CT window presets as ``(level, width)`` in Hounsfield units (common radiology values).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "stroke": (40.0, 40.0),
}

#: A window is a preset name or an explicit ``(level, width)`` pair.
Window = str | tuple[float, float]
#: What the loaders accept: a window, ``None`` (percentile normalisation) or ``"auto"``
#: (a ``soft_tissue`` window for CT, percentile normalisation otherwise).
WindowSpec = Window | None | Literal["auto"]

DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def resolve_window(window: Window) -> tuple[float, float]:
    """Return ``(level, width)`` for a preset name or a ``(level, width)`` pair.

    Raises:
        ValueError: unknown preset (the message lists the presets) or a non-positive width.
    """
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key not in WINDOW_PRESETS:
            raise ValueError(
                f"unknown CT window preset {window!r}; known presets: "
                f"{', '.join(sorted(WINDOW_PRESETS))} (or pass (level, width))"
            )
        return WINDOW_PRESETS[key]
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(
            f"window must be a preset name or a (level, width) pair; got {window!r}"
        ) from None
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ValueError(f"window (level, width) needs a finite level and width > 0; got {window}")
    return level, width


def resolve_window_spec(window: WindowSpec, modality: str) -> tuple[float, float] | None:
    """Resolve a loader's ``window`` argument: ``(level, width)``, or ``None`` for percentiles.

    ``"auto"`` picks the ``soft_tissue`` window for CT and percentile normalisation otherwise.
    Validates eagerly so that a bad preset fails before any file is read.
    """
    if isinstance(window, str) and window == "auto":
        return WINDOW_PRESETS["soft_tissue"] if modality.upper() == "CT" else None
    if window is None:
        return None
    return resolve_window(window)


def rescale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map ``[low, high]`` to ``[0, 255]`` (clipping outside); same shape, ``uint8``.

    A degenerate range (``high <= low``, e.g. a constant image) maps everything to 0 rather than
    dividing by zero; NaNs also map to 0.
    """
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float32) - np.float32(low)) * np.float32(
        255.0 / (high - low)
    )
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    # +0.5 then floor = round half up, cheaper than np.rint on big volumes.
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """CT windowing: values in HU (any shape, any numeric dtype) -> ``uint8`` of the same shape.

    ``level - width / 2`` maps to 0 and ``level + width / 2`` to 255.
    """
    level, width = resolve_window(window)
    return rescale_to_uint8(values, level - width / 2.0, level + width / 2.0)


def percentile_range(
    values: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """The ``(low, high)`` intensity percentiles of all finite values (``(0, 0)`` if none)."""
    lower, upper = percentiles
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100; got {percentiles}")
    flat = np.asarray(values).ravel()
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(flat, [lower, upper])
    return float(low), float(high)


def normalize_percentile(
    values: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> np.ndarray:
    """Percentile normalisation (MR, microscopy, ...): any shape -> ``uint8`` of the same shape.

    The percentiles are taken over the whole array, so pass the whole volume, not a slice, to
    keep slices of one case comparable. A constant array maps to all zeros.
    """
    low, high = percentile_range(values, percentiles)
    if not high > low:
        # Heavy-tailed data can have equal percentiles while not being constant: fall back to
        # min-max so that such an image does not come out all black.
        finite = np.asarray(values)
        if finite.dtype.kind == "f":
            finite = finite[np.isfinite(finite)]
        if finite.size:
            low, high = float(finite.min()), float(finite.max())
    return rescale_to_uint8(values, low, high)


def warn_non_finite(values: np.ndarray, where: str, stacklevel: int = 2) -> int:
    """Warn (``RuntimeWarning``) if ``values`` holds NaN or infinite numbers; return their count.

    ``where`` names the source (a file) in the message. Integer arrays are skipped at no cost.
    """
    arr = np.asarray(values)
    if arr.dtype.kind not in "fc":
        return 0
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        nan = int(np.count_nonzero(np.isnan(arr)))
        warnings.warn(
            f"{where}: {bad} of {arr.size} pixel values are not finite ({nan} NaN, "
            f"{bad - nan} infinite); NaN and -inf are shown as black, +inf as white",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )
    return bad


def intensity_to_uint8(
    values: np.ndarray,
    window: tuple[float, float] | str | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    *,
    where: str | None = None,
) -> np.ndarray:
    """Window (if ``window`` is given) or percentile-normalise ``values`` to ``uint8``.

    With ``where`` (the source file), NaN or infinite values are reported by
    :func:`warn_non_finite`.
    """
    if where is not None:
        warn_non_finite(values, where)
    if window is None:
        return normalize_percentile(values, percentiles)
    return apply_window(values, window)


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """``(H, W)`` ``uint8`` -> ``(H, W, 3)`` ``uint8`` by replicating the channel."""
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise ValueError(f"expected (H, W) uint8; got shape {grey.shape} dtype {grey.dtype}")
    return np.repeat(grey[:, :, None], 3, axis=2)


def to_rgb_uint8(
    image: np.ndarray,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    *,
    where: str | None = None,
) -> np.ndarray:
    """Any 2D grey or colour image of any dtype -> ``(H, W, 3)`` ``uint8`` RGB.

    Accepts ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` and ``(H, W, 4)`` (alpha dropped).
    ``uint8`` passes through unchanged; ``bool`` becomes 0 / 255; any other dtype (16-bit,
    float, ...) is percentile-normalised over all channels together, which keeps colour balance.
    With ``where`` (the source file), NaN or infinite values are reported by
    :func:`warn_non_finite`.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[:, :, :3] if arr.shape[2] != 1 else arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) or min(arr.shape[:2]) == 0:
        raise ValueError(
            f"expected a 2D grey (H, W) or colour (H, W, 3|4) image; got shape {image.shape}"
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * np.uint8(255)
    elif arr.dtype != np.uint8:
        if arr.dtype.kind not in "uif":
            raise ValueError(f"cannot convert an image of dtype {arr.dtype} to uint8")
        if where is not None:
            warn_non_finite(arr, where)
        arr = normalize_percentile(arr, percentiles)
    return grey_to_rgb(arr) if arr.ndim == 2 else np.ascontiguousarray(arr)

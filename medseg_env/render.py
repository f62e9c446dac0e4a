"""Drawing masks and prompts: the ``rgb_array`` render, the MLLM view and the prompt map.

Coordinates are continuous pixel coordinates ``(x, y)`` as in ``medseg_env.segmenters``.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import disk, rectangle, rectangle_perimeter

MASK_COLOR = (0, 255, 0)  # green, as MedSAM-Agent shows the mask to its MLLM
POSITIVE_COLOR = (0, 140, 255)
NEGATIVE_COLOR = (255, 40, 40)
BOX_COLOR = (255, 220, 0)


def _pixel(x: float, y: float, shape: tuple[int, int]) -> tuple[int, int]:
    row = min(max(int(np.floor(y)), 0), shape[0] - 1)
    col = min(max(int(np.floor(x)), 0), shape[1] - 1)
    return row, col


def _box_pixels(box: np.ndarray, shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    r0, c0 = _pixel(box[0], box[1], shape)
    # the far edges are exclusive: the last covered pixel is ceil(x1) - 1
    r1 = min(max(int(np.ceil(box[3])) - 1, r0), shape[0] - 1)
    c1 = min(max(int(np.ceil(box[2])) - 1, c0), shape[1] - 1)
    return (r0, c0), (r1, c1)


def tint(
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = MASK_COLOR,
    alpha: float = 0.5,
) -> np.ndarray:
    """The image with ``mask`` blended in ``color``: the MLLM view, no prompts drawn.

    ``out = image·(1−α) + color·α`` inside the mask, truncated to uint8 as MedSAM-Agent's
    ``overlay_mask`` does (so a model fine-tuned on its overlays sees the same pixels).
    """
    out = image.astype(np.float32)
    out[mask] = out[mask] * (1 - alpha) + np.asarray(color, np.float32) * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    alpha: float = 0.45,
    radius: int | None = None,
) -> np.ndarray:
    """The image with the mask blended in green and the prompts drawn on top.

    Args:
        image: ``(H, W, 3)`` uint8.
        mask: ``(H, W)`` bool.
        points, labels: ``(N, 2)`` click coordinates and ``(N,)`` labels (1 positive, 0 negative).
        box: ``(4,)`` ``(x0, y0, x1, y1)`` or None.
        alpha: mask opacity.
        radius: click radius in pixels (default: 1.5 % of the longest side, at least 2).

    Returns:
        ``(H, W, 3)`` uint8, a new array.
    """
    shape = image.shape[:2]
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(MASK_COLOR, np.float32)
    out = out.round().astype(np.uint8)
    if box is not None:
        start, end = _box_pixels(box, shape)
        rr, cc = rectangle_perimeter(start, end=end, shape=shape, clip=True)
        out[rr, cc] = BOX_COLOR
    if points is not None and len(points):
        if labels is None:  # the TypeError zip(points, None) raised, with a message
            raise TypeError("overlay: points need labels")
        radius = radius or max(2, round(0.015 * max(shape)))
        for (x, y), label in zip(points, labels, strict=True):
            center = _pixel(x, y, shape)
            rr, cc = disk(center, radius + 1, shape=shape)
            out[rr, cc] = (255, 255, 255)  # a white rim keeps clicks visible on any background
            rr, cc = disk(center, radius, shape=shape)
            out[rr, cc] = POSITIVE_COLOR if label == 1 else NEGATIVE_COLOR
    return out


def prompt_map(
    shape: tuple[int, int],
    points: np.ndarray,
    labels: np.ndarray,
    box: np.ndarray | None,
    radius: int = 2,
) -> np.ndarray:
    """The prompts so far as a 3-channel uint8 image, for CNN policies.

    Channel 0 holds positive clicks and channel 1 negative clicks, as disks of ``radius``
    pixels (RITM's click encoding); channel 2 holds the current box, filled. Values are 0/255.
    """
    out = np.zeros((*shape, 3), np.uint8)
    for (x, y), label in zip(points, labels, strict=True):
        rr, cc = disk(_pixel(x, y, shape), radius, shape=shape)
        out[rr, cc, 0 if label == 1 else 1] = 255
    if box is not None:
        start, end = _box_pixels(box, shape)
        rr, cc = rectangle(start, end=end, shape=shape)
        out[rr, cc, 2] = 255
    return out


def hint_map(shape: tuple[int, int], row: int, col: int, radius: int = 2) -> np.ndarray:
    """The target hint as a 1-channel uint8 image: a disk of ``radius`` pixels, 255 on 0.

    Drawn like a click of ``prompt_map``, so a CNN sees "the user pointed here" the way it
    sees its own clicks.
    """
    out = np.zeros((*shape, 1), np.uint8)
    rr, cc = disk((row, col), radius, shape=shape)
    out[rr, cc, 0] = 255
    return out

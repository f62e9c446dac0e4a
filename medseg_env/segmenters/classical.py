"""``classical``: a weight-free interactive segmenter (watershed, GrabCut or random walker).

No weights and no training: the prompts become markers for a classical algorithm from a
well-kept library (scikit-image's watershed and random walker, OpenCV's GrabCut), run on a
small window around the prompts. It is meant for quick tests and RL prototyping, where the
SAM-family decoders (50–110 ms a step on a CPU) are the bottleneck. Deterministic: the same
image, prompts and previous logits give bit-identical outputs, from a fresh or a cached
embedding.

How a call works:

1. ``encode`` resizes the image to a ``base_size``² square (256² by default: the env's canvas,
   so usually a copy) and stores its colours and gradient magnitude, ``(1, 4, 256, 256)``
   float32 (1 MiB; the disk cache stores it like any embedding). ``predict`` never touches the
   original image again.
2. ``predict`` picks a window: the box widened by ``box_margin`` of its side, or, with clicks
   only, the positive clicks and the previous mask widened by at least ``click_window``; clicks
   outside it widen it. The window is resampled so that its longest side is at most
   ``work_size`` (never enlarged), which bounds the cost of a step whatever the object's size,
   and keeps small objects at full resolution.
3. Markers from the prompts and the previous mask (see ``Classical``) go to the algorithm, and
   its mask is pasted back into the base square.
4. ``Prediction.logits`` is the signed distance to that mask's boundary in base pixels,
   ``(1, 1, base_size, base_size)`` float32, > 0 inside, clipped to ``±logit_clip``. Fed back as
   ``previous_logits`` its sign is the previous mask (logits of another size, a SAM-style
   backend's say, are resized first). ``Prediction.mask`` is the logits resized bilinearly to
   the image's size, > 0. ``Prediction.score`` is how well the mask's boundary follows image
   edges (the mean gradient on the boundary over the 90th percentile near the mask, in
   [0, 1]; 0 for an empty mask): a heuristic confidence, not a calibrated IoU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

try:
    import cv2
except ImportError:  # the package imports without it; building this backend then says why
    cv2 = None  # type: ignore[assignment]

from .base import Segmenter
from .cache import EmbeddingCache
from .types import Embedding, Prediction, Prompts

Algorithm = Literal["grabcut", "watershed", "random_walker"]
ALGORITHMS: tuple[str, ...] = ("grabcut", "watershed", "random_walker")
VERSION = 1

# Working labels: a seed is certain, a prior is the initial state the algorithm may change.
_BG, _FG, _PR_BG, _PR_FG = 0, 1, 2, 3  # the values of OpenCV's GC_BGD, GC_FGD, ...
_UNKNOWN = 4  # watershed / random walker: no marker


@dataclass(frozen=True)
class _Window:
    """The region of interest: base rows ``r0:r1``, columns ``c0:c1``, at ``(h, w)`` work px."""

    r0: int
    r1: int
    c0: int
    c1: int
    h: int
    w: int

    @property
    def scale(self) -> tuple[float, float]:
        """Work pixels per base pixel (rows, columns)."""
        return self.h / (self.r1 - self.r0), self.w / (self.c1 - self.c0)


class Classical(Segmenter):
    """A weight-free interactive segmenter: prompts as markers for a classical algorithm.

    Markers, in order (later rules win):

    1. certain background: outside the box; with no box, the window's edges that lie inside
       the image (an object may touch the image's own border).
    2. the prior, i.e. the initial state: the previous mask (``previous_logits`` > 0) where
       given; else a guess: inside a box, the box's pixels on the object's side of an Otsu
       threshold (the side the box's centre holds more of than the ring around the box);
       with clicks only, the Otsu-class components holding the positive clicks. A guess that
       is unclear (little contrast, a component spilling over the window) is not used.
    3. around each click, the error region it corrects: a disc whose radius is the click's
       distance to the previous mask's boundary (capped at ``correction_cap`` of the
       window), where the prior is set aside (GrabCut: it takes the click's label).
    4. the watershed and random walker then keep as certain only the prior's cores: its
       inside deeper than ``band`` and its outside farther than ``bg_band`` (fractions of
       the box's or window's side); the band between is left to the algorithm. A box with no
       foreground marker gets the box's central ``core`` fraction.
    5. each click is a hard seed: a disc of ``click_radius`` base pixels, never wider than
       the error region it corrects (a click on a thin sliver removes only the sliver).

    So a click changes the mask only around itself: a careless one far from the object adds
    or removes its own neighbourhood, never the object (inside a box; with clicks only, a
    positive click in a flat background may add a large part of it).

    Args:
        algorithm: ``"watershed"`` (default; scikit-image's, on the gradient magnitude: the
            best Dice per click and the fastest on the demo data), ``"random_walker"``
            (scikit-image; close with a box, collapses with clicks only, slower) or
            ``"grabcut"`` (OpenCV; its colour models separate grey images poorly).
        work_size: the longest side, in pixels, that the window is resampled to at most (64;
            96 measured no better and about 1.5× slower).
        base_size: the side of the square the image is resized to at ``encode`` (256, the
            env's canvas); the logits have this size.
        click_radius: radius, in base pixels, of the seed each click makes (2).
        box_margin: the window around a box is the box widened by this fraction of its longer
            side on every side, plus 2 pixels (0.3).
        click_window: with no box, the window is the positive clicks and the previous mask
            widened by at least this fraction of ``base_size`` on every side (0.125).
        correction_cap: the largest radius of the region a click corrects, as a fraction of
            the window's longer side (0.5).
        core: the box's central fraction used as foreground when nothing else is (0.2).
        guess: guess the prior from intensities when there is no previous mask (on).
        band, bg_band: the margins left open around the prior's boundary, inside and
            outside, as fractions of the box's (else the window's) longer side (0.05, 0.25).
        min_lift: the least difference, between the box's centre and the ring around it, in
            the share of bright pixels for a box guess to be used (0.2).
        max_edge: a click guess spilling over more than this share of the window's edge is
            not used (0.25).
        use_previous: take ``previous_logits`` as the previous mask (on); off, they are
            ignored and each turn starts from the prompts alone.
        logit_clip: the logits' magnitude limit, in base pixels (8).
        iterations: GrabCut's ``iterCount`` (1).
        seed: the OpenCV random seed set before each GrabCut (its colour models start from
            k-means).
        cache: embedding cache; the process-wide one by default.

    ``model_id`` is ``classical-<algorithm>-<work_size>-v<version>``. The embedding depends
    only on ``base_size``, which ``features_spec`` checks; the other options change the masks,
    not the embedding.
    """

    name = "classical"
    prompt_kinds = frozenset({"box", "point"})

    def __init__(
        self,
        algorithm: Algorithm = "watershed",
        work_size: int = 64,
        base_size: int = 256,
        click_radius: float = 2.0,
        box_margin: float = 0.3,
        click_window: float = 0.125,
        correction_cap: float = 0.5,
        core: float = 0.2,
        guess: bool = True,
        band: float = 0.05,
        bg_band: float = 0.25,
        min_lift: float = 0.2,
        max_edge: float = 0.25,
        use_previous: bool = True,
        logit_clip: float = 8.0,
        iterations: int = 1,
        seed: int = 0,
        cache: EmbeddingCache | None = None,
    ) -> None:
        if cv2 is None:
            raise ImportError(
                "the classical segmenter needs OpenCV: pip install opencv-python-headless"
            )
        super().__init__(cache)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}")
        if not 8 <= int(work_size) <= 1024 or not 16 <= int(base_size) <= 2048:
            raise ValueError(
                f"work_size must be in [8, 1024] and base_size in [16, 2048]; "
                f"got {work_size}, {base_size}"
            )
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1; got {iterations}")
        self.algorithm = algorithm
        self.work_size = int(work_size)
        self.base_size = int(base_size)
        self.click_radius = float(click_radius)
        self.box_margin = float(box_margin)
        self.click_window = float(click_window)
        self.correction_cap = float(correction_cap)
        self.core = float(core)
        self.guess = guess
        self.band = float(band)
        self.bg_band = float(bg_band)
        self.min_lift = float(min_lift)
        self.max_edge = float(max_edge)
        self.use_previous = use_previous
        self.logit_clip = float(logit_clip)
        self.iterations = int(iterations)
        self.seed = int(seed)
        self.features_spec = ((1, 4, self.base_size, self.base_size), torch.float32)

    @property
    def model_id(self) -> str:
        return f"{self.name}-{self.algorithm}-{self.work_size}-v{VERSION}"

    @property
    def mask_input_shape(self) -> tuple[int, int]:
        return self.base_size, self.base_size

    # ------------------------------------------------------------------ encode
    def _encode(self, image: np.ndarray) -> Embedding:
        side = self.base_size
        height, width = image.shape[:2]
        shrink = side < max(height, width)
        base = cv2.resize(
            np.ascontiguousarray(image),
            (side, side),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
        )
        grey = cv2.GaussianBlur(base.astype(np.float32).mean(axis=2), (0, 0), 1.0)
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        gradient = np.sqrt(gx * gx + gy * gy)
        features = np.concatenate([base.astype(np.float32), gradient[..., None]], axis=2)
        tensor = torch.from_numpy(np.ascontiguousarray(features.transpose(2, 0, 1)))[None]
        return Embedding(tensor, (int(height), int(width)), self.model_id)

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        embedding: Embedding,
        prompts: Prompts,
        previous_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """The mask for ``prompts`` (``multimask`` is ignored: there is one output)."""
        self.check_call(embedding, prompts)
        side = self.base_size
        height, width = embedding.image_size
        to_base = np.array([side / width, side / height], np.float64)
        points = np.asarray(prompts.points, np.float64).reshape(-1, 2) * to_base
        labels = np.asarray(prompts.labels).reshape(-1).astype(bool)
        box = None
        if prompts.box is not None:
            box = np.asarray(prompts.box, np.float64).reshape(4) * np.tile(to_base, 2)
            # corners in either order (an env with sort_box_corners=False passes them as given)
            box = np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])])
        previous = None
        if self.use_previous and previous_logits is not None:
            previous = self._previous_mask(previous_logits)

        clip = self.logit_clip
        logits = np.full((side, side), -clip, np.float32)
        score = 0.0
        window = self._window(points, labels, box, previous)
        if window is not None:
            features = embedding.features[0].numpy()
            work = self._segment(features, window, points, labels, box, previous)
            # the signed distance is exact within ``clip`` of the mask, which lies in the window
            pad = int(np.ceil(clip)) + 1
            r0, r1 = max(0, window.r0 - pad), min(side, window.r1 + pad)
            c0, c1 = max(0, window.c0 - pad), min(side, window.c1 + pad)
            crop = np.zeros((r1 - r0, c1 - c0), bool)
            crop[window.r0 - r0 : window.r1 - r0, window.c0 - c0 : window.c1 - c0] = self._paste(
                work, window
            )
            logits[r0:r1, c0:c1] = _signed_distance(crop, clip)
            score = _edge_score(crop, features[3, r0:r1, c0:c1])
        if (height, width) == (side, side):
            mask = logits > 0
        else:
            mask = cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR) > 0
        return Prediction(torch.from_numpy(logits)[None, None], mask, score)

    def _previous_mask(self, logits: torch.Tensor) -> np.ndarray:
        """``previous_logits`` > 0 on the base square (resized there when another size)."""
        x = logits.detach().cpu().numpy().astype(np.float32, copy=False)
        x = x.reshape(-1, *x.shape[-2:])[0]
        if x.shape != self.mask_input_shape:
            x = cv2.resize(x, self.mask_input_shape[::-1], interpolation=cv2.INTER_LINEAR)
        return x > 0

    def _window(
        self,
        points: np.ndarray,
        labels: np.ndarray,
        box: np.ndarray | None,
        previous: np.ndarray | None,
    ) -> _Window | None:
        """The region of interest in base pixels, or None when nothing can be foreground."""
        side = self.base_size
        positives = points[labels]
        if box is not None:
            x0, y0, x1, y1 = box
            margin = self.box_margin * max(x1 - x0, y1 - y0) + 2.0
            lo = np.array([x0, y0]) - margin
            hi = np.array([x1, y1]) + margin
        else:
            found = [positives]
            if previous is not None and previous.any():
                rows, cols = np.nonzero(previous)
                found.append(
                    np.array([[cols.min(), rows.min()], [cols.max() + 1.0, rows.max() + 1.0]])
                )
            extent = np.concatenate(found)
            if not len(extent):
                return None
            lo, hi = extent.min(axis=0), extent.max(axis=0)
            margin = np.maximum(self.click_window * side, 0.5 * (hi - lo))
            lo, hi = lo - margin, hi + margin
        if len(positives):
            pad = self.click_radius + 2.0
            lo = np.minimum(lo, positives.min(axis=0) - pad)
            hi = np.maximum(hi, positives.max(axis=0) + pad)
        c0, r0 = (int(v) for v in np.clip(np.floor(lo), 0, side - 1))
        c1, r1 = (int(v) for v in np.clip(np.ceil(hi), 1, side))
        c1, r1 = max(c1, c0 + 1), max(r1, r0 + 1)
        scale = min(1.0, self.work_size / max(r1 - r0, c1 - c0))
        h = max(1, round((r1 - r0) * scale))
        w = max(1, round((c1 - c0) * scale))
        return _Window(r0, r1, c0, c1, h, w)

    def _segment(
        self,
        features: np.ndarray,
        window: _Window,
        points: np.ndarray,
        labels: np.ndarray,
        box: np.ndarray | None,
        previous: np.ndarray | None,
    ) -> np.ndarray:
        """The ``(h, w)`` bool mask of the window."""
        crop = features[:, window.r0 : window.r1, window.c0 : window.c1].transpose(1, 2, 0)
        if crop.shape[:2] != (window.h, window.w):
            crop = cv2.resize(crop, (window.w, window.h), interpolation=cv2.INTER_AREA)
        colour, gradient = crop[..., :3], crop[..., 3]
        sy, sx = window.scale
        # continuous work coordinates (x, y) of the clicks and the box
        offset = np.array([window.c0, window.r0], np.float64)
        scale = np.array([sx, sy], np.float64)
        work_points = (points - offset) * scale
        work_box = None
        if box is not None:
            work_box = np.concatenate([(box[:2] - offset) * scale, (box[2:] - offset) * scale])
        prior = None
        if previous is not None:
            prior = previous[window.r0 : window.r1, window.c0 : window.c1]
            if prior.shape != (window.h, window.w):
                prior = (
                    cv2.resize(
                        prior.astype(np.float32), (window.w, window.h), interpolation=cv2.INTER_AREA
                    )
                    >= 0.5
                )
        markers = self._markers(
            window, work_points, labels, work_box, prior, sx, colour.mean(axis=2)
        )
        if self.algorithm == "grabcut":
            return self._grabcut(colour, markers)
        return self._seeded(colour, gradient, markers)

    def _markers(
        self,
        window: _Window,
        points: np.ndarray,
        labels: np.ndarray,
        box: np.ndarray | None,
        prior: np.ndarray | None,
        scale: float,
        grey: np.ndarray,
    ) -> np.ndarray:
        """Working labels (``_BG``, ``_FG``, ``_PR_BG``, ``_PR_FG``, ``_UNKNOWN``) of the window."""
        h, w = window.h, window.w
        grabcut = self.algorithm == "grabcut"
        rows = np.arange(h, dtype=np.float64)[:, None] + 0.5
        cols = np.arange(w, dtype=np.float64)[None, :] + 0.5
        # 1. what is certainly background: outside the box, or the window's outer ring
        free = np.zeros((h, w), bool)
        if box is not None:
            free[max(0, int(np.floor(box[1]))) : int(np.ceil(box[3])),
                 max(0, int(np.floor(box[0]))) : int(np.ceil(box[2]))] = True  # fmt: skip
        else:
            # the window's edges inside the image (never the image's own border: an object
            # may touch it)
            side = self.base_size
            free[:] = True
            free[: int(window.r0 > 0)] = False
            free[h - int(window.r1 < side) :] = False
            free[:, : int(window.c0 > 0)] = False
            free[:, w - int(window.c1 < side) :] = False
        markers = np.full((h, w), _BG, np.uint8)
        # 2. the prior: the previous mask, else a guess from the box or the positive clicks
        guessed = False
        if prior is None and self.guess:
            if box is not None:
                prior = self._box_guess(grey, free, box, rows, cols)
            elif labels.any():
                prior = self._click_guess(grey, free, points[labels])
            guessed = prior is not None
        if prior is not None:
            inside_d, outside_d = _distances(prior)
            markers[free] = np.where(prior[free], _PR_FG, _PR_BG)
        elif box is not None and grabcut:
            markers[free] = _PR_FG
        else:
            markers[free] = _PR_BG if grabcut else _UNKNOWN
        # 3. around each click, the region it corrects takes the click's label as its prior
        d2s = [(cols - x) ** 2 + (rows - y) ** 2 for x, y in points]
        radius = max(self.click_radius * scale, 0.75)
        radii = [radius] * len(points)
        if prior is not None and len(points) and not guessed:
            cap = self.correction_cap * max(h, w)
            for k, ((x, y), positive, d2) in enumerate(zip(points, labels, d2s, strict=True)):
                r, c = int(np.clip(y, 0, h - 1)), int(np.clip(x, 0, w - 1))
                reach = min(float((outside_d if positive else inside_d)[r, c]), cap)
                near = free & (d2 <= reach**2)
                markers[near] = (_PR_FG if positive else _PR_BG) if grabcut else _UNKNOWN
                # a seed no wider than the error it corrects (a thin sliver gets a thin seed)
                radii[k] = float(np.clip(reach, 0.75, radius))
        if not grabcut:
            if prior is not None:
                # hard cores of the prior; a band around its boundary is left open
                size = max(h, w) if box is None else max(box[2] - box[0], box[3] - box[1])
                fg_band = max(1.0, self.band * size)
                bg_band = max(1.0, self.bg_band * size)
                pr_fg, pr_bg = markers == _PR_FG, markers == _PR_BG
                markers[pr_fg] = np.where(inside_d[pr_fg] > fg_band, _FG, _UNKNOWN)
                markers[pr_bg] = np.where(outside_d[pr_bg] > bg_band, _BG, _UNKNOWN)
            if box is not None and not (markers == _FG).any():
                markers[free & self._core(box, rows, cols)] = _FG
        # 4. each click is a hard seed (the later click wins where two overlap)
        for (x, y), positive, d2, seed in zip(points, labels, d2s, radii, strict=True):
            r, c = int(np.clip(y, 0, h - 1)), int(np.clip(x, 0, w - 1))
            markers[d2 <= seed**2] = _FG if positive else _BG
            markers[r, c] = _FG if positive else _BG
        return markers

    def _core(self, box: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        rx = max(self.core * (box[2] - box[0]) / 2, 0.75)
        ry = max(self.core * (box[3] - box[1]) / 2, 0.75)
        return ((cols - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2 <= 1.0

    def _box_guess(
        self,
        grey: np.ndarray,
        inside: np.ndarray,
        box: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
    ) -> np.ndarray | None:
        """The box's pixels on the object's side of an Otsu threshold, or None when unclear.

        The object's side is the one that the box's centre holds more of than the ring
        around the box does.
        """
        values = grey[inside]
        ring = ~inside
        if values.size < 4 or not ring.any() or np.ptp(values) < 1e-3:
            return None
        threshold = _otsu(values)
        bright = grey > threshold
        centre = inside & self._core(box, rows, cols)
        if not centre.any():
            return None
        lift = bright[centre].mean() - bright[ring].mean()
        if abs(lift) < self.min_lift:
            return None
        guess = (bright if lift > 0 else ~bright) & inside
        return guess if guess.any() else None

    def _click_guess(
        self, grey: np.ndarray, inside: np.ndarray, clicks: np.ndarray
    ) -> np.ndarray | None:
        """The Otsu-class components of the window that hold the positive clicks, or None.

        None where that is unclear: no contrast, or a component reaching the window's edge on
        more than ``max_edge`` of the ring (the click is on the background's side, or the
        object is larger than the window).
        """
        values = grey[inside]
        if values.size < 4 or np.ptp(values) < 1e-3:
            return None
        bright = grey > _otsu(values)
        h, w = grey.shape
        out = np.zeros((h, w), bool)
        for side in (bright, ~bright):
            count, comps = cv2.connectedComponents((side & inside).astype(np.uint8), connectivity=4)
            ring = ~inside
            near = cv2.dilate(ring.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            for x, y in clicks:
                r, c = int(np.clip(y, 0, h - 1)), int(np.clip(x, 0, w - 1))
                label = comps[r, c]
                if label == 0 or not side[r, c]:
                    continue
                comp = comps == label
                if (comp & near).sum() > self.max_edge * near.sum():
                    return None
                out |= comp
        return out if out.any() else None

    def _grabcut(self, colour: np.ndarray, markers: np.ndarray) -> np.ndarray:
        fg = (markers == _FG) | (markers == _PR_FG)
        if fg.all() or not fg.any():
            return fg
        if np.ptp(colour - colour[..., :1]) < 1.0:
            # a grey image: GrabCut's colour models degenerate on R = G = B, so its three
            # channels become the intensity at three scales (local texture)
            grey = colour[..., 0]
            colour = np.stack(
                [grey, cv2.GaussianBlur(grey, (0, 0), 1.0), cv2.GaussianBlur(grey, (0, 0), 2.0)],
                axis=2,
            )
        image = np.ascontiguousarray(np.clip(colour + 0.5, 0, 255).astype(np.uint8))
        mask = markers.copy()
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(self.seed)
        try:
            cv2.grabCut(image, mask, (0, 0, 0, 0), bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # too few samples of a side for its colour model: keep the prior
            return fg
        return (mask == _FG) | (mask == _PR_FG)

    def _seeded(self, colour: np.ndarray, gradient: np.ndarray, markers: np.ndarray) -> np.ndarray:
        labels = np.zeros(markers.shape, np.int32)
        labels[(markers == _FG) | (markers == _PR_FG)] = 1
        labels[(markers == _BG) | (markers == _PR_BG)] = 2
        if not (labels == 1).any():
            return np.zeros(markers.shape, bool)
        if not (labels == 2).any() or (labels > 0).all():
            return labels == 1
        if self.algorithm == "watershed":
            from skimage.segmentation import watershed

            return watershed(gradient, labels) == 1
        from skimage.segmentation import random_walker

        data = colour.astype(np.float64) / 255.0
        mode = "bf" if markers.size <= 64 * 64 else "cg_j"
        with warnings.catch_warnings():  # "probability range outside [0, 1]" at this tol
            warnings.simplefilter("ignore", UserWarning)
            prob = random_walker(
                data, labels, beta=130, mode=mode, channel_axis=-1, return_full_prob=True, tol=1e-3
            )
        return prob[0] > prob[1]

    def _paste(self, work: np.ndarray, window: _Window) -> np.ndarray:
        """The window's mask at base resolution (a resampled mask through its signed distance)."""
        size = (window.r1 - window.r0, window.c1 - window.c0)
        if work.shape == size:
            return work
        sdf = _signed_distance(work, clip=float(max(work.shape)))
        return cv2.resize(sdf, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) > 0


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of a set of values (the mean of the two classes' split point)."""
    hist, edges = np.histogram(values, bins=64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _distances(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance of each pixel of ``mask`` to the outside, and of each other one to it."""
    m = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 5)
    if not mask.any():
        outside[:] = np.inf
    if mask.all():
        inside[:] = np.inf
    return inside, outside


def _signed_distance(mask: np.ndarray, clip: float) -> np.ndarray:
    """float32 signed distance to the boundary (> 0 inside, < 0 outside), within ``±clip``."""
    if not mask.any():
        return np.full(mask.shape, -clip, np.float32)
    if mask.all():
        return np.full(mask.shape, clip, np.float32)
    inside, outside = _distances(mask)
    sdf = np.where(mask, inside - 0.5, 0.5 - outside)
    return np.clip(sdf, -clip, clip).astype(np.float32)


def _edge_score(mask: np.ndarray, gradient: np.ndarray) -> float:
    """How well the mask's boundary follows image edges, in [0, 1] (0 for an empty mask)."""
    if not mask.any() or mask.all():
        return 0.0
    m = mask.astype(np.uint8)
    boundary = (m - cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)
    near = cv2.dilate(m, np.ones((9, 9), np.uint8)).astype(bool)
    reference = float(np.percentile(gradient[near], 90)) + 1e-6
    return float(np.clip(gradient[boundary].mean() / reference, 0.0, 1.0))

"""Simulated users that click on the segmentation error: the RITM and IMIS-Bench protocols.

Both policies are oracles: they read the ground truth and the clicks accepted so far through
the env's oracle surface (``medseg_env.Oracle``). The logic lives in pure
functions on ``(H, W)`` bool masks (``next_click``, ``imis_click``) that the policies call and
the tests check; a click is returned as ``(row, col, positive)`` and sent to the env at the
centre of that pixel (``medseg_env.actions.pixel_click``).

On a box-only segmenter (the original ``litemedsam``) every click is an invalid action: the
env records it and the benchmark reports it. ``first_box=True`` makes the first action (turn 0)
the exact ground-truth box instead (``simulation.oracle_box_action``, widened to the env's
``min_box_size`` for tinier targets), so that a click policy still gets a mask there.
"""

from __future__ import annotations

from abc import abstractmethod

import gymnasium as gym
import numpy as np

from medseg_env.actions import Action
from medseg_env.geometry import padded_distance
from medseg_env.oracle import Oracle

from .base import Info, Observation, Policy
from .simulation import Click, click_action, clicked_mask, frame_mask, oracle_box_action

# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def _masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(f"pred and gt must be 2D masks of one shape; got {p.shape}, {g.shape}")
    return p, g


def next_click(pred: np.ndarray, gt: np.ndarray, clicked: np.ndarray | None = None) -> Click | None:
    """The RITM / SimpleClick / ClickSEG next click on the current error.

    Args:
        pred: ``(H, W)`` current mask (bool or 0/1).
        gt: ``(H, W)`` ground truth.
        clicked: ``(H, W)`` bool mask of pixels clicked before (excluded), or None.

    Returns:
        ``(row, col, positive)``, or None when no unclicked error pixel is left (perfect mask).

    Rules, as in RITM's ``Clicker._get_next_click`` (``isegm/inference/clicker.py``, shared by
    SimpleClick and ClickSEG): FN = gt & ~pred and FP = pred & ~gt; each gets the padded
    distance transform (``padded_distance``); clicked pixels get distance 0; the click is
    *positive iff* ``fn_max > fp_max`` — a tie goes to a **negative** click, as RITM's
    ``is_positive = fn_max_dist > fp_max_dist``. The pixel is the first maximum in row-major
    order (``np.argmax``; RITM takes the first of ``np.where(dt == max)``, the same pixel).
    RITM uses OpenCV's exact ``DIST_L2`` transform; scipy's EDT gives the same distances.
    One deliberate difference: when both maxima are 0 RITM still clicks (a negative click at
    pixel (0, 0)); here that returns None, so the policy stops.
    """
    p, g = _masks(pred, gt)
    fn_dt = padded_distance(g & ~p)
    fp_dt = padded_distance(p & ~g)
    if clicked is not None:
        done = np.asarray(clicked, dtype=bool)
        if done.shape != p.shape:
            raise ValueError(f"clicked must have shape {p.shape}; got {done.shape}")
        fn_dt[done] = 0.0
        fp_dt[done] = 0.0
    fn_max, fp_max = float(fn_dt.max()), float(fp_dt.max())
    if fn_max == 0.0 and fp_max == 0.0:
        return None
    positive = fn_max > fp_max
    dt = fn_dt if positive else fp_dt
    row, col = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return int(row), int(col), positive


def imis_click(
    pred: np.ndarray,
    gt: np.ndarray,
    first: bool,
    rng: np.random.Generator,
    top_ratio: float = 0.5,
) -> Click | None:
    """The IMIS-Bench click simulator (Cheng et al., 2024, "Interactive Medical Image
    Segmentation: A Benchmark Dataset and Baseline").

    Args:
        pred: ``(H, W)`` current mask (ignored for the first click).
        gt: ``(H, W)`` ground truth.
        first: True for the first click of an episode (no prompt yet).
        rng: the random generator (one draw per call).
        top_ratio: share of foreground pixels, nearest the centroid, the first click picks from.

    Returns:
        ``(row, col, positive)``, or None when a later click finds ``pred == gt``
        (and for the first click of an empty ``gt``).

    First click: positive, uniform among the ``max(1, int(n * top_ratio))`` foreground pixels
    nearest the foreground centroid (Euclidean, pixel indices; a stable sort, so pixels at the
    same distance rank in row-major order). Later clicks: a uniformly random pixel of
    ``pred XOR gt``, positive on a false negative, negative on a false positive. As in the
    benchmark, earlier clicks are not excluded.
    """
    p, g = _masks(pred, gt)
    if first:
        fg = np.argwhere(g)
        if len(fg) == 0:
            return None
        dist = np.linalg.norm(fg - fg.mean(axis=0), axis=1)
        top = np.argsort(dist, kind="stable")[: max(1, int(len(fg) * top_ratio))]
        row, col = fg[top[int(rng.integers(len(top)))]]
        return int(row), int(col), True
    errors = np.argwhere(p ^ g)
    if len(errors) == 0:
        return None
    row, col = errors[int(rng.integers(len(errors)))]
    return int(row), int(col), bool(g[row, col])


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------


class _Clicker(Policy):
    """Shared plumbing of the oracle click policies: masks from obs/env, the optional box."""

    needs_oracle = True

    def __init__(
        self, first_box: bool = False, stop_iou: float | None = None, seed: int | None = None
    ) -> None:
        super().__init__(seed)
        if stop_iou is not None and not 0.0 < stop_iou <= 1.0:
            raise ValueError(f"stop_iou must be in (0, 1] or None; got {stop_iou}")
        self.first_box = first_box
        self.stop_iou = stop_iou

    def act(self, obs: Observation, info: Info, env: gym.Env | None = None) -> Action:
        oracle = self._oracle(env)
        gt = np.asarray(oracle.ground_truth, dtype=bool)
        # The first *action* (turn 0), not "while there is no box": a box the env refused
        # would otherwise be retried every turn.
        if self.first_box and int(info.get("turn", 0)) == 0:
            return oracle_box_action(gt, min_side=oracle.min_box_size)
        if self.stop_iou is not None and float(info.get("iou", 0.0)) >= self.stop_iou:
            return click_action(None, gt.shape[0])  # RITM's evaluation stops at max_iou_thr
        pred = frame_mask(obs, oracle)
        return click_action(self._click(pred, gt, oracle, info), gt.shape[0])

    @abstractmethod
    def _click(self, pred: np.ndarray, gt: np.ndarray, oracle: Oracle, info: Info) -> Click | None:
        """The next click on the current error, or None when nothing is left to fix."""


class RITMClicker(_Clicker):
    """The standard next-click simulator of RITM / SimpleClick / ClickSEG (``next_click``).

    Deterministic: clicks the deepest point of the larger error (ties: negative, first pixel
    in row-major order), never a pixel clicked before; stops once the mask is perfect.

    Args:
        first_box: make the first action the exact ground-truth box (for box-only models).
        stop_iou: stop once the IoU reaches this (RITM's evaluation uses 0.9, its
            ``max_iou_thr``); None clicks until the budget runs out or the mask is perfect.
        seed: unused (the policy is deterministic); kept for a uniform constructor.
    """

    name = "ritm"

    def _click(self, pred: np.ndarray, gt: np.ndarray, oracle: Oracle, info: Info) -> Click | None:
        return next_click(pred, gt, clicked_mask(oracle.prompts.points, gt.shape))


class IMISClicker(_Clicker):
    """The IMIS-Bench click simulator (``imis_click``): a random near-centroid first click,
    then uniformly random clicks on the error; stops once the mask is perfect.

    The first click is the one made while the episode has no accepted prompt
    (``info["num_prompts"] == 0``); after a ``first_box`` box every click is an error click.

    Args:
        first_box: make the first action the exact ground-truth box (for box-only models).
        top_ratio: share of foreground pixels nearest the centroid for the first click (0.5).
        stop_iou: stop once the IoU reaches this; None clicks until the budget runs out.
        seed: seeds ``self.rng``.
    """

    name = "imis"

    def __init__(
        self,
        first_box: bool = False,
        top_ratio: float = 0.5,
        stop_iou: float | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(first_box, stop_iou, seed)
        if not 0.0 < top_ratio <= 1.0:
            raise ValueError(f"top_ratio must be in (0, 1]; got {top_ratio}")
        self.top_ratio = top_ratio

    def _click(self, pred: np.ndarray, gt: np.ndarray, oracle: Oracle, info: Info) -> Click | None:
        first = int(info.get("num_prompts", 0)) == 0
        return imis_click(pred, gt, first, self.rng, self.top_ratio)

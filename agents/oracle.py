"""Oracle box prompts and the hybrid-prompting expert that generates demonstration trajectories.

- ``OracleBox``: the ground-truth bounding box, optionally jittered (the MedSAM evaluation
  protocol), then stop.
- ``HybridExpert``: the MedSAM-Agent trajectory generator: a jittered box, then corrective
  clicks (or box refinements on box-only models), each kept only if it makes progress.

Boxes are ``(r0, c0, r1, c1)`` inclusive pixel indices of the ``S×S`` observation canvas and
are sent with ``medseg_env.actions.pixel_box``, which covers exactly those pixels.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from scipy import ndimage

from medseg_env import actions as A
from medseg_env.actions import Action
from medseg_env.geometry import padded_distance
from medseg_env.metrics import iou

from .base import Info, Observation, Policy
from .simulation import Click, click_action, clicked_mask, frame_mask, oracle_box_action

# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def hybrid_click(
    pred: np.ndarray,
    gt: np.ndarray,
    rng: np.random.Generator,
    clicked: np.ndarray | None = None,
    depth_ratio: float = 0.5,
) -> Click | None:
    """A randomised RITM-style click in the largest error region.

    Args:
        pred, gt: ``(H, W)`` masks.
        rng: random generator (one draw per call that returns a click).
        clicked: ``(H, W)`` bool mask of pixels already clicked (never candidates), or None.
        depth_ratio: candidates are the region's pixels at least this fraction as deep (padded
            distance to the region's edge) as its deepest unclicked pixel; 1.0 gives RITM's
            deepest point (up to ties), smaller values more variety.

    Returns:
        ``(row, col, positive)`` — positive in a false-negative region — or None when no
        error pixel is left unclicked.

    Regions are the 4-connected components of FN = gt & ~pred and FP = pred & ~gt, ranked by
    area (ties: FN before FP, then label order, i.e. row-major order of their first pixel);
    the largest one with an unclicked pixel is used.
    """
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    done = np.zeros(p.shape, bool) if clicked is None else np.asarray(clicked, dtype=bool)
    regions: list[tuple[int, bool, np.ndarray, int]] = []
    for positive, error in ((True, g & ~p), (False, p & ~g)):
        labels, n = ndimage.label(error)
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        regions += [(int(areas[k]), positive, labels, k) for k in range(1, n + 1)]
    # Stable sort on area only keeps the FN-then-FP, label-order tie rule.
    for _, positive, labels, k in sorted(regions, key=lambda r: -r[0]):
        depth = padded_distance(labels == k)
        depth[done] = 0.0
        deepest = depth.max()
        if deepest == 0.0:
            continue
        candidates = np.argwhere(depth >= max(depth_ratio * deepest, np.finfo(float).tiny))
        row, col = candidates[int(rng.integers(len(candidates)))]
        return int(row), int(col), positive
    return None


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------


class OracleBox(Policy):
    """The ground-truth bounding box (MedSAM evaluation protocol), then stop.

    Sends the box while the episode has none (``info["num_boxes"] == 0``) and the last action
    was not refused (``info["invalid_action"]``: on a click-only segmenter the box is invalid,
    and retrying it every turn would only burn the budget); stops otherwise. The box is
    widened to the env's ``min_box_size`` for targets smaller than that.

    Args:
        jitter_px: maximum shift of each side in pixels (uniform integer; 0: exact box).
        jitter_frac: maximum shift of each side as a fraction of the box height/width.
        seed: seeds ``self.rng`` (the jitter).
    """

    name = "oracle_box"
    needs_oracle = True

    def __init__(
        self, jitter_px: float = 0, jitter_frac: float = 0.0, seed: int | None = None
    ) -> None:
        super().__init__(seed)
        if jitter_px < 0 or jitter_frac < 0:
            raise ValueError(f"jitter must be >= 0; got {jitter_px}, {jitter_frac}")
        self.jitter_px, self.jitter_frac = jitter_px, jitter_frac

    def act(self, obs: Observation, info: Info, env: gym.Env | None = None) -> Action:
        oracle = self._oracle(env)
        if int(info.get("num_boxes", 0)) > 0 or info.get("invalid_action") is not None:
            return A.stop()
        return oracle_box_action(
            oracle.ground_truth, self.rng, self.jitter_px, self.jitter_frac, oracle.min_box_size
        )


class HybridExpert(Policy):
    """The MedSAM-Agent "hybrid prompting" expert with progress-constrained sampling.

    First action (no accepted prompt yet): a jittered ground-truth box, taken without a
    progress check (it is the protocol's starting prompt, and the empty mask it replaces has
    IoU 0). On a click-only segmenter there is no box and the first action is a click, checked
    like every correction.

    MedSAM-Agent generates trajectories in two styles, picked with ``first``: ``"box"`` (the
    default: box first, then corrective clicks, as above) and ``"click"`` (click sequences:
    never a box, every action a progress-checked click from the empty mask on; on a box-only
    segmenter that leaves nothing to send, so the expert stops at once).

    Then each turn: stop if the IoU (``info["iou"]``) is at least ``target_iou``; otherwise draw
    up to ``max_tries`` candidates — a ``hybrid_click`` in the largest error region where the
    segmenter takes points, else a box refinement (a ground-truth box with the smaller,
    shrinking ``refine_jitter_frac``) — and send the first whose ``oracle.preview``
    mask raises the IoU by at least ``tau``. If none does, stop. Each candidate costs one
    decoder call.

    Deterministic given the seed: the random draws happen in a fixed order and the previews
    (the segmenter) are deterministic.

    Args:
        box_jitter_frac: maximum shift of each side of the first box, as a fraction of the box
            height/width (0.1).
        refine_jitter_frac: the same for box refinements on box-only segmenters (0.05); it
            shrinks linearly over a turn's tries, so the last try is the exact box.
        tau: minimum IoU gain for a candidate to be kept (0.01).
        max_tries: candidates drawn per turn before giving up and stopping (5).
        target_iou: stop once the IoU reaches this (0.9).
        depth_ratio: click candidates are the pixels of the largest error region at least this
            fraction as deep as its deepest pixel (0.5; see ``hybrid_click``).
        first: ``"box"`` (box first, then corrective clicks) or ``"click"`` (clicks only).
        seed: seeds ``self.rng``.
    """

    name = "hybrid_expert"
    needs_oracle = True

    def __init__(
        self,
        box_jitter_frac: float = 0.1,
        refine_jitter_frac: float = 0.05,
        tau: float = 0.01,
        max_tries: int = 5,
        target_iou: float = 0.9,
        depth_ratio: float = 0.5,
        first: str = "box",
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if first not in ("box", "click"):
            raise ValueError(f"first must be 'box' or 'click'; got {first!r}")
        if box_jitter_frac < 0 or refine_jitter_frac < 0:
            raise ValueError("jitter fractions must be >= 0")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1; got {max_tries}")
        if not 0.0 < depth_ratio <= 1.0:
            raise ValueError(f"depth_ratio must be in (0, 1]; got {depth_ratio}")
        self.box_jitter_frac = box_jitter_frac
        self.refine_jitter_frac = refine_jitter_frac
        self.tau = tau
        self.max_tries = max_tries
        self.target_iou = target_iou
        self.depth_ratio = depth_ratio
        self.first = first

    def act(self, obs: Observation, info: Info, env: gym.Env | None = None) -> Action:
        oracle = self._oracle(env)
        gt = np.asarray(oracle.ground_truth, dtype=bool)
        can_click = oracle.supports("point")
        can_box = oracle.supports("box") and self.first == "box"
        if int(info.get("num_prompts", 0)) == 0 and can_box:
            return oracle_box_action(
                gt, self.rng, jitter_frac=self.box_jitter_frac, min_side=oracle.min_box_size
            )
        pred = frame_mask(obs, oracle)
        current = float(info["iou"]) if "iou" in info else iou(pred, gt)
        if current >= self.target_iou or not (can_click or can_box):
            return A.stop()
        clicked = clicked_mask(oracle.prompts.points, gt.shape)
        for attempt in range(self.max_tries):
            if can_click:
                click = hybrid_click(pred, gt, self.rng, clicked, self.depth_ratio)
                if click is None:  # nothing left to fix
                    break
                candidate = click_action(click, gt.shape[0])
            else:
                # the jitter shrinks over the tries, down to the exact box on the last one
                shrink = 1.0 - attempt / max(self.max_tries - 1, 1)
                candidate = oracle_box_action(
                    gt,
                    self.rng,
                    jitter_frac=self.refine_jitter_frac * shrink,
                    min_side=oracle.min_box_size,
                )
            mask, invalid = oracle.preview(candidate)
            if invalid is None and iou(mask, gt) >= current + self.tau:
                return candidate
        return A.stop()

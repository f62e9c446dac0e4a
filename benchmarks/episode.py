"""Playing episodes: one episode to its record, and the policies/envs shared by all of them."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from medseg_agents import Policy
from medseg_agents.mllm.base import TextPolicy
from medseg_env import metrics
from medseg_env.actions import ActionKind
from medseg_env.env import MedSegEnv
from medseg_env.segmenters import Segmenter, make_segmenter
from medseg_env.text import get_protocol
from medseg_env.wrappers.text_env import MedSegTextEnv

from .plan import EpisodeSpec, Plan
from .records import NO_ACTION, EpisodeRecord, Step

_CALL_ACTIONS = {"add_bbox": "box", "stop_action": "stop"}


@dataclass(frozen=True)
class FinalState:
    """What an example figure shows: ``(S, S, 3)`` image, ``(S, S)`` masks, the prompts."""

    image: np.ndarray
    mask: np.ndarray
    ground_truth: np.ndarray
    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None
    dice: float
    turns: int


def _step_action(action: object, info: dict) -> str:
    """The ``Step.action`` name of a turn: the action's kind, or the text reply's call."""
    parsed = info.get("parsed")
    if parsed is None:
        return ActionKind(int(np.asarray(action["kind"]).reshape(()))).name.lower()  # type: ignore[index]
    call = parsed["call"]
    if call is None or not info["executed"]:
        return NO_ACTION  # no call, or one the protocol did not run (its last turn, a retry)
    if call["name"] == "add_point":
        return f"{call['arguments']['point_type']}_click"
    return _CALL_ACTIONS[call["name"]]


def run_episode(
    env: gym.Env,
    policy: Policy,
    spec: EpisodeSpec,
    nsd_tolerance_mm: float = metrics.NSD_TOLERANCE_MM,
) -> tuple[EpisodeRecord, FinalState]:
    """Play one episode to its end; NSD (at ``nsd_tolerance_mm``) and HD95 after every turn."""
    policy.seed(spec.seed)
    start = time.perf_counter()
    obs, info = env.reset(seed=spec.seed, options={"sample_index": spec.sample_index})
    reset_s = time.perf_counter() - start
    base = env.unwrapped
    assert isinstance(base, MedSegEnv)
    gt = base.ground_truth
    spacing, tol = tuple(info["spacing"]), nsd_tolerance_mm
    steps: list[Step] = []
    act_s: list[float] = []
    env_s: list[float] = []
    prev_mask, prev_surface = None, (0.0, math.inf)
    while True:
        t0 = time.perf_counter()
        action = policy.act(obs, info, env)
        t1 = time.perf_counter()
        obs, _, terminated, truncated, info = env.step(action)
        t2 = time.perf_counter()
        act_s.append(t1 - t0)
        env_s.append(t2 - t1)
        mask = base.current_mask
        # An invalid action or a stop leaves the mask as it was: reuse its surface metrics.
        if prev_mask is None or not np.array_equal(mask, prev_mask):
            prev_surface = (metrics.nsd(mask, gt, spacing, tol), metrics.hd95(mask, gt, spacing))
        prev_mask = mask
        steps.append(
            Step(
                turn=int(info["turn"]),
                action=_step_action(action, info),
                invalid=info["invalid_action"],
                dice=float(info["dice"]),
                iou=float(info["iou"]),
                nsd=float(prev_surface[0]),
                hd95=float(prev_surface[1]),
                num_clicks=int(info["num_clicks"]),
                num_boxes=int(info["num_boxes"]),
                reply=info.get("reply"),
                parsed=info.get("parsed"),
            )
        )
        if terminated or truncated:
            break
    record = EpisodeRecord(
        policy=spec.policy,
        dataset=spec.dataset,
        segmenter=spec.segmenter,
        sample_id=spec.sample_id,
        sample_index=spec.sample_index,
        modality=str(info["modality"]),
        target=str(info["target"]),
        source_id=str(info["source_id"]),
        seed=spec.seed,
        budget=spec.budget,
        stopped=bool(terminated),
        steps=tuple(steps),
        timing={"reset": reset_s, "act": act_s, "env": env_s},
    )
    p = base.prompts
    final = FinalState(
        image=base.image,
        mask=base.current_mask,
        ground_truth=gt.copy(),
        points=p.points.copy(),
        labels=p.labels.copy(),
        box=None if p.box is None else p.box.copy(),
        dice=steps[-1].dice,
        turns=len(steps),
    )
    return record, final


_SEGMENTERS: dict[str, Segmenter] = {}


def shared_segmenter(name: str) -> Segmenter:
    """The process's segmenter of this registered name (built on first use).

    Sharing is safe: ``predict`` keeps no state between calls, and embeddings are cached by
    image content and model id anyway.
    """
    if name not in _SEGMENTERS:
        _SEGMENTERS[name] = make_segmenter(name)
    return _SEGMENTERS[name]


class Resources:
    """Segmenters and envs built once and shared by every episode that needs them.

    One segmenter instance per name and process (``shared_segmenter``: its weights load once,
    also across runs) and one env per (dataset, segmenter, budget); the segmenters'
    process-wide embedding cache then makes a second policy on the same image cost no encoder
    call.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._envs: dict[tuple[str, str, int, str | None, str | None], gym.Env] = {}

    def policy(self, label: str) -> Policy:
        return self.plan.policies[label]

    def run(self, spec: EpisodeSpec) -> tuple[EpisodeRecord, FinalState]:
        """Play one planned episode."""
        tol = self.plan.config.nsd_tolerance_mm
        return run_episode(self.env(spec), self.policy(spec.policy), spec, tol)

    def env(self, spec: EpisodeSpec) -> gym.Env:
        """The env of an episode: ``MedSeg-v0``, or its text form for a text policy."""
        policy = self.policy(spec.policy)
        protocol = policy.protocol if isinstance(policy, TextPolicy) else None
        images = policy.images if isinstance(policy, TextPolicy) else None
        key = (spec.dataset, spec.segmenter, spec.budget, protocol, images)
        if key not in self._envs:
            env: gym.Env = MedSegEnv(
                dataset=self.plan.datasets[spec.dataset],
                segmenter=shared_segmenter(spec.segmenter),
                obs_size=self.plan.config.obs_size,
                max_turns=spec.budget,
                # a text protocol is scored with its own way of calling the segmenter
                prompting=get_protocol(protocol).segmenter_call if protocol else "accumulate",
            )
            if isinstance(policy, TextPolicy):
                env = MedSegTextEnv(env, policy.protocol, images=policy.images)
            self._envs[key] = env
        return self._envs[key]

    def close(self) -> None:
        for env in self._envs.values():
            env.close()

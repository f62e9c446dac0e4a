"""Playing episodes: one episode to its record, and the policies/envs shared by all of them."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from medseg_agents import Policy
from medseg_agents.mllm.base import TextPolicy
from medseg_env import metrics
from medseg_env.actions import ActionKind
from medseg_env.env import MedSegEnv
from medseg_env.segmenters import shared_segmenter
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


class _Episode:
    """One episode in progress: its env, its steps, its timings."""

    def __init__(self, env: gym.Env, spec: EpisodeSpec, tol: float) -> None:
        self.env, self.spec, self.tol = env, spec, tol
        start = time.perf_counter()
        self.obs, self.info = env.reset(seed=spec.seed, options={"sample_index": spec.sample_index})
        self.reset_s = time.perf_counter() - start
        base = env.unwrapped
        assert isinstance(base, MedSegEnv)
        self.base = base
        self.gt = base.ground_truth
        self.spacing = tuple(self.info["spacing"])
        self.steps: list[Step] = []
        self.act_s: list[float] = []
        self.env_s: list[float] = []
        # replies retried without spending a turn, and their time: kept with the next turn
        self._retries: list[dict[str, Any]] = []
        self._retry_s = (0.0, 0.0)
        self.done = False
        self.terminated = False
        self._prev_mask: np.ndarray | None = None
        self._surface = (0.0, math.inf)

    def step(self, action: object, act_s: float) -> None:
        t1 = time.perf_counter()
        turn_before = self.base.turn
        self.obs, _, terminated, truncated, info = self.env.step(action)
        env_s = time.perf_counter() - t1
        self.info = info
        if (
            info.get("format_error")
            and self.base.turn == turn_before
            and not (terminated or truncated)
        ):
            # a reply retried without spending a turn (MedSAM-Agent's EVAL): not a turn
            self._retries.append({"reply": info.get("reply"), "parsed": info.get("parsed")})
            self._retry_s = (self._retry_s[0] + act_s, self._retry_s[1] + env_s)
            return
        self.env_s.append(env_s + self._retry_s[1])
        self.act_s.append(act_s + self._retry_s[0])
        mask = self.base.current_mask
        # An invalid action or a stop leaves the mask as it was: reuse its surface metrics.
        if self._prev_mask is None or not np.array_equal(mask, self._prev_mask):
            gt, spacing = self.gt, self.spacing
            self._surface = (
                metrics.nsd(mask, gt, spacing, self.tol),
                metrics.hd95(mask, gt, spacing),
            )
        self._prev_mask = mask
        self.steps.append(
            Step(
                turn=len(self.steps) + 1,  # the env's turn, or the end after free retries
                action=_step_action(action, info),
                invalid=info["invalid_action"],
                dice=float(info["dice"]),
                iou=float(info["iou"]),
                nsd=float(self._surface[0]),
                hd95=float(self._surface[1]),
                num_clicks=int(info["num_clicks"]),
                num_boxes=int(info["num_boxes"]),
                reply=info.get("reply"),
                parsed=info.get("parsed"),
                retries=tuple(self._retries),
            )
        )
        self._retries, self._retry_s = [], (0.0, 0.0)
        self.terminated = bool(terminated)
        self.done = bool(terminated or truncated)

    def finish(self) -> tuple[EpisodeRecord, FinalState]:
        spec, info = self.spec, self.info
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
            stopped=self.terminated,
            steps=tuple(self.steps),
            timing={"reset": self.reset_s, "act": self.act_s, "env": self.env_s},
        )
        p = self.base.prompts
        final = FinalState(
            image=self.base.image,
            mask=self.base.current_mask,
            ground_truth=self.gt.copy(),
            points=p.points.copy(),
            labels=p.labels.copy(),
            box=None if p.box is None else p.box.copy(),
            dice=self.steps[-1].dice,
            turns=len(self.steps),
        )
        return record, final


def run_episodes(
    envs: Sequence[gym.Env],
    policy: Policy,
    specs: Sequence[EpisodeSpec],
    nsd_tolerance_mm: float = metrics.NSD_TOLERANCE_MM,
) -> list[tuple[EpisodeRecord, FinalState]]:
    """Play episodes in lockstep, one env each: every turn, one ``act_batch`` call for all the
    episodes still running (one generate call for an LLM). NSD (at ``nsd_tolerance_mm``) and
    HD95 after every turn. ``act`` time is the batch's time shared equally by its episodes.

    A batch of one seeds the policy with the episode's seed, so a policy's episode does not
    depend on the episodes before it; in a larger batch the policy is seeded with the first
    episode's seed (exact for greedy decoding, the default of every MLLM policy).
    """
    if not specs or len(envs) != len(specs):
        raise ValueError(f"{len(specs)} episodes for {len(envs)} envs")
    policy.seed(specs[0].seed)
    running = [_Episode(env, spec, nsd_tolerance_mm) for env, spec in zip(envs, specs, strict=True)]
    while active := [e for e in running if not e.done]:
        t0 = time.perf_counter()
        if len(active) == 1:
            actions = [policy.act(active[0].obs, active[0].info, active[0].env)]
        else:
            actions = policy.act_batch(
                [e.obs for e in active], [e.info for e in active], [e.env for e in active]
            )
        act_s = (time.perf_counter() - t0) / len(active)
        for episode, action in zip(active, actions, strict=True):
            episode.step(action, act_s)
    return [e.finish() for e in running]


def run_episode(
    env: gym.Env,
    policy: Policy,
    spec: EpisodeSpec,
    nsd_tolerance_mm: float = metrics.NSD_TOLERANCE_MM,
) -> tuple[EpisodeRecord, FinalState]:
    """Play one episode to its end (``run_episodes`` with a batch of one)."""
    return run_episodes([env], policy, [spec], nsd_tolerance_mm)[0]


class Resources:
    """Segmenters and envs built once and shared by every episode that needs them.

    One segmenter instance per spec and process (``medseg_env.segmenters.shared_segmenter``:
    its weights load once, also across runs) and one env per (dataset, segmenter, budget); the
    segmenters' process-wide embedding cache then makes a second policy on the same image cost
    no encoder call.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._envs: dict[tuple[str, str, int, str | None, str | None, int], gym.Env] = {}

    def policy(self, label: str) -> Policy:
        return self.plan.policies[label]

    def run(self, spec: EpisodeSpec) -> tuple[EpisodeRecord, FinalState]:
        """Play one planned episode."""
        return self.run_batch([spec])[0]

    def run_batch(self, specs: Sequence[EpisodeSpec]) -> list[tuple[EpisodeRecord, FinalState]]:
        """Play planned episodes of one policy in lockstep (``run_episodes``)."""
        tol = self.plan.config.nsd_tolerance_mm
        envs = [self.env(spec, slot) for slot, spec in enumerate(specs)]
        return run_episodes(envs, self.policy(specs[0].policy), specs, tol)

    def env(self, spec: EpisodeSpec, slot: int = 0) -> gym.Env:
        """The env of an episode: ``MedSeg-v0``, or its text form for a text policy.

        ``slot``: which of the envs of a lockstep batch (one per episode in it).
        """
        policy = self.policy(spec.policy)
        protocol = policy.protocol if isinstance(policy, TextPolicy) else None
        images = policy.images if isinstance(policy, TextPolicy) else None
        key = (spec.dataset, spec.segmenter, spec.budget, protocol, images, slot)
        if key not in self._envs:
            # a text protocol runs with its released code's env options: its way of calling
            # the segmenter, and for MedSAM-Agent's the sample's own resolution and raw boxes
            options = {"prompting": "accumulate"}
            if protocol:
                options = get_protocol(protocol).env_options()
                del options["max_turns"]  # the benchmark's budget
            env: gym.Env = MedSegEnv(
                dataset=self.plan.datasets[spec.dataset],
                segmenter=shared_segmenter(spec.segmenter),
                obs_size=self.plan.config.obs_size,
                max_turns=spec.budget,
                target_hint=self.plan.config.target_hint,
                hint_noise=self.plan.config.hint_noise,
                **options,
            )
            if isinstance(policy, TextPolicy):
                env = MedSegTextEnv(env, policy.protocol, images=policy.images)
            self._envs[key] = env
        return self._envs[key]

    def close(self) -> None:
        for env in self._envs.values():
            env.close()

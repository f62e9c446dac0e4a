"""Wrappers over ``MedSegEnv``: flat action forms for SB3, and the batched vector env."""

from __future__ import annotations

import gymnasium as gym

from ..env import MedSegEnv
from .sb3_actions import ContinuousActions, MultiDiscreteActions
from .vector_env import MedSegVectorEnv


def make_multidiscrete(grid: int = 32, render_mode: str | None = None, **config) -> gym.Env:
    """Entry point of ``MedSeg-MultiDiscrete-v0``: ``MedSegEnv`` + ``MultiDiscreteActions``."""
    return MultiDiscreteActions(MedSegEnv(render_mode=render_mode, **config), grid=grid)


def make_continuous(render_mode: str | None = None, **config) -> gym.Env:
    """Entry point of ``MedSeg-Continuous-v0``: ``MedSegEnv`` + ``ContinuousActions``."""
    return ContinuousActions(MedSegEnv(render_mode=render_mode, **config))


__all__ = [
    "ContinuousActions",
    "MedSegVectorEnv",
    "MultiDiscreteActions",
    "make_continuous",
    "make_multidiscrete",
]

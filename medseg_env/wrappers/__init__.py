"""Wrappers over ``MedSegEnv``: flat action forms for SB3, and the batched vector env."""

from __future__ import annotations

from .sb3_actions import (
    ContinuousActions,
    MultiDiscreteActions,
    make_continuous,
    make_multidiscrete,
)
from .vector_env import MedSegVectorEnv

__all__ = [
    "ContinuousActions",
    "MedSegVectorEnv",
    "MultiDiscreteActions",
    "make_continuous",
    "make_multidiscrete",
]

"""The oracle surface: what simulated users and expert policies may read of an episode.

A learning agent sees only the observation. Oracle click simulators (RITM, IMIS) and expert
policies (oracle box, hybrid prompting) also need the ground truth and a few facts about the
episode; they read them through one typed surface, ``Oracle``, and nothing else::

    oracle = env.get_wrapper_attr("oracle")   # Gymnasium's way: works through any wrapper
    gt = oracle.ground_truth                  # (F, F) bool, read-only

``get_wrapper_attr`` returns the outermost definition, so a wrapper that changes the frame or
the prompt kinds the agent may use exposes its own ``oracle`` and every shipped policy follows
it; a wrapper that changes neither needs to do nothing.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from .actions import Action
from .segmenters.types import PromptKind, Prompts


@runtime_checkable
class Oracle(Protocol):
    """What oracle and expert policies may read; never part of the observation.

    Coordinates are pixels of the episode's square frame, of side ``F = obs_size``: the
    observation canvas, or with ``MedSegEnv(native_resolution=True)`` the sample at its own
    resolution (``F`` its longest side). Normalised action coordinates times ``F`` are frame
    pixels either way (``medseg_env.geometry``).
    """

    @property
    def ground_truth(self) -> np.ndarray:
        """The target's ``(F, F)`` bool mask (a read-only view)."""
        ...

    @property
    def current_mask(self) -> np.ndarray:
        """The episode's current ``(F, F)`` bool mask (a copy), in the ground truth's frame."""
        ...

    @property
    def prompts(self) -> Prompts:
        """The prompts the segmenter accepted so far (frame pixel coordinates)."""
        ...

    @property
    def obs_size(self) -> int:
        """``F``, the side of the square frame of ``ground_truth``, in pixels: the observation's
        ``S``, or the sample's longest side at native resolution."""
        ...

    @property
    def min_box_size(self) -> float:
        """Boxes with a side below this many frame pixels are invalid actions."""
        ...

    def supports(self, kind: PromptKind) -> bool:
        """Whether the segmenter takes this prompt kind (``"box"`` or ``"point"``)."""
        ...

    def preview(self, action: Action) -> tuple[np.ndarray, str | None]:
        """The ``(F, F)`` bool mask ``action`` would give now, and the invalid reason or None.

        Takes no turn, changes no state and draws nothing from any random generator.
        """
        ...


class EnvOracle:
    """The ``Oracle`` of a ``MedSegEnv``: a read-only view of its current episode."""

    def __init__(self, env: Any) -> None:
        # ``env`` is a ``MedSegEnv``; not imported here, as env.py imports this module
        self._env = env

    @property
    def ground_truth(self) -> np.ndarray:
        return self._env.ground_truth

    @property
    def prompts(self) -> Prompts:
        return self._env.prompts

    @property
    def obs_size(self) -> int:
        return self._env.frame_size

    @property
    def current_mask(self) -> np.ndarray:
        return self._env.current_mask

    @property
    def min_box_size(self) -> float:
        return self._env.min_box_size

    def supports(self, kind: PromptKind) -> bool:
        return self._env.supports(kind)

    def preview(self, action: Action) -> tuple[np.ndarray, str | None]:
        return self._env.preview(action)

"""``MedSegEnv``'s options: their defaults (``default_config``) and the checks of their values.

Kept apart from ``env.py`` so the env module holds the episode logic only. Every check raises
an error that names the option, the value and what was expected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np


def default_config() -> dict[str, Any]:
    """The configuration ``gym.make("MedSeg-v0")`` uses; any key can be overridden by keyword.

    - ``dataset``: a ``Dataset``, a registered name (``"demo"``, the bundled real data), or a
      path (manifest, ``.npz`` file or folder); see ``medseg_env.data.load_dataset``.
    - ``segmenter``: a ``Segmenter`` or a registered name; ``segmenter_kwargs`` (a mapping) go
      to its factory.
    - ``obs_size``: side ``S`` of the square observation, in pixels: an ``int`` (NumPy integers
      too), at least 16.
    - ``max_turns``: the episode is truncated after this many actions: an ``int``, at least 1.
    - ``reward``: a preset name, a term, or a weighted composition (``medseg_env.rewards``).
    - ``min_box_size``: a box narrower or lower than this many observation pixels is invalid:
      a finite real number from 0 to ``obs_size``.
    - ``prompting``: what the segmenter is given each turn, the name of a registered
      prompting rule (``medseg_env.prompting``): ``"accumulate"`` (every prompt so far, the
      previous logits on click turns), ``"medsam_agent_eval"`` and ``"medsam_agent_rl"``
      (MedSAM-Agent's evaluation and training calls), or one a plug-in registers.
    - ``target_hint``: ``True`` (the default) puts the ``hint`` key in the observation and
      ``target_hint`` in ``info``: the point where a user points to say which structure to
      segment. Without it a policy that sees only the image cannot tell which of many similar
      objects (one nucleus among dozens) the episode is about, so the task is ill-posed for
      it; ``False`` gives the observation without the key (oracle policies do not need it).
    - ``native_resolution``: ``False`` (the default): the episode lives on the canvas: the
      segmenter encodes the canvas image, and masks, the ground truth and every metric are
      ``(S, S)``. ``True``: it lives on the sample at its own resolution, as MedSAM-Agent's
      released code segments and scores it: the segmenter encodes the sample's own ``(H, W)``
      image, prompts are its pixel coordinates, and masks, the oracle's ground truth,
      previews, the reward's masks and every metric are ``(L, L)`` arrays, ``L = max(H, W)``,
      the sample unscaled at the top-left (a non-square sample is zero-padded at the
      bottom/right, where no mask lies, so the metrics are those of the ``(H, W)`` masks).
      The observation stays the ``(S, S)`` canvas (the mask and the prompts resampled onto it,
      nearest neighbour), and actions keep their normalised coordinates (``x·L`` sample
      pixels). The MedSAM-Agent text protocols turn it on (``medseg_env.text``).
    - ``sort_box_corners``: ``True`` (the default): a box action's corners are sorted, so the
      segmenter gets ``(x0, y0, x1, y1)`` with ``x0 <= x1, y0 <= y1``. ``False``: the corners
      go to the segmenter as given (the first, then the second), as MedSAM-Agent's released
      code passes the box a model wrote; ``min_box_size`` then checks the absolute sides.
    - ``hint_noise``: where the user points. ``0`` (the default): the target's innermost
      pixel. Above 0: a realistic, off-centre point drawn per episode from the env's random
      generator, the innermost pixel plus a Gaussian offset of ``hint_noise`` times the
      target's equivalent radius, kept inside the target (``medseg_env.geometry.user_point``).
      A finite real number >= 0; it needs ``target_hint=True``.

    Integers are not truncated from floats (``64.0`` is refused), and ``bool`` is no number here.
    """
    return {
        "dataset": "demo",
        "segmenter": "litemedsam_clicks",
        "segmenter_kwargs": {},
        "obs_size": 256,
        "max_turns": 10,
        "reward": "dice_gain",
        "min_box_size": 2.0,
        "prompting": "accumulate",
        "target_hint": True,
        "hint_noise": 0.0,
        "native_resolution": False,
        "sort_box_corners": True,
    }


def is_int(value: Any) -> bool:
    """A true integer: ``int`` or a NumPy integer, not ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_known_options(config: Mapping[str, Any]) -> None:
    """Unknown keywords raise ``TypeError`` worded as Python's own, for clients that retry."""
    unknown = [key for key in config if key not in default_config()]
    if unknown:
        named = " and an ".join(f"unexpected keyword argument {key!r}" for key in unknown)
        known = ", ".join(["render_mode", *sorted(default_config())])
        raise TypeError(f"MedSegEnv.__init__() got an {named}; known options: {known}")


def check_bool_option(name: str, value: Any) -> bool:
    """A ``bool`` option (NumPy's too); anything else is refused rather than read as truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"MedSegEnv option {name} must be a bool; got {value!r} ({type(value).__name__})"
        )
    return bool(value)


def check_render_mode(render_mode: Any, modes: list[str]) -> None:
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode must be None or one of {modes}; got {render_mode!r}")


def check_int_option(name: str, value: Any, minimum: int) -> int:
    """An integer option, as a Python ``int``; floats are refused rather than truncated."""
    if not is_int(value):
        raise TypeError(
            f"MedSegEnv option {name} must be an int >= {minimum}; "
            f"got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"MedSegEnv option {name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def check_min_box_size(value: Any, obs_size: int) -> float:
    """A finite real number of canvas pixels, from 0 (every box valid) to ``obs_size``."""
    expected = f"a finite real number from 0 to obs_size={obs_size}"
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"MedSegEnv option min_box_size must be {expected}; "
            f"got {value!r} ({type(value).__name__})"
        )
    size = float(value)
    # NaN fails every comparison, so a NaN minimum would turn the degenerate-box check off.
    if not (math.isfinite(size) and 0 <= size <= obs_size):
        raise ValueError(f"MedSegEnv option min_box_size must be {expected}; got {value!r}")
    return size


def check_hint_noise(value: Any, target_hint: bool) -> float:
    """The ``hint_noise`` option: a finite real number >= 0, above 0 only with a hint."""
    expected = "a finite real number >= 0 (0: the innermost pixel)"
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"MedSegEnv option hint_noise must be {expected}; got {value!r} "
            f"({type(value).__name__})"
        )
    noise = float(value)
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"MedSegEnv option hint_noise must be {expected}; got {value!r}")
    if noise > 0 and not target_hint:
        raise ValueError(
            f"MedSegEnv option hint_noise={value!r} needs target_hint=True: the noise moves "
            "the hinted point, and target_hint=False shows none"
        )
    return noise


def check_segmenter_kwargs(value: Any) -> None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(
            f"MedSegEnv option segmenter_kwargs must be a mapping of keyword names to values; "
            f"got {value!r} ({type(value).__name__})"
        )


def check_sample_index(value: Any, size: int) -> int:
    """The ``sample_index`` reset option: an integer in ``[0, size)``."""
    if not is_int(value):
        raise TypeError(
            f"reset option sample_index must be an int in [0, {size}); "
            f"got {value!r} ({type(value).__name__})"
        )
    if not 0 <= value < size:
        raise ValueError(
            f"reset option sample_index={value!r} is out of range: the dataset has {size} "
            f"sample(s), so it must be in [0, {size})"
        )
    return int(value)

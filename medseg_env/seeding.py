"""Seeds that are the same in every process: :func:`stable_int`.

The benchmark seeds each episode, and the SFT export each trajectory and its split, from a hash
of what identifies it, so that an episode's seed does not depend on which other episodes run,
in what order, or in which process.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_int(*parts: Any) -> int:
    """A 63-bit integer from the SHA-256 of ``parts`` (as JSON): the same in every process.

    Python's ``hash()`` of a string is salted per process, so it cannot seed anything that
    must be reproducible.

    Raises:
        TypeError: a part that JSON cannot hold.
    """
    digest = hashlib.sha256(json.dumps(list(parts), separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# What ``MedSegEnv.reset`` saves and restores of a Gymnasium env's generator when a reset
# fails, so a refused reset leaves the episode stream as it was.
GymRngState = tuple[Any, Any, Any]


def gym_rng_state(env: Any) -> GymRngState:
    """What ``reset`` may change of Gymnasium's generator: the object, its state, its seed."""
    rng = env._np_random
    return rng, None if rng is None else rng.bit_generator.state, env._np_random_seed


def restore_gym_rng(env: Any, saved: GymRngState) -> None:
    rng, state, seed = saved
    if rng is not None:
        rng.bit_generator.state = state
    env._np_random, env._np_random_seed = rng, seed

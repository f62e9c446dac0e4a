"""medseg-env: interactive medical image segmentation as a Gymnasium environment.

``import medseg_env`` registers:

- ``MedSeg-v0``: structured ``Dict`` actions (``medseg_env.actions``);
- ``MedSeg-MultiDiscrete-v0`` and ``MedSeg-Continuous-v0``: flat action forms for
  stable-baselines3 (``medseg_env.wrappers``);
- for these three, ``gym.make_vec(id, num_envs=N)`` builds a ``MedSegVectorEnv``
  (``medseg_env.wrappers.vector_env``): N episodes with one batched segmenter call per step;
- ``MedSeg-Text-v0``: reply text under an MLLM text protocol (``medseg_env.text``), the
  conversation as observation (``medseg_env.wrappers.text_env``).

``python -m medseg_env precompute DATASET [DATASET ...] [-s SEGMENTER[:key=value,...]]
[--cache-dir DIR] [--obs-size S]`` encodes every distinct image of the datasets once, as the
env letterboxes it, into the on-disk embedding cache (``--cache-dir``, else
``$MEDSEG_CACHE_DIR``, else ``~/.cache/medseg-env/embeddings``). A later run with
``$MEDSEG_CACHE_DIR`` set to that folder makes no encoder call on those images. It shows a
progress bar, skips images already cached (so running it again resumes after an
interruption, and redoes damaged entries), and ends with the images encoded and skipped, the
bytes written and the wall time; see ``medseg_env.precompute``. ``python -m medseg_env``
alone (or ``demo``) plays a few oracle-box episodes.
"""

from importlib.metadata import PackageNotFoundError, version

from gymnasium.envs.registration import register
from gymnasium.envs.registration import registry as gym_registry

from . import actions, geometry
from .env import MedSegEnv, default_config
from .oracle import Oracle
from .registry import Registry, UnknownNameError
from .rewards import Reward, StepContext, register_reward_preset, register_reward_term

try:
    __version__ = version("medseg-env")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_ENVS = {
    "MedSeg-v0": "medseg_env.env:MedSegEnv",
    "MedSeg-MultiDiscrete-v0": "medseg_env.wrappers:make_multidiscrete",
    "MedSeg-Continuous-v0": "medseg_env.wrappers:make_continuous",
    "MedSeg-Text-v0": "medseg_env.wrappers.text_env:make_text_env",
}
# gym.make_vec(id, num_envs=N) builds these (batched segmenter calls); "sync" still works.
_VECTOR_ENVS = {
    "MedSeg-v0": "medseg_env.wrappers.vector_env:MedSegVectorEnv",
    "MedSeg-MultiDiscrete-v0": "medseg_env.wrappers.vector_env:make_vector_multidiscrete",
    "MedSeg-Continuous-v0": "medseg_env.wrappers.vector_env:make_vector_continuous",
}
for _id, _entry in _ENVS.items():
    if _id not in gym_registry:
        register(
            id=_id,
            entry_point=_entry,
            vector_entry_point=_VECTOR_ENVS.get(_id),
            max_episode_steps=None,
        )

ENV_IDS = tuple(_ENVS)

__all__ = [
    "ENV_IDS",
    "MedSegEnv",
    "Oracle",
    "Registry",
    "Reward",
    "StepContext",
    "UnknownNameError",
    "actions",
    "default_config",
    "geometry",
    "register_reward_preset",
    "register_reward_term",
]

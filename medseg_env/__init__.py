"""medseg-env: interactive medical image segmentation as a Gymnasium environment.

``import medseg_env`` registers:

- ``MedSeg-v0``: structured ``Dict`` actions (``medseg_env.actions``);
- ``MedSeg-MultiDiscrete-v0`` and ``MedSeg-Continuous-v0``: flat action forms for
  stable-baselines3 (``medseg_env.wrappers``).
"""

from gymnasium.envs.registration import register, registry

from . import actions
from .env import MedSegEnv, default_config
from .rewards import Reward, StepContext, register_reward_term

__version__ = "0.1.0"

_ENVS = {
    "MedSeg-v0": "medseg_env.env:MedSegEnv",
    "MedSeg-MultiDiscrete-v0": "medseg_env.wrappers:make_multidiscrete",
    "MedSeg-Continuous-v0": "medseg_env.wrappers:make_continuous",
}
for _id, _entry in _ENVS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry, max_episode_steps=None)

ENV_IDS = tuple(_ENVS)

__all__ = [
    "ENV_IDS",
    "MedSegEnv",
    "Reward",
    "StepContext",
    "actions",
    "default_config",
    "register_reward_term",
]

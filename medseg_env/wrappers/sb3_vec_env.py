"""``SB3VecEnv``: a Gymnasium vector env as stable-baselines3's ``VecEnv``.

Importing this module imports stable-baselines3; ``medseg_env.wrappers.vector_env.SB3VecEnv``
does so only on first use, so medseg-env does not need SB3 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)


class SB3VecEnv(VecEnv):
    """A Gymnasium vector env (``MedSegVectorEnv``, or any with ``reset_mask``) as SB3's VecEnv.

    Gymnasium's vector envs return infos as a dict of arrays and reset an ended sub-env on
    the next step; SB3 wants a list of info dicts and the reset in the same step. So, each
    ``step_wait``: the ended sub-envs' last observations go to
    ``infos[i]["terminal_observation"]`` (and ``infos[i]["TimeLimit.truncated"]`` says a
    truncation), and those sub-envs are reset at once, with
    ``venv.reset(options={"reset_mask": ended})`` (no seed: each sub-env's own generator, as
    SB3's ``DummyVecEnv`` resets), whose observations the step returns and whose infos go to
    ``reset_infos``. Rewards are ``float32``, as SB3's ``DummyVecEnv`` gives them.

    Seeding: ``seed(s)`` (SB3's), then ``reset()``, seeds sub-env ``i`` with ``s + i``, like the
    vector env's ``reset(seed=s)``. ``set_options`` gives the next ``reset()`` its options.

    Args:
        venv: a Gymnasium vector env in ``NEXT_STEP`` or ``DISABLED`` autoreset mode whose
            ``reset`` takes ``options["reset_mask"]`` (``MedSegVectorEnv``,
            ``SyncVectorEnv``, ``AsyncVectorEnv``). SB3 takes flat action spaces only, so build
            it from ``MedSeg-MultiDiscrete-v0`` or ``MedSeg-Continuous-v0``.
    """

    def __init__(self, venv: VectorEnv) -> None:
        mode = venv.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED):
            raise ValueError(
                f"SB3VecEnv resets ended sub-envs itself, so the vector env's autoreset_mode must "
                f"be NEXT_STEP or DISABLED; got {mode}"
            )
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    # ----------------------------------------------------------------- SB3 VecEnv API
    def reset(self) -> VecEnvObs:
        # Gymnasium's vector envs take a list of seeds, one per sub-env (typed as an int only).
        seeds = cast(Any, list(self._seeds))
        options = self._options
        if all(option == options[0] for option in options):
            obs, infos = self.venv.reset(seed=seeds, options=dict(options[0]) or None)
            self.reset_infos = [_info_at(infos, i) for i in range(self.num_envs)]
        else:  # per-env options: one sub-env at a time
            for i in range(self.num_envs):
                mask = np.arange(self.num_envs) == i
                obs, infos = self.venv.reset(seed=seeds, options={**options[i], "reset_mask": mask})
                self.reset_infos[i] = _info_at(infos, i)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async() before step_wait()")
        obs, rewards, terminated, truncated, vector_infos = self.venv.step(self._actions)
        self._actions = None
        dones = np.logical_or(terminated, truncated)
        infos = [_info_at(vector_infos, i) for i in range(self.num_envs)]
        for i in range(self.num_envs):
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        if dones.any():
            ended = [int(i) for i in np.flatnonzero(dones)]
            for i in ended:
                infos[i]["terminal_observation"] = _obs_at(obs, i)
            reset_obs, reset_infos = self.venv.reset(options={"reset_mask": dones})
            for i in ended:
                _set_obs_at(obs, i, reset_obs)
                self.reset_infos[i] = _info_at(reset_infos, i)
        return obs, np.asarray(rewards, np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [env.get_wrapper_attr(attr_name) for env in self._targets(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for env in self._targets(indices):
            env.set_wrapper_attr(attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        return [
            env.get_wrapper_attr(method_name)(*method_args, **method_kwargs)
            for env in self._targets(indices)
        ]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [is_wrapped(env, wrapper_class) for env in self._targets(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render() if self.render_mode == "rgb_array" else None
        if frames is None:
            return [None] * self.num_envs
        return [cast(np.ndarray | None, frame) for frame in frames]

    # ----------------------------------------------------------------- helpers
    def _targets(self, indices: VecEnvIndices) -> list[gym.Env]:
        """The sub-envs ``indices`` names; needs a vector env that holds them (``envs``)."""
        envs = getattr(self.venv, "envs", None)
        if envs is None:
            raise NotImplementedError(
                f"SB3VecEnv reaches sub-envs through venv.envs, which "
                f"{type(self.venv).__name__} does not have"
            )
        return [envs[i] for i in self._get_indices(indices)]


def _obs_at(obs: Any, i: int) -> Any:
    """Sub-env ``i``'s observation out of a batched one (a copy)."""
    if isinstance(obs, dict):
        return {key: value[i].copy() for key, value in obs.items()}
    return np.array(obs[i], copy=True)


def _set_obs_at(obs: Any, i: int, source: Any) -> None:
    if isinstance(obs, dict):
        for key, value in obs.items():
            value[i] = source[key][i]
    else:
        obs[i] = source[i]


def _info_at(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """Sub-env ``i``'s info dict out of Gymnasium's vector form (``key`` + ``_key`` mask)."""
    out: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        present = infos.get(f"_{key}")
        if present is not None and not present[i]:
            continue
        if isinstance(value, dict):
            out[key] = _info_at(value, i)
        else:
            item = value[i]
            out[key] = item.item() if isinstance(item, np.generic) else item
    return out


__all__ = ["SB3VecEnv"]

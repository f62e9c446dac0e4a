"""``MedSegVectorEnv``: N MedSeg episodes stepped together, with one batched segmenter call.

``gym.make_vec("MedSeg-v0", num_envs=N)`` (and the same for ``MedSeg-MultiDiscrete-v0`` and
``MedSeg-Continuous-v0``) builds one through Gymnasium's ``vector_entry_point``;
``vectorization_mode="sync"`` still gives Gymnasium's ``SyncVectorEnv`` of single envs.

Each step runs in three phases: every sub-env plans its turn (``MedSegEnv.plan_step``: the
action is translated by the sub-env's action wrapper, checked, and turned into a segmenter
request, or none for a stop or an invalid action), the shared segmenter decodes all requests
in one ``Segmenter.predict_batch``, and every sub-env commits its turn
(``MedSegEnv.commit_step``). Nothing changes before the segmenter has answered, so an action
outside the space or a segmenter error leaves every sub-env as it was.

``SB3VecEnv`` (in ``medseg_env.wrappers.sb3_vec_env``, imported from here on first use, so
that stable-baselines3 stays optional) adapts any Gymnasium vector env to SB3's ``VecEnv``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from ..env import MedSegEnv, Observation, StepPlan
from ..segmenters import Prediction, PredictRequest, Segmenter
from .sb3_actions import make_continuous, make_multidiscrete

if TYPE_CHECKING:
    from .sb3_vec_env import SB3VecEnv

BATCH_OPTIONS = ("auto", True, False)
"""The values of the ``batch`` option of :class:`MedSegVectorEnv`."""

EnvFactory = Callable[..., gym.Env]
"""Builds one sub-env from ``render_mode=`` and the ``MedSegEnv`` options, by keyword."""


def batch_by_default(segmenter: Segmenter) -> bool:
    """What ``batch="auto"`` picks: batch when the segmenter runs on an accelerator.

    Batched decoding pays on a GPU, where one call of B items costs little more than one item;
    on a CPU the work per item is the same either way, and for some backends a batch is slower
    per item (larger matrices fall out of cache), so ``"auto"`` calls ``predict`` once per
    request there. A backend without a batched ``predict_batch`` gains nothing from batching.
    """
    if type(segmenter).predict_batch is Segmenter.predict_batch:
        return False
    device = getattr(segmenter, "device", None)
    return isinstance(device, torch.device) and device.type != "cpu"


class MedSegVectorEnv(VectorEnv):
    """``num_envs`` MedSeg episodes stepped together, with one segmenter call per step.

    The sub-envs share one segmenter instance (so its embedding cache too) and one dataset.
    Each step plans every sub-env's turn, decodes the turns that need the model in one
    ``Segmenter.predict_batch`` (stops and invalid actions never reach the model), and then
    commits each sub-env's turn, so every sub-env's episode equals that of a single
    ``MedSegEnv`` given the same seed and actions (masks identical, or with a batching
    backend within its documented tolerance: ``SamFamilySegmenter.predict_batch``).

    ## Spaces

    ``single_observation_space`` and ``single_action_space`` are a sub-env's;
    ``observation_space`` and ``action_space`` are batched with Gymnasium's ``batch_space``
    (a ``Dict`` of arrays with a leading ``num_envs`` axis). Infos come in Gymnasium's vector
    form: a dict of arrays with a ``_key`` mask per key, as ``SyncVectorEnv`` gives them.

    ## Autoreset

    ``autoreset_mode`` (``metadata["autoreset_mode"]``) is one of Gymnasium's:

    - ``NEXT_STEP`` (the default): the step after a sub-env's episode ended resets it (with
      its own generator, no seed) and returns its reset observation and info, reward 0,
      ``terminated`` and ``truncated`` False; that sub-env's action is ignored.
    - ``SAME_STEP``: a sub-env whose episode ends is reset in the same step; the step returns
      the reset observation, and ``infos["final_obs"]`` / ``infos["final_info"]`` hold the
      last ones.
    - ``DISABLED``: never resets; stepping an ended sub-env raises (reset it with
      ``reset(options={"reset_mask": mask})``).

    ## Seeding

    ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (a list seeds each sub-env with its
    own entry, None leaves it random), as ``SyncVectorEnv`` does, so sub-env ``i`` replays a
    single env reset with seed ``s + i``. Other reset options go to every sub-env reset, and
    ``options={"reset_mask": mask}`` (a bool array of shape ``(num_envs,)``) resets only the
    sub-envs it marks.

    ## Arguments

    - ``num_envs``: the number of sub-envs, at least 1.
    - ``batch``: ``True`` decodes each step's requests in one ``predict_batch`` call;
      ``False`` calls ``predict`` once per request (still one env step for all sub-envs);
      ``"auto"`` (the default) batches when the segmenter runs on an accelerator and has a
      batched ``predict_batch``, and loops on a CPU (:func:`batch_by_default`).
    - ``autoreset_mode``: see above.
    - ``env_fn``: builds one sub-env from ``render_mode=`` and the options, by keyword: a
      ``MedSegEnv`` (the default) under any number of ``gym.ActionWrapper``s. Other wrappers
      would change what the split step returns, so they are refused; use
      ``vectorization_mode="sync"`` for them.
    - ``render_mode`` and the ``MedSegEnv`` options (``medseg_env.default_config``), by
      keyword. The first sub-env loads the dataset and builds the segmenter; the others get
      those very objects.
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        batch: bool | str = "auto",
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        env_fn: EnvFactory = MedSegEnv,
        render_mode: str | None = None,
        **config: Any,
    ) -> None:
        if not isinstance(num_envs, int | np.integer) or isinstance(num_envs, bool):
            raise TypeError(f"num_envs must be an int >= 1; got {num_envs!r}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1; got {num_envs!r}")
        if not (isinstance(batch, bool) or (isinstance(batch, str) and batch == "auto")):
            raise ValueError(f"batch must be one of {list(BATCH_OPTIONS)}; got {batch!r}")
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.num_envs = int(num_envs)

        first = env_fn(render_mode=render_mode, **config)
        first_base = _base_env(first)
        self.segmenter: Segmenter = first_base.segmenter
        shared = {
            **config,
            "dataset": first_base.dataset,
            "segmenter": self.segmenter,
            "segmenter_kwargs": {},
        }
        self.envs: list[gym.Env] = [first] + [
            env_fn(render_mode=render_mode, **shared) for _ in range(self.num_envs - 1)
        ]
        self._bases = [_base_env(env) for env in self.envs]
        self.batch = batch
        self.batching = batch_by_default(self.segmenter) if batch == "auto" else bool(batch)

        self.metadata = {**first.metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = first.render_mode
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        for env in self.envs[1:]:
            if env.observation_space != self.single_observation_space:
                raise RuntimeError("the sub-envs' observation spaces differ")
            if env.action_space != self.single_action_space:
                raise RuntimeError("the sub-envs' action spaces differ")
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        self._obs: list[Observation | None] = [None] * self.num_envs
        self._autoreset = np.zeros(self.num_envs, np.bool_)

    # ----------------------------------------------------------------- gym vector API
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every sub-env (or those ``options["reset_mask"]`` marks); see the class doc."""
        seeds = self._seeds(seed)
        mask = np.ones(self.num_envs, np.bool_)
        if options is not None and "reset_mask" in options:
            options = dict(options)
            mask = _check_reset_mask(options.pop("reset_mask"), self.num_envs)
            if any(self._obs[i] is None for i in np.flatnonzero(~mask)):
                raise RuntimeError("reset every sub-env once before a reset with a reset_mask")
        infos: dict[str, Any] = {}
        for i in np.flatnonzero(mask):
            self._obs[i], info = self.envs[i].reset(seed=seeds[i], options=options)
            self._autoreset[i] = False
            infos = self._add_info(infos, info, int(i))
        return self._batched_obs(), infos

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-env, with one segmenter call for all; see the class doc."""
        if any(obs is None for obs in self._obs):
            raise RuntimeError("call reset() before step()")
        per_env = list(iterate(self.action_space, actions))
        if len(per_env) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions; got {len(per_env)}")
        resets = self._autoreset.copy() if self.autoreset_mode == AutoresetMode.NEXT_STEP else None
        plans: dict[int, StepPlan] = {}
        for i, action in enumerate(per_env):
            if resets is not None and resets[i]:
                continue
            plans[i] = self._bases[i].plan_step(_to_base_action(self.envs[i], action))
        asking = [i for i, plan in plans.items() if plan.request is not None]
        predictions = self._predict([plans[i].request for i in asking])
        answers: dict[int, Prediction] = dict(zip(asking, predictions, strict=True))

        rewards = np.zeros(self.num_envs, np.float64)
        terminations = np.zeros(self.num_envs, np.bool_)
        truncations = np.zeros(self.num_envs, np.bool_)
        infos: dict[str, Any] = {}
        for i in range(self.num_envs):
            if i not in plans:  # NEXT_STEP: the episode ended last step
                self._obs[i], info = self.envs[i].reset()
            else:
                obs, reward, terminated, truncated, info = self._bases[i].commit_step(
                    plans[i], answers.get(i)
                )
                self._obs[i] = obs
                rewards[i], terminations[i], truncations[i] = reward, terminated, truncated
                if self.autoreset_mode == AutoresetMode.SAME_STEP and (terminated or truncated):
                    final = {"final_obs": obs, "final_info": info}
                    infos = self._add_info(infos, final, i)
                    self._obs[i], info = self.envs[i].reset()
            infos = self._add_info(infos, info, i)
        self._autoreset = terminations | truncations
        return self._batched_obs(), rewards, terminations, truncations, infos

    def render(self) -> tuple[Any, ...]:
        """Every sub-env's ``render()``."""
        return tuple(env.render() for env in self.envs)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call method ``name`` of every sub-env (its value, if it is no method)."""
        results = []
        for env in self.envs:
            attr = env.get_wrapper_attr(name)
            results.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(results)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Attribute ``name`` of every sub-env, through its wrappers."""
        return tuple(env.get_wrapper_attr(name) for env in self.envs)

    def set_attr(self, name: str, values: Any) -> None:
        """Set attribute ``name`` of each sub-env: a value each (list or tuple), or one for all."""
        if not isinstance(values, list | tuple):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} values; got {len(values)}")
        for env, value in zip(self.envs, values, strict=True):
            env.set_wrapper_attr(name, value)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()

    # ----------------------------------------------------------------- helpers
    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)  # type: ignore[arg-type]
        if len(seeds) != self.num_envs:
            raise ValueError(
                f"seed must be None, an int or a list of num_envs={self.num_envs} seeds; "
                f"got {len(seeds)} seeds"
            )
        return seeds

    def _predict(self, requests: list[PredictRequest | None]) -> list[Prediction]:
        """The segmenter's answers: one ``predict_batch`` call, or ``predict`` per request."""
        asked = [request for request in requests if request is not None]
        if not asked:
            return []
        if not self.batching:
            return [self.segmenter.predict_request(request) for request in asked]
        predictions = self.segmenter.predict_batch(asked)
        if len(predictions) != len(asked):
            raise RuntimeError(
                f"{type(self.segmenter).__name__}.predict_batch returned {len(predictions)} "
                f"predictions for {len(asked)} requests"
            )
        return predictions

    def _batched_obs(self) -> dict[str, np.ndarray]:
        """The sub-envs' observations, stacked into fresh arrays."""
        space = self.single_observation_space
        out = create_empty_array(space, self.num_envs, fn=np.empty)
        return cast(dict[str, np.ndarray], concatenate(space, self._obs, cast(Any, out)))


def _base_env(env: gym.Env) -> MedSegEnv:
    """The ``MedSegEnv`` under ``env``'s action wrappers; refuses any other wrapper."""
    inner: Any = env
    while isinstance(inner, gym.Wrapper):
        if not isinstance(inner, gym.ActionWrapper):
            raise TypeError(
                f"MedSegVectorEnv steps its sub-envs in two phases, which only action wrappers "
                f"can take part in; got {type(inner).__name__}. Wrap the vector env instead, "
                f"or use gym.make_vec(..., vectorization_mode='sync')"
            )
        inner = inner.env
    if not isinstance(inner, MedSegEnv):
        raise TypeError(
            f"env_fn must build a MedSegEnv (wrapped or not); got {type(inner).__name__}"
        )
    return inner


def _to_base_action(env: gym.Env, action: Any) -> Any:
    """``action`` translated by ``env``'s action wrappers, outermost first, as ``step`` would."""
    inner: Any = env
    while isinstance(inner, gym.ActionWrapper):
        action = inner.action(action)
        inner = inner.env
    return action


def _check_reset_mask(mask: Any, num_envs: int) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (num_envs,):
        raise ValueError(
            f"options['reset_mask'] must be a bool numpy array of shape ({num_envs},); got {mask!r}"
        )
    if not mask.any():
        raise ValueError("options['reset_mask'] marks no sub-env; mark at least one")
    return mask


# --------------------------------------------------------------------- vector entry points
def make_vector_multidiscrete(num_envs: int = 1, grid: int = 32, **kwargs: Any) -> MedSegVectorEnv:
    """``vector_entry_point`` of ``MedSeg-MultiDiscrete-v0``: sub-envs of ``make_multidiscrete``."""
    build = functools.partial(make_multidiscrete, grid=grid)
    return MedSegVectorEnv(num_envs, env_fn=build, **kwargs)


def make_vector_continuous(num_envs: int = 1, **kwargs: Any) -> MedSegVectorEnv:
    """``vector_entry_point`` of ``MedSeg-Continuous-v0``: sub-envs of ``make_continuous``."""
    return MedSegVectorEnv(num_envs, env_fn=make_continuous, **kwargs)


def __getattr__(name: str) -> Any:
    """``SB3VecEnv`` on first use: stable-baselines3 is imported only then."""
    if name == "SB3VecEnv":
        from .sb3_vec_env import SB3VecEnv

        return SB3VecEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BATCH_OPTIONS",
    "MedSegVectorEnv",
    "SB3VecEnv",
    "batch_by_default",
    "make_vector_continuous",
    "make_vector_multidiscrete",
]

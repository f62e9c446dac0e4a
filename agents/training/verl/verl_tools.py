"""verl 0.9.1 tools on ``MedSeg-Text-v0``: MedSAM-Agent's add_bbox, add_point, stop_action.

verl's tool contract (``verl/tools/base_tool.py``, 0.9.1): a tool is built once per agent-loop
worker from the tool config YAML (``class_name``, ``config``, ``tool_schema``); per trajectory
the agent loop calls ``create(instance_id, create_kwargs=...)``, then ``execute(instance_id,
parameters, **kwargs) -> (ToolResponse, step reward, metrics)`` for each call, ``calc_reward``
and ``release``. The ``create_kwargs`` come from the dataset row's
``extra_info.tools_kwargs[tool name]`` (``medseg_agents.training.verl.verl_data`` writes them).

Here one episode of ``MedSeg-Text-v0`` (a ``MedSegSession``, the framework-neutral
``medseg_env.text.tool_session.ToolSession`` over the episode's text env) backs a trajectory,
shared by the three tools: it lives in a process-wide table keyed by the instance id, so the
three tool objects see the same env. ``create`` registers the episode from its ``create_kwargs``
(``EpisodeSpec``: dataset, sample index or id, seed, protocol, segmenter, reward, env options);
the env is built and reset on first use (the segmenter and dataset are loaded once per process
and shared). ``release`` frees it.

**One path.** ``execute`` renders the call as the reply text Qwen's template writes
(``ToolSession.call``, ``medseg_env.text.hermes``), or takes the model's whole reply when the
agent loop passes it (``reply=``, ``ToolSession.reply``), and sends it to
``MedSegTextEnv.step``: the
protocol's parser checks the arguments (a malformed call takes the env's invalid-action path,
``MedSegEnv.reject``), the protocol's rules decide what a malformed reply or the last turn does,
and the env computes the reward (``medsam_agent`` preset by default). Nothing here re-implements
parsing, coordinates or reward.

The ``ToolResponse`` carries the overlay the model sees next (the PIL image of the env's next
user turn: the new mask tinted green on the protocol's view) and, as text, the protocol's
later-turn text; once the episode is over, the final overlay and a short end note (no image when
the last reply gave no action). The step reward is the env's; ``calc_reward`` returns the sum of
the env's rewards so far, which for ``medsam_agent`` is 0 until the episode ends and then the
episode reward.

**verl's own ``ToolAgentLoop``** (agent ``tool_agent``) creates and releases an instance around
*every* call. There the session lives on the trajectory's ``AgentData`` (attribute
``medseg_session``, which ``execute`` reads from its ``agent_data`` keyword), so one env serves
the whole trajectory and goes away with it. ``medseg_agents.training.verl.verl_agent_loop`` (agent
``medseg_agent``) is MedSAM-Agent's loop and creates one instance per trajectory instead.

Importing this module needs verl (``scripts/verl_env.sh``); ``import medseg_agents`` does not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast
from uuid import uuid4

from medseg_env.data import Dataset
from medseg_env.env import MedSegEnv
from medseg_env.text import TOOL_NAMES
from medseg_env.text.hermes import render_call as render_call  # re-exported for callers
from medseg_env.text.medsam_agent import TOOLS
from medseg_env.text.tool_session import EPISODE_OVER_TEXT, ToolResult, ToolSession
from medseg_env.wrappers.text_env import MedSegTextEnv, make_text_env

from ..envs import with_shared_segmenter

try:
    from verl.tools.base_tool import BaseTool  # type: ignore[import-not-found]
    from verl.tools.schemas import (  # type: ignore[import-not-found]
        OpenAIFunctionToolSchema,
        ToolResponse,
    )
except ImportError as err:  # pragma: no cover - exercised only without verl
    raise ImportError(
        "medseg_agents.training.verl.verl_tools needs verl 0.9.1; build the overlay with "
        "`bash scripts/verl_env.sh` and run with PYTHONPATH=.verl-env"
    ) from err

logger = logging.getLogger(__name__)

SESSION_ATTR = "medseg_session"
"""The ``AgentData`` attribute that holds a trajectory's session under verl's ``tool_agent``."""

SPEC_KEYS = (
    "dataset",
    "sample_index",
    "sample_id",
    "seed",
    "protocol",
    "segmenter",
    "reward",
    "env_options",
)


# ---------------------------------------------------------------------- the episode
@dataclass(frozen=True)
class EpisodeSpec:
    """Which episode a trajectory plays: what ``create_kwargs`` hold (all JSON values).

    ``env_options``: more ``MedSeg-v0`` options (``obs_size``, ``segmenter_kwargs``...), a
    mapping or its JSON text (a parquet column keeps one schema that way).
    """

    dataset: str = "demo"
    sample_index: int | None = None
    sample_id: str | None = None
    seed: int | None = None
    protocol: str = "medsam_agent_rl"
    segmenter: str = "litemedsam_clicks"
    reward: str = "medsam_agent"
    env_options: str = "{}"

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> EpisodeSpec:
        """The spec in ``kwargs``; ``None`` values take the defaults, unknown keys raise."""
        unknown = sorted(set(kwargs) - set(SPEC_KEYS))
        if unknown:
            raise TypeError(f"unknown episode keys {unknown}; known: {list(SPEC_KEYS)}")
        given = {k: v for k, v in kwargs.items() if v is not None}
        options = given.get("env_options", "{}")
        if isinstance(options, Mapping):
            options = json.dumps(dict(options), sort_keys=True)
        if not isinstance(options, str) or not isinstance(json.loads(options), dict):
            raise TypeError(f"env_options must be a mapping or its JSON text; got {options!r}")
        given["env_options"] = options
        for key in ("sample_index", "seed"):
            if key in given:
                value = given[key]
                if isinstance(value, bool) or int(value) != value:
                    raise TypeError(f"{key} must be an int; got {value!r}")
                given[key] = int(value)
        for key in ("dataset", "sample_id", "protocol", "segmenter", "reward"):
            if key in given and not isinstance(given[key], str):
                raise TypeError(f"{key} must be a str; got {given[key]!r}")
        return cls(**given)

    def to_kwargs(self) -> dict[str, Any]:
        """The ``create_kwargs`` of this spec (what ``from_kwargs`` reads back)."""
        return asdict(self)

    def options(self) -> dict[str, Any]:
        return dict(json.loads(self.env_options))

    def reset_options(self) -> dict[str, Any] | None:
        chosen = {"sample_index": self.sample_index, "sample_id": self.sample_id}
        chosen = {k: v for k, v in chosen.items() if v is not None}
        return chosen or None


_DATASETS: dict[str, Dataset] = {}
"""Loaded datasets, by name, shared by every session of the process."""


def open_text_env(spec: EpisodeSpec) -> MedSegTextEnv:
    """The text env of ``spec`` (PIL images), sharing the process's dataset and segmenter."""
    options = with_shared_segmenter({**spec.options(), "segmenter": spec.segmenter})
    options["dataset"] = _DATASETS.get(spec.dataset, spec.dataset)
    env = make_text_env(spec.protocol, images="pil", reward=spec.reward, **options)
    _DATASETS.setdefault(spec.dataset, base_env(env).dataset)
    return env


def base_env(env: MedSegTextEnv) -> MedSegEnv:
    """The ``MedSegEnv`` under a text env."""
    return cast(MedSegEnv, env.unwrapped)


class MedSegSession(ToolSession):
    """One ``MedSeg-Text-v0`` episode of one trajectory: a ``ToolSession`` over ``spec``'s env.

    The env is built (sharing the process's dataset and segmenter) and reset to the spec's
    episode when the session is made. ``reward`` is ``episode_return``; ``env`` the text env.
    """

    def __init__(self, spec: EpisodeSpec) -> None:
        super().__init__(open_text_env(spec))
        self.spec = spec
        self.reset(seed=spec.seed, options=spec.reset_options())

    @property
    def env(self) -> MedSegTextEnv:
        return self.text_env

    @property
    def reward(self) -> float:
        return float(self.episode_return)


# ---------------------------------------------------------------------- the instance table
@dataclass
class _Instance:
    spec: EpisodeSpec
    session: MedSegSession | None = None

    def open(self) -> MedSegSession:
        if self.session is None:
            self.session = MedSegSession(self.spec)
        return self.session


_INSTANCES: dict[str, _Instance] = {}


def register_episode(instance_id: str, spec: EpisodeSpec) -> None:
    """Make ``instance_id`` name the episode ``spec`` (again: the same spec, a no-op)."""
    held = _INSTANCES.get(instance_id)
    if held is not None:
        if held.spec != spec:
            raise ValueError(f"instance {instance_id!r} already plays another episode")
        return
    _INSTANCES[instance_id] = _Instance(spec)


def get_session(instance_id: str, agent_data: Any = None) -> MedSegSession:
    """The session of a trajectory: the one on ``agent_data`` if any, else the instance's.

    Raises ``KeyError`` for an instance that was never created (or already released).
    """
    if agent_data is not None:
        held = getattr(agent_data, SESSION_ATTR, None)
        if isinstance(held, MedSegSession):
            return held
    instance = _INSTANCES.get(instance_id)
    if instance is None:
        raise KeyError(f"no MedSeg episode for instance {instance_id!r}: call create() first")
    session = instance.open()
    if agent_data is not None:  # verl's tool_agent: the trajectory keeps it from now on
        setattr(agent_data, SESSION_ATTR, session)
        instance.session = None
    return session


def release_episode(instance_id: str) -> None:
    """Forget ``instance_id`` and close the env it owns (a no-op for an unknown id)."""
    instance = _INSTANCES.pop(instance_id, None)
    if instance is not None and instance.session is not None:
        instance.session.env.close()


def live_instances() -> list[str]:
    """The instance ids created and not released (for tests and leak checks)."""
    return list(_INSTANCES)


def tool_schema(name: str) -> dict[str, Any]:
    """The released ``tools_json_v2`` schema of ``name`` (what the system prompt lists)."""
    for tool in TOOLS:
        if tool["function"]["name"] == name:
            return json.loads(json.dumps(tool))
    raise KeyError(f"unknown tool {name!r}; known: {list(TOOL_NAMES)}")


def step_response(result: ToolResult) -> ToolResponse:
    """What a turn shows: the next overlay + the protocol's later-turn text, or the end."""
    if result.image is None:  # verl's schema refuses image=None
        return ToolResponse(text=result.text)
    return ToolResponse(image=[result.image], text=result.text)


def step_metrics(outcome: ToolResult) -> dict[str, Any]:
    info = outcome.info
    parsed = info.get("parsed") or {}
    return {
        "reward": outcome.reward,
        "dice": float(info.get("dice", 0.0)),
        "iou": float(info.get("iou", 0.0)),
        "turn": int(info.get("turn", 0)),
        "executed": bool(info.get("executed", False)),
        "format_error": info.get("format_error"),
        "call": (parsed.get("call") or {}).get("name"),
        "terminated": outcome.terminated,
        "truncated": outcome.truncated,
    }


# ---------------------------------------------------------------------- the tools
class MedSegTool(BaseTool):
    """A MedSAM-Agent tool on a ``MedSeg-Text-v0`` episode (subclasses set ``tool_name``).

    ``config`` (the tool YAML's ``config``): ``type: native`` (verl's) and optionally
    ``episode`` defaults merged under each trajectory's ``create_kwargs``. With no
    ``tool_schema`` in the YAML the released schema is used.
    """

    tool_name = ""

    def __init__(self, config: dict[str, Any], tool_schema: Any = None) -> None:
        super().__init__(config or {}, tool_schema)
        if self.name != self.tool_name:
            raise ValueError(f"{type(self).__name__} is {self.tool_name!r}, not {self.name!r}")
        self.episode_defaults = dict((config or {}).get("episode") or {})

    def get_openai_tool_schema(self) -> Any:
        return OpenAIFunctionToolSchema.model_validate(tool_schema(self.tool_name))

    async def create(
        self, instance_id: str | None = None, **kwargs: Any
    ) -> tuple[str, ToolResponse]:
        """Register the trajectory's episode from ``create_kwargs`` (or plain keywords)."""
        if instance_id is None:
            instance_id = str(uuid4())
        given = dict(kwargs.pop("create_kwargs", None) or {})
        given.update({k: v for k, v in kwargs.items() if k in SPEC_KEYS})
        spec = EpisodeSpec.from_kwargs({**self.episode_defaults, **given})
        register_episode(instance_id, spec)
        return instance_id, ToolResponse()

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict[str, Any]]:
        """One turn: this call (or the whole ``reply=``) through ``MedSegTextEnv.step``."""
        session = get_session(instance_id, kwargs.get("agent_data"))
        if session.over:
            return ToolResponse(text=EPISODE_OVER_TEXT), 0.0, {"episode_over": True}
        reply = kwargs.get("reply")
        if isinstance(reply, str):
            outcome = session.reply(reply)
        else:
            outcome = session.call(self.name, parameters)
        return step_response(outcome), outcome.reward, step_metrics(outcome)

    async def calc_reward(self, instance_id: str, **kwargs: Any) -> float:
        """The sum of the env's rewards so far (the episode reward once it is over)."""
        return float(get_session(instance_id, kwargs.get("agent_data")).reward)

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        release_episode(instance_id)


class AddBboxTool(MedSegTool):
    tool_name = "add_bbox"


class AddPointTool(MedSegTool):
    tool_name = "add_point"


class StopActionTool(MedSegTool):
    tool_name = "stop_action"


TOOL_CLASSES: dict[str, type[MedSegTool]] = {
    "add_bbox": AddBboxTool,
    "add_point": AddPointTool,
    "stop_action": StopActionTool,
}

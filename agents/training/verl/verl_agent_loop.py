"""MedSAM-Agent's multi-turn loop as a verl 0.9.1 agent loop (agent name ``medseg_agent``).

MedSAM-Agent trains with ``MedSAMIterativeAgentLoop`` (``RL-verl/recipe/medsam_agent/
medsam_iterative_agent_loop.py``), a ``ToolAgentLoop`` subclass of an older verl. This is the
same loop on verl 0.9.1's ``ToolAgentLoop`` and its Continuous Token builder, with one
``MedSeg-Text-v0`` episode per trajectory (``medseg_agents.training.verl.verl_tools``):

- the prompt is the dataset row's (system prompt + first image and text,
  ``medseg_agents.training.verl.verl_data``), rendered *without* ``tools=`` (the system prompt
  already lists the tools, as the released loop renders it: ``# tools=self.tool_schemas``);
- every generated reply goes to the env, through the tool that the protocol's parser names
  (``tool.execute(..., reply=text)``), or straight to the env when it names none: the env's
  protocol (``medsam_agent_rl``) is the single judge of what the reply does;
- the result comes back as a USER message: the overlay of the new mask and the protocol's
  later-turn text (the released loop's ``later_turn_prompt``), not a ``tool`` message;
- the episode ends when the env's does: ``stop_action`` (also as a later call of a reply), a
  reply with no usable call (malformed JSON, no call, an unknown tool, bad arguments); or at
  ``max_assistant_turns`` (5): the 5th reply is generated, handed to the env, never executed;
  or when the response budget runs out (then the env's episode is closed with its stop action);
- the reward is the env's (``reward="medsam_agent"``: MedSAM-Agent's RL reward, as its
  released ``compute_score`` computes it, from the env's reward terms), set as the
  trajectory's ``reward_score`` so verl runs no reward function; the episode's Dice, IoU,
  format flag and counts go to ``reward_extra_info`` (logged by verl).

Registered with ``@register("medseg_agent")`` for in-process use; a trainer's workers find it
through ``actor_rollout_ref.rollout.agent.agent_loop_config_path`` =
``agents/training/verl/configs/medseg_agent_loop.yaml``, and a dataset row picks it with
``agent_name: medseg_agent``.

Where this differs from the released loop (see also
``agents/training/verl/configs/medseg_grpo.yaml``):

- *Reward*: the same: the env's ``medsam_agent`` preset is the released ``medsam_reward.py``
  ``compute_score`` (the format from every reply's text, the masks the released loop keeps, at
  the sample's own resolution: ``tests/env/test_medsam_agent_reward.py`` checks it against
  the released function's scores).
- *One env, one session*: the released loop keeps one tool instance per tool name (so its
  ``add_bbox`` and ``add_point`` run separate server sessions, each chaining its own logits)
  and resizes the tool's mask itself to draw the overlay; here the three tools share the
  trajectory's env, whose ``prompting="medsam_agent_rl"`` keeps one logit chain per tool name
  (the same segmenter calls), and which draws the overlay with the protocol's image rule (the
  same 512×512 stretch, bilinear mask, α 0.5).
- *Parsing*: verl 0.9.1's Hermes parser no longer salvages a call whose JSON holds raw
  newlines, which the released fork did and the protocol still does; the env's parse decides
  (its calls reach the tools), verl's only fills the assistant message.
- *Images*: the overlay goes through the dataset's ``process_multi_modal_info`` (Qwen's
  ``smart_resize``, as the first image) and is put in the message and in ``image_data`` alike;
  the released loop re-ran ``process_vision_info`` over the whole conversation each turn.
- *Blocking*: the env steps (the segmenter on the worker's CPU or GPU) run in the event loop,
  as the released tools' synchronous HTTP calls did.
- *Mask history*: the released loop returns every turn's mask in ``extra_fields["pred_mask"]``
  for its reward function; the env keeps them, and only the scalars above are returned.

Importing this module needs verl (``scripts/verl_env.sh``); ``import medseg_agents`` does not.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

from medseg_agents.training.verl.verl_tools import (
    MedSegSession,
    MedSegTool,
    base_env,
    get_session,
    step_metrics,
)

try:
    from verl.experimental.agent_loop.agent_loop import (  # type: ignore[import-not-found]
        AgentLoopOutput,
        register,
    )
    from verl.experimental.agent_loop.tool_agent_loop import (  # type: ignore[import-not-found]
        AgentData,
        AgentState,
        ToolAgentLoop,
    )
except ImportError as err:  # pragma: no cover - exercised only without verl
    raise ImportError(
        "medseg_agents.training.verl.verl_agent_loop needs verl 0.9.1; build the overlay with "
        "`bash scripts/verl_env.sh` and run with PYTHONPATH=.verl-env"
    ) from err

logger = logging.getLogger(__name__)

AGENT_NAME = "medseg_agent"


def episode_kwargs(tools_kwargs: Any) -> dict[str, Any]:
    """The episode's ``create_kwargs`` from a row's ``tools_kwargs`` (the first tool's that has)."""
    for name in ("add_bbox", "add_point", "stop_action"):
        entry = (tools_kwargs or {}).get(name) or {}
        create = entry.get("create_kwargs")
        if create:
            return dict(create)
    raise ValueError(
        "the row's tools_kwargs name no MedSeg episode (tools_kwargs[tool]['create_kwargs']); "
        "write the rows with `python -m medseg_agents.training.verl.verl_data`"
    )


def prompt_texts(messages: list[dict[str, Any]]) -> list[str]:
    """The text of each message (images left out), to compare two renderings of a prompt."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        else:
            out.append("".join(p.get("text", "") for p in content or [] if p.get("type") == "text"))
    return out


@register(AGENT_NAME)
class MedSegAgentLoop(ToolAgentLoop):
    """MedSAM-Agent's iterative loop on a ``MedSeg-Text-v0`` episode (see the module docstring).

    One instance per trajectory (verl builds one for every sample). ``template_tools`` False:
    the chat template gets no ``tools=`` (the system prompt lists them).
    """

    template_tools = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance_id = ""
        self.session: MedSegSession | None = None
        self.turns: list[dict[str, Any]] = []  # each env turn's metrics (``step_metrics``)

    # ------------------------------------------------------------------ the episode
    def _medseg_tool(self) -> MedSegTool:
        for tool in self.tools.values():
            if isinstance(tool, MedSegTool):
                return tool
        raise ValueError(
            "the tool config has no MedSeg tool: use "
            "agents/training/verl/configs/medseg_tools.yaml "
            "(actor_rollout_ref.rollout.multi_turn.tool_config_path)"
        )

    def _tools_kwarg(self) -> list[dict[str, Any]] | None:
        return self.tool_schemas if self.template_tools else None

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        tool = self._medseg_tool()
        self.instance_id = f"medseg-{uuid4().hex}"
        create_kwargs = episode_kwargs(kwargs.get("tools_kwargs"))
        await tool.create(self.instance_id, create_kwargs=create_kwargs)
        try:
            session = self.session = get_session(self.instance_id)
            self._check_prompt(list(kwargs["raw_prompt"]), session)
            budget = base_env(session.env).max_turns
            if self.max_assistant_turns and self.max_assistant_turns != budget:
                logger.warning(
                    "multi_turn.max_assistant_turns=%s differs from the episode's %s turns",
                    self.max_assistant_turns,
                    budget,
                )
            output = await super().run(sampling_params, **kwargs)
            session.close()  # an episode the loop left open (response budget) ends here
            output.reward_score = float(session.reward)
            output.extra_fields["reward_extra_info"] = session.summary()
            return output
        finally:
            await tool.release(self.instance_id)

    @staticmethod
    def _check_prompt(raw_prompt: list[dict[str, Any]], session: MedSegSession) -> None:
        ours = prompt_texts(session.env.messages())
        theirs = prompt_texts(raw_prompt)
        if ours != theirs:
            logger.warning(
                "the row's prompt differs from the episode's first turn (%s vs %s): was the "
                "data written for another protocol or sample?",
                theirs[-1:],
                ours[-1:],
            )

    # ------------------------------------------------------------------ the states
    async def _handle_pending_state(
        self, agent_data: AgentData, sampling_params: dict[str, Any]
    ) -> AgentState:
        """The first prompt, rendered without ``tools=`` (the released loop's choice)."""
        has_media = bool(agent_data.image_data or agent_data.video_data or agent_data.audio_data)
        self._assert_mm_supported(has_media)
        mm_inputs: dict[str, Any] = {}
        agent_data.prompt_ids = await self.ct_build_initial_tokens(
            agent_data.messages,
            tools=self._tools_kwarg(),
            images=agent_data.image_data,
            videos=agent_data.video_data,
            audios=agent_data.audio_data,
            mm_inputs_out=mm_inputs,
        )
        agent_data.mm_processor_output = self.build_sglang_video_payload(
            agent_data.video_data, mm_inputs
        )
        return AgentState.GENERATING

    async def _handle_generating_state(
        self,
        agent_data: AgentData,
        sampling_params: dict[str, Any],
        ignore_termination: bool = False,
    ) -> AgentState:
        """Generate a reply (verl's), hand it to the env, go on only while the env does."""
        await super()._handle_generating_state(agent_data, sampling_params, ignore_termination)
        limit = self._limit_reached(agent_data, ignore_termination)
        reply = await self.loop.run_in_executor(
            None, lambda: self.tokenizer.decode(agent_data.response_ids, skip_special_tokens=True)
        )
        await self._env_turn(agent_data, reply)
        assert self.session is not None
        if self.session.over or limit:
            return AgentState.TERMINATED
        return AgentState.PROCESSING_TOOLS

    def _limit_reached(self, agent_data: AgentData, ignore_termination: bool) -> bool:
        """verl's own stop rules after a generation (``ToolAgentLoop``'s, in its order)."""
        if not ignore_termination and len(agent_data.response_mask) >= self.response_length:
            return True
        if self.max_assistant_turns and agent_data.assistant_turns >= self.max_assistant_turns:
            return True
        return bool(self.max_user_turns and agent_data.user_turns >= self.max_user_turns)

    async def _env_turn(self, agent_data: AgentData, reply: str) -> None:
        """One env turn for ``reply``: through the tool the protocol names, else directly."""
        session = self.session
        assert session is not None
        if session.over:
            return
        parsed = session.env.parse(reply)
        name = parsed.call.name if parsed.call is not None else None
        tool = self.tools.get(name) if name else None
        if isinstance(tool, MedSegTool):
            arguments = (parsed.to_dict()["call"] or {}).get("arguments", {})
            _, reward, metrics = await tool.execute(self.instance_id, arguments, reply=reply)
            agent_data.tool_rewards.append(reward)
        else:
            metrics = step_metrics(session.reply(reply))
        self.turns.append(metrics)

    async def _handle_processing_tools_state(self, agent_data: AgentData) -> AgentState:
        """The env's next turn (overlay + later-turn text) as a USER message."""
        assert self.session is not None
        content = self.session.user_content()
        if content is None:
            return AgentState.TERMINATED
        message: dict[str, Any] = {"role": "user", "content": content}
        images: list[Any] = []
        if self.processor is not None:
            processed = await self.process_multi_modal_info([message])
            images = list(processed.get("images") or [])
            parts = iter(images)
            message["content"] = [
                {"type": "image", "image": next(parts)} if p.get("type") == "image" else p
                for p in message["content"]
            ]
        self._assert_mm_supported(bool(images))
        previous = list(agent_data.messages)
        agent_data.messages.append(message)
        merge_result, response_mask, response_logprobs = await self.ct_merge_context_msg(
            previous,
            agent_data.messages,
            agent_data.prompt_ids,
            agent_data.response_mask,
            agent_data.response_logprobs if agent_data.response_logprobs else None,
            tools=self._tools_kwarg(),
        )
        if len(response_mask) >= self.response_length:
            return AgentState.TERMINATED
        agent_data.prompt_ids = merge_result.token_ids
        agent_data.response_mask = response_mask
        if agent_data.response_logprobs:
            agent_data.response_logprobs = response_logprobs or []
        if images:
            if agent_data.image_data is None:
                agent_data.image_data = []
            agent_data.image_data = list(agent_data.image_data) + images
        agent_data.user_turns += 1
        return AgentState.GENERATING

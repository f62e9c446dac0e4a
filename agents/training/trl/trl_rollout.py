"""MedSAM-Agent's exact rollout in TRL 1.16's GRPO, through ``rollout_func``.

``MedSegToolEnv`` (``trl_env``) fits the environment to TRL's tool loop; this module fits TRL
to MedSAM-Agent's loop instead (``RL-verl``: ``medsam_iterative_agent_loop.py``): the messages
are exactly ``MedSeg-Text-v0``'s under the protocol (its system prompt with the released tool
list, no template tool section), each new overlay comes back as a *user* message (image + the
later-turn text), the protocol's rules hold (``medsam_agent_rl``: at most 5 assistant turns,
the 5th never executed; a malformed reply, an unknown tool or a call the tool rejects ends the
episode; only the first call of a reply runs, and any ``stop_action`` in it ends the episode),
and the reward is the env's (``medsam_agent`` preset).

**Why a trainer subclass.** ``rollout_func(prompts, trainer)`` returns token ids, so the
conversation can be anything; but TRL 1.16 drops the images of a custom rollout: ``_generate``
sets ``images = None`` and ``multimodal_fields = {}`` for it, and
``_generate_and_score_completions`` builds the training forward pass's ``pixel_values`` only
from the dataset's ``images`` column and the *prompt* text (the tool path's image handling
runs only for TRL's own tool loop). The overlays' image tokens in the completion would reach
the loss without their pixels (Qwen-VL then embeds them as plain tokens): the policy scored
in training would not be the one that sampled. ``MedSAMAgentGRPOTrainer`` therefore overrides
``_generate_and_score_completions``: it calls TRL's, then puts back every rollout's images in
order (``pixel_values``, ``image_grid_thw``, ``num_images``, ``mm_token_type_ids`` over
prompt + completion), as TRL does for tool images; the rest (advantages, splitting, the loss)
is TRL's. Since TRL computes the old and reference log-probs inside that method with the
pixel-less inputs, the subclass refuses configurations that need them (``beta != 0``,
vLLM, or generation not aligned with the optimizer steps) rather than train on wrong values.
The method is private to TRL: the override was written against TRL ``TRL_WRITTEN_FOR``, and
``check_trl_override`` (run when the trainer is built) refuses a TRL whose method takes other
parameters, naming both versions; ``tests/training/test_trl_guard.py`` fails on any change of
its full signature (``WRITTEN_SIGNATURE``).
``rollout_func`` also gets only the prompts, not the dataset rows: the subclass keeps the
batch's rows so the rollout knows each row's sample and seed.

Tokens: ``ChatLayout`` grows each conversation as TRL does (the model's sampled ids, then the
template's suffix for the new user message), and ``env_mask`` marks the env's tokens, which
the loss leaves out. The per-rollout ``episode_reward``, ``format_ok`` and ``dice`` go to the
reward functions of ``rollout_reward_setup()`` as dataset-like columns.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, cast

from trl import GRPOConfig, GRPOTrainer

from medseg_env.text import Protocol, get_protocol
from medseg_env.text.tool_session import ToolSession, reset_arguments
from medseg_env.wrappers.text_env import MedSegTextEnv, make_text_env

from ..envs import with_shared_segmenter
from .tokens import ChatLayout, Turns

TRL_WRITTEN_FOR = "1.16.0"
"""The TRL release whose private ``GRPOTrainer._generate_and_score_completions`` is overridden."""

WRITTEN_SIGNATURE = (
    "(self, inputs: list[dict[str, torch.Tensor | typing.Any]]) -> "
    "dict[str, torch.Tensor | typing.Any]"
)
"""That method's signature in TRL ``TRL_WRITTEN_FOR``, as ``str(inspect.signature(...))``."""

_WRITTEN_PARAMETERS = [
    ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
]


def check_trl_override(base: type = GRPOTrainer) -> None:
    """Refuse a TRL whose private method that the trainer overrides takes other parameters.

    ``MedSAMAgentGRPOTrainer._generate_and_score_completions`` calls ``base``'s with the batch
    and edits the dict it returns. Checked: the method exists and takes ``(self, inputs)``, as
    in TRL ``TRL_WRITTEN_FOR`` (annotations may differ; the test compares those too).

    Raises:
        RuntimeError: naming the installed TRL version, the one the override was written
            for, and the signature found.
    """
    import trl

    method = getattr(base, "_generate_and_score_completions", None)
    if method is None:
        found = "no such method"
    else:
        parameters = inspect.signature(method).parameters.values()
        if [(p.name, p.kind) for p in parameters] == _WRITTEN_PARAMETERS:
            return
        found = f"_generate_and_score_completions{inspect.signature(method)}"
    raise RuntimeError(
        f"MedSAMAgentGRPOTrainer overrides TRL's private {base.__name__}."
        f"_generate_and_score_completions{WRITTEN_SIGNATURE} as TRL {TRL_WRITTEN_FOR} defines "
        f"it, but the installed TRL {trl.__version__} has {found}. Install "
        f"trl=={TRL_WRITTEN_FOR} (the `train` extra pins trl 1.16.*), or update "
        "medseg_agents.training.trl.trl_rollout for this TRL."
    )


def _column(name: str) -> Callable[..., list[float]]:
    def reward(completions: Sequence[Any], **columns: Any) -> list[float]:
        return [float(v) for v in columns[name]]

    reward.__name__ = name
    reward.__doc__ = f"The rollout's ``{name}`` (from ``MedSAMAgentGRPOTrainer``'s rollout)."
    return reward


episode_reward = _column("episode_reward")
format_ok = _column("format_ok")
final_dice = _column("dice")


def rollout_reward_setup() -> tuple[list[Any], list[float]]:
    """``(reward_funcs, reward_weights)``: the env's episode reward, format and Dice logged."""
    return [episode_reward, format_ok, final_dice], [1.0, 0.0, 0.0]


def rollout_rows(
    sample_indices: Sequence[int], *, seeds: Sequence[int] = (0,)
) -> list[dict[str, Any]]:
    """Dataset rows: the sample and seed of each episode (``prompt`` is a placeholder TRL
    requires; the rollout builds the real messages)."""
    return [
        {
            "prompt": [{"role": "user", "content": f"sample {int(i)}, seed {int(s)}"}],
            "sample_index": int(i),
            "seed": int(s),
        }
        for s in seeds
        for i in sample_indices
    ]


class MedSAMAgentGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose rollouts are MedSAM-Agent's episodes in ``MedSeg-Text-v0``.

    Args:
        *args, **kwargs: ``GRPOTrainer``'s (``model``, ``processing_class``, ``args``,
            ``train_dataset`` with ``sample_index``/``seed`` columns, ``reward_funcs``
            defaulting to ``rollout_reward_setup()``'s; not ``rollout_func``, ``tools`` or
            ``environment_factory``).
        text_env_factory: builds one text env per concurrent rollout; by default
            ``make_text_env(protocol, images="pil", reward="medsam_agent", **env_options)``
            with a shared segmenter.
        protocol: the text protocol; its history must be complete (the conversation only
            grows), as ``medsam_agent_rl``'s is.
        max_new_tokens: the most tokens of one reply (the completion as a whole stays within
            ``args.max_completion_length``; a reply cut short is malformed).
        env_options: more ``MedSeg-v0`` options for the default factory.
    """

    def __init__(
        self,
        *args: Any,
        text_env_factory: Callable[[], MedSegTextEnv] | None = None,
        protocol: str | Protocol = "medsam_agent_rl",
        max_new_tokens: int = 128,
        env_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        check_trl_override()
        for key in ("rollout_func", "tools", "environment_factory"):
            if kwargs.get(key):
                raise TypeError(f"MedSAMAgentGRPOTrainer sets its own rollout; drop {key}=")
        self.protocol = get_protocol(protocol)
        if self.protocol.history_turns is not None:
            raise ValueError(
                f"protocol {self.protocol.name!r} drops old turns; the rollout needs one that "
                "keeps the whole conversation (medsam_agent_rl)"
            )
        if "reward_funcs" not in kwargs and len(args) < 2:
            kwargs["reward_funcs"] = rollout_reward_setup()[0]
        self._text_env_factory = text_env_factory or _default_factory(
            self.protocol, env_options or {}
        )
        self._max_new_tokens = int(max_new_tokens)
        self._env_pool: list[MedSegTextEnv] = []
        self._rows: list[dict[str, Any]] = []
        kwargs["rollout_func"] = self._rollout
        super().__init__(*args, **kwargs)
        config = cast(GRPOConfig, self.args)
        aligned = config.gradient_accumulation_steps % (
            (config.steps_per_generation or 1) * config.num_iterations
        )
        if self.beta != 0.0 or self.use_vllm or aligned != 0:
            raise ValueError(
                "MedSAMAgentGRPOTrainer supports beta=0, no vLLM, and one generation per "
                "optimizer step (gradient_accumulation_steps a multiple of steps_per_generation "
                "× num_iterations): TRL computes old and reference log-probs without the "
                "rollout's images"
            )
        self._layout = ChatLayout(self.processing_class)

    # ------------------------------------------------------------------ TRL hooks
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._rows = inputs
        output = super()._generate_and_score_completions(inputs)
        return self._with_images(output, [list(x["rollout_images"]) for x in inputs])

    def _with_images(self, output: dict[str, Any], images: list[list[Any]]) -> dict[str, Any]:
        """TRL's batch with every rollout's images (prompt image first, then the overlays)."""
        import torch

        flat = [image for row in images for image in row]
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        mm = (ids == self._layout.image_pad_id).long()
        if int(mm.sum()) == 0:
            return output
        pixels = self._layout.image_inputs(flat)
        device = output["prompt_ids"].device
        output["pixel_values"] = pixels["pixel_values"].to(device)
        output["image_grid_thw"] = pixels["image_grid_thw"].to(device)
        output["num_images"] = [len(row) for row in images]
        output["mm_token_type_ids"] = mm
        return output

    # ------------------------------------------------------------------ the rollout
    def _envs(self, count: int) -> list[MedSegTextEnv]:
        while len(self._env_pool) < count:
            self._env_pool.append(self._text_env_factory())
        return self._env_pool[:count]

    def _rollout(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        rows = self._rows
        if len(rows) != len(prompts):
            raise RuntimeError("the rollout's rows do not match its prompts")
        return play_episodes(
            self.accelerator.unwrap_model(self.model),
            self._layout,
            self._envs(len(rows)),
            rows,
            max_new_tokens=self._max_new_tokens,
            max_completion_length=int(self.max_completion_length or 256),
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            top_k=int(self.top_k or 0),
        )


def _default_factory(protocol: Protocol, options: dict[str, Any]) -> Callable[[], MedSegTextEnv]:
    def factory() -> MedSegTextEnv:
        kwargs = with_shared_segmenter({"reward": "medsam_agent", **options})
        return make_text_env(protocol, images="pil", **kwargs)

    return factory


def play_episodes(
    model: Any,
    layout: ChatLayout,
    envs: Sequence[MedSegTextEnv],
    rows: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int,
    max_completion_length: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> dict[str, Any]:
    """One sampled episode per row, all in lockstep: ``rollout_func``'s output.

    Each reply goes to the text env as it is (``ToolSession.reply``); a new overlay comes back
    as the env's user message. An episode that would outgrow ``max_completion_length`` is
    closed (``ToolSession.close``: the env's stop, no format charge).
    """
    import torch

    turns: list[Turns] = []
    sessions = [ToolSession(env) for env in envs[: len(rows)]]
    for session, row in zip(sessions, rows, strict=True):
        turns.append(layout.prompt(session.reset(**reset_arguments(row))))
    active = list(range(len(rows)))

    was_training = model.training
    model.eval()
    with torch.no_grad():
        while active:
            budget = min(
                max_new_tokens,
                max(1, max_completion_length - max(len(turns[i].completion_ids) for i in active)),
            )
            replies = layout.generate(
                model,
                [turns[i] for i in active],
                max_new_tokens=budget,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
            )
            still = []
            for i, ids in zip(active, replies, strict=True):
                room = max_completion_length - len(turns[i].completion_ids)
                ids = ids[: max(room, 0)]
                layout.add_reply(turns[i], ids)
                if sessions[i].reply(layout.decode(ids)).over:
                    continue
                suffix_messages = [sessions[i].messages[-1]]
                if (
                    len(turns[i].completion_ids) + len(layout.suffix(suffix_messages)) + 8
                    > max_completion_length
                ):
                    sessions[i].close()
                    continue
                layout.add_messages(turns[i], suffix_messages)
                still.append(i)
            active = still
    model.train(was_training)
    return {
        "prompt_ids": [t.ids[: t.prompt_len] for t in turns],
        "completion_ids": [t.completion_ids for t in turns],
        "logprobs": None,
        "env_mask": [t.completion_mask for t in turns],
        "rollout_images": [list(t.images) for t in turns],
        "episode_reward": [s.episode_return for s in sessions],
        "format_ok": [float(s.format_ok) for s in sessions],
        "dice": [float(s.info.get("dice", 0.0)) for s in sessions],
    }

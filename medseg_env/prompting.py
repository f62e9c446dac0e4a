"""Prompting rules: what the segmenter is given each turn (``MedSegEnv``'s ``prompting`` option).

An episode's prompt record always keeps every accepted prompt (a new box replaces the old
one; clicks accumulate). A *prompting rule* decides which of them a turn's ``predict`` call
sees, with which previous logits, and whether the decoder returns its best of several
candidates. Protocols whose released code calls its segmenter its own way name the rule they
were scored or trained with (``medseg_env.text.Protocol.segmenter_call``); the env itself
names none.

Built in, in this order:

- ``accumulate``: every prompt so far; the previous logits on click turns, none for a new box;
  one mask.
- ``medsam_agent_eval`` (MedSAM-Agent's evaluation code): a box alone with the previous logits;
  once logits exist, the last click alone with them; before that, every click; the best of the
  decoder's 3 candidates by its own score each time.
- ``medsam_agent_rl`` (its RL tools, ``RL-verl/recipe/medsam_agent/
  medsam_iterative_agent_loop.py`` lines 142-155 and ``RL-verl/api_server/segmentation_api.py``
  lines 378-480): the new prompt alone, with the logits of the previous call *of the same
  tool*, one mask. The RL loop opens one segmentation-server session per tool name
  (``f"{episode_id}_{tool_name}"``), and each session chains its own logits: ``add_bbox``
  calls chain with ``add_bbox`` calls, ``add_point`` calls (positive or negative) with
  ``add_point`` calls, so the first click after a box gets no mask input.
- ``medsam_agent_rl_one_chain``: as ``medsam_agent_rl`` but with one logit chain across tools
  (the previous call's logits, whatever its tool): the switch for that quirk.

## A rule

A rule is a ``PromptingRule``: one object per env, built by its registered factory, that may
keep state for the episode. The env calls

- ``start_episode()`` when a reset has succeeded;
- ``request(kind, prompts, embedding=..., logits=...)`` to plan a turn (``MedSegEnv.plan_step``
  and ``MedSegEnv.preview``): it returns the ``PredictRequest`` and must change nothing, since
  a plan may be dropped (a preview, a failed prediction, a stale vector-env plan);
- ``commit(kind, request, prediction)`` once the turn is taken with that prediction (not for a
  stop, an invalid action or a rejected reply).

``logits`` is the previous accepted prediction's, the one chain the env keeps; a rule that
chains its logits differently (one chain per tool) keeps its own in ``commit``.

## Adding one

Subclass ``PromptingRule`` in your module and register its class (or any factory that
returns a fresh rule) with ``register_prompting_rule(name, factory)``, or from another package
through the ``medseg_env.prompting_rules`` entry-point group. ``MedSegEnv(prompting=name)``
then uses it. ``tests/env/test_prompting_modes.py`` shows how to check what a real segmenter is
given each turn.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from .actions import ActionKind
from .registry import Registry, UnknownNameError, callable_entries
from .segmenters.types import Embedding, Prediction, PredictRequest, Prompts

if TYPE_CHECKING:
    import torch


class PromptingRule(ABC):
    """How one env calls its segmenter each turn; may keep state for the current episode.

    Subclasses implement :meth:`request`; rules with per-episode state override
    :meth:`start_episode` and :meth:`commit` too.
    """

    def start_episode(self) -> None:  # noqa: B027 (an optional hook: most rules keep nothing)
        """A new episode has started: forget anything kept from the last one."""

    @abstractmethod
    def request(
        self,
        kind: ActionKind,
        prompts: Prompts,
        *,
        embedding: Embedding,
        logits: torch.Tensor | None,
    ) -> PredictRequest:
        """The ``predict`` call of a prompt turn. Must change nothing (plans may be dropped).

        Args:
            kind: the turn's action kind (a click or a box; never a stop).
            prompts: every accepted prompt after this action, in canvas pixel coordinates
                (the new click is the last point; a new box is ``prompts.box``).
            embedding: the episode's image encoding.
            logits: the previous accepted prediction's ``logits``, or None before the first.
        """

    def commit(  # noqa: B027 (an optional hook)
        self, kind: ActionKind, request: PredictRequest, prediction: Prediction
    ) -> None:
        """The turn planned as ``request`` was taken and gave ``prediction``."""


class Accumulate(PromptingRule):
    """Every prompt so far, the previous logits on click turns, one mask.

    SAM-style models are trained with the mask input only on correction rounds, never with a
    box (measured: feeding it with a repeated box lowers LiteMedSAM's Dice by ~0.03-0.06), so
    a new box starts a fresh prediction from the box and the clicks so far.
    """

    def request(
        self,
        kind: ActionKind,
        prompts: Prompts,
        *,
        embedding: Embedding,
        logits: torch.Tensor | None,
    ) -> PredictRequest:
        mask_input = None if kind == ActionKind.BOX else logits
        return PredictRequest(embedding, prompts, mask_input)


class MedSAMAgentEval(PromptingRule):
    """MedSAM-Agent's evaluation code: the newest prompt alone once a mask exists, best of 3.

    A box goes alone with the previous logits; a click goes alone (the last one) with them
    once logits exist, and before that every click goes; the decoder returns the best of its
    3 candidates by its own score each time.
    """

    def request(
        self,
        kind: ActionKind,
        prompts: Prompts,
        *,
        embedding: Embedding,
        logits: torch.Tensor | None,
    ) -> PredictRequest:
        if kind == ActionKind.BOX:
            assert prompts.box is not None
            call = Prompts().with_box(prompts.box)
        elif logits is not None:
            call = _last_click(prompts)
        else:
            call = prompts
        return PredictRequest(embedding, call, logits, multimask=True)


def _alone(kind: ActionKind, prompts: Prompts) -> Prompts:
    """The turn's new prompt on its own: the box, or the last click."""
    if kind == ActionKind.BOX:
        assert prompts.box is not None
        return Prompts().with_box(prompts.box)
    return _last_click(prompts)


def _tool(kind: ActionKind) -> str:
    """The MedSAM-Agent tool an action kind is a call of."""
    return "add_bbox" if kind == ActionKind.BOX else "add_point"


class MedSAMAgentRL(PromptingRule):
    """MedSAM-Agent's RL tools: the new prompt alone, one logit chain per tool name, one mask.

    The logits fed back are those of the last call of the same tool in this episode
    (``add_bbox`` or ``add_point``), None before its first call; see the module docstring.
    """

    def __init__(self) -> None:
        self._chains: dict[str, torch.Tensor] = {}

    def start_episode(self) -> None:
        self._chains = {}

    def request(
        self,
        kind: ActionKind,
        prompts: Prompts,
        *,
        embedding: Embedding,
        logits: torch.Tensor | None,
    ) -> PredictRequest:
        previous = self._chains.get(_tool(kind))
        return PredictRequest(embedding, _alone(kind, prompts), previous, multimask=False)

    def commit(self, kind: ActionKind, request: PredictRequest, prediction: Prediction) -> None:
        self._chains[_tool(kind)] = prediction.logits


class MedSAMAgentRLOneChain(PromptingRule):
    """``medsam_agent_rl`` with one logit chain across tools: the previous call's logits."""

    def request(
        self,
        kind: ActionKind,
        prompts: Prompts,
        *,
        embedding: Embedding,
        logits: torch.Tensor | None,
    ) -> PredictRequest:
        return PredictRequest(embedding, _alone(kind, prompts), logits, multimask=False)


def _last_click(prompts: Prompts) -> Prompts:
    return Prompts(prompts.points[-1:], prompts.labels[-1:])


PromptingRuleFactory = Callable[[], PromptingRule]

PROMPTING_RULES: Registry[PromptingRuleFactory] = Registry(
    "prompting rule",
    "medseg_env.prompting_rules",
    callable_entries("prompting rule", "a PromptingRule class or a factory returning one"),
)


def register_prompting_rule(
    name: str, factory: PromptingRuleFactory, *, overwrite: bool = False
) -> None:
    """Make ``MedSegEnv(prompting=name)`` call its segmenter as ``factory()``'s rule says.

    ``factory`` (a ``PromptingRule`` subclass, or a function returning a fresh rule) is
    called once per env, so episode state is never shared between envs.
    """
    PROMPTING_RULES.register(name, factory, overwrite=overwrite)


def prompting_rule_names() -> list[str]:
    """Registered prompting rules, in registration order."""
    return PROMPTING_RULES.names()


def make_prompting_rule(name: str) -> PromptingRule:
    """A fresh instance of the rule registered as ``name``.

    Raises:
        UnknownNameError: ``name`` is not registered (a ``KeyError`` and a ``ValueError``);
            the message is ``MedSegEnv option prompting must be one of [...]; got 'x'``.
        TypeError: ``name`` is not a str, or the factory returned no ``PromptingRule``.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"MedSegEnv option prompting must be the name of a prompting rule (one of "
            f"{prompting_rule_names()}); got {name!r} ({type(name).__name__})"
        )
    if name not in PROMPTING_RULES:
        raise UnknownNameError(
            f"MedSegEnv option prompting must be one of {prompting_rule_names()}; got {name!r}"
        )
    rule = PROMPTING_RULES.get(name)()
    if not isinstance(rule, PromptingRule):
        raise TypeError(f"prompting rule factory {name!r} returned {rule!r}, not a PromptingRule")
    return rule


register_prompting_rule("accumulate", Accumulate)
register_prompting_rule("medsam_agent_eval", MedSAMAgentEval)
register_prompting_rule("medsam_agent_rl", MedSAMAgentRL)
register_prompting_rule("medsam_agent_rl_one_chain", MedSAMAgentRLOneChain)

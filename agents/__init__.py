"""Reference policies for medseg-env (installed as ``medseg_agents``).

``make_policy(name, **kwargs)`` builds one by its registered name. The default set, in the
benchmark's table order: the GT-free policies ``learned`` and ``learned_bc`` (the shipped
learned agent after RL and after imitation, ``medseg_agents.learned``), ``hint_box`` and
``hint_click`` (``medseg_agents.baselines``); then the oracle policies ``oracle_box``,
``hybrid_expert`` and ``ritm``. ``random`` and ``imis`` are registered in that order too and
run when named, as do the MLLM policies ``openai``, ``vllm`` and ``transformers``
(``medseg_agents.mllm``) and the trained PPO agent ``ppo`` (``medseg_agents.ppo``), which need
a model.
Add your own with ``register_policy(name, factory)`` or the ``medseg_agents.policies``
entry-point group.
"""

from .base import Policy
from .baselines import HintBox, HintClick
from .clickers import IMISClicker, RITMClicker
from .learned import LearnedBCPolicy, LearnedPolicy
from .mllm import OpenAIChatPolicy, TextPolicy, TransformersPolicy, VLLMPolicy
from .oracle import HybridExpert, OracleBox
from .random_policy import RandomPolicy
from .registry import (
    POLICIES,
    default_policies,
    make_policy,
    register_policy,
    registered_policies,
)

# GT-free policies first (they read the observation and info only), then the oracle ones:
# the order of the benchmark's tables and of its default set. `random` (the floor) and `imis`
# (a second click simulator) run when named: left out of the default set so that the default
# benchmark stays under 4 minutes on 2 CPU cores (together 2,800 of its 5,800 steps).
register_policy("learned", LearnedPolicy)
register_policy("learned_bc", LearnedBCPolicy)
register_policy("hint_box", HintBox)
register_policy("hint_click", HintClick)
register_policy("random", RandomPolicy, default=False)
register_policy("oracle_box", OracleBox)
register_policy("hybrid_expert", HybridExpert)
register_policy("ritm", RITMClicker)
register_policy("imis", IMISClicker, default=False)
register_policy("openai", OpenAIChatPolicy, default=False)
register_policy("vllm", VLLMPolicy, default=False)
register_policy("transformers", TransformersPolicy, default=False)


def _ppo(**options):
    """``medseg_agents.ppo.PPOPolicy``, imported only when used (stable-baselines3)."""
    from .ppo import PPOPolicy

    return PPOPolicy(**options)


register_policy("ppo", _ppo, default=False)

__all__ = [
    "POLICIES",
    "HintBox",
    "HintClick",
    "HybridExpert",
    "IMISClicker",
    "LearnedBCPolicy",
    "LearnedPolicy",
    "OpenAIChatPolicy",
    "OracleBox",
    "Policy",
    "RITMClicker",
    "RandomPolicy",
    "TextPolicy",
    "TransformersPolicy",
    "VLLMPolicy",
    "default_policies",
    "make_policy",
    "register_policy",
    "registered_policies",
]

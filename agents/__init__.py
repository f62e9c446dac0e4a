"""Reference policies for medseg-env (installed as ``medseg_agents``).

``make_policy(name, **kwargs)`` builds one by its registered name: ``oracle_box``,
``hybrid_expert``, ``ritm``, ``imis``, ``random``, and the GT-free baselines ``hint_click`` and
``hint_box`` (``medseg_agents.baselines``; in that order, the benchmark's table order and
default set), and the MLLM policies ``openai``, ``vllm`` and ``transformers``
(``medseg_agents.mllm``) and the trained PPO agent ``ppo`` (``medseg_agents.ppo``), which
need a model and run only when named.
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

register_policy("oracle_box", OracleBox)
register_policy("hybrid_expert", HybridExpert)
register_policy("ritm", RITMClicker)
register_policy("imis", IMISClicker)
register_policy("random", RandomPolicy)
register_policy("hint_click", HintClick)
register_policy("hint_box", HintBox)
register_policy("learned", LearnedPolicy, default=False)
register_policy("learned_bc", LearnedBCPolicy, default=False)
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

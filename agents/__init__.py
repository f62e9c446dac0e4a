"""Reference policies for medseg-env (installed as ``medseg_agents``).

``make_policy(name, **kwargs)`` builds one by its registered name: ``oracle_box``,
``hybrid_expert``, ``ritm``, ``imis``, ``random`` (in that order, the benchmark's table order).
Add your own with ``register_policy(name, factory)`` or the ``medseg_agents.policies``
entry-point group.
"""

from .base import Policy
from .clickers import IMISClicker, RITMClicker
from .oracle import HybridExpert, OracleBox
from .random_policy import RandomPolicy
from .registry import POLICIES, make_policy, register_policy, registered_policies

register_policy("oracle_box", OracleBox)
register_policy("hybrid_expert", HybridExpert)
register_policy("ritm", RITMClicker)
register_policy("imis", IMISClicker)
register_policy("random", RandomPolicy)

__all__ = [
    "POLICIES",
    "HybridExpert",
    "IMISClicker",
    "OracleBox",
    "Policy",
    "RITMClicker",
    "RandomPolicy",
    "make_policy",
    "register_policy",
    "registered_policies",
]

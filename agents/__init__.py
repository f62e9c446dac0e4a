"""Reference policies for medseg-env (installed as ``medseg_agents``).

``make_policy(name, **kwargs)`` builds one by its short name (``POLICIES``): ``ritm``,
``imis``, ``oracle_box``, ``hybrid_expert``, ``random``.
"""

from typing import Any

from .base import Policy
from .clickers import IMISClicker, RITMClicker
from .oracle import HybridExpert, OracleBox
from .random_policy import RandomPolicy

POLICIES: dict[str, type[Policy]] = {
    "ritm": RITMClicker,
    "imis": IMISClicker,
    "oracle_box": OracleBox,
    "hybrid_expert": HybridExpert,
    "random": RandomPolicy,
}


def make_policy(name: str, **kwargs: Any) -> Policy:
    """The policy registered as ``name``, built with ``kwargs`` (e.g. ``seed=0``).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    return POLICIES[name](**kwargs)


__all__ = [
    "POLICIES",
    "HybridExpert",
    "IMISClicker",
    "OracleBox",
    "Policy",
    "RITMClicker",
    "RandomPolicy",
    "make_policy",
]

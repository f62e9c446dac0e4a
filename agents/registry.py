"""The policy registry: ``register_policy(name, factory)`` and ``make_policy(name, **kwargs)``.

One ``medseg_env.registry.Registry`` with the ``medseg_agents.policies`` entry-point group, so a
third-party package adds a policy without being imported::

    [project.entry-points."medseg_agents.policies"]
    my_policy = "my_package.policies:MyPolicy"

``medseg-bench`` lists and builds policies from here, in registration order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medseg_env.registry import Registry, callable_entries

from .base import Policy

ENTRY_POINT_GROUP = "medseg_agents.policies"
PolicyFactory = Callable[..., Policy]


POLICIES: Registry[PolicyFactory] = Registry(
    "policy", ENTRY_POINT_GROUP, callable_entries("policy", "a Policy class or factory")
)


# Policies that need options to be built (a model, a server): left out of the default set.
_NEEDS_OPTIONS: set[str] = set()


def register_policy(
    name: str, factory: PolicyFactory, *, overwrite: bool = False, default: bool = True
) -> None:
    """Make ``make_policy(name, **kwargs)`` (and ``medseg-bench -p name``) build ``factory``.

    ``factory`` is a ``Policy`` subclass or any callable returning a ``Policy``; its keyword
    arguments are the options of the benchmark's ``name:key=value`` specs. ``default=False``
    keeps it out of the policies a benchmark runs when none are named (for policies that need
    options, such as a model or a server address).
    """
    POLICIES.register(name, factory, overwrite=overwrite)
    if default:
        _NEEDS_OPTIONS.discard(name)
    else:
        _NEEDS_OPTIONS.add(name)


def default_policies() -> list[str]:
    """Registered policies that build without options, in registration order."""
    return [name for name in POLICIES.names() if name not in _NEEDS_OPTIONS]


def registered_policies() -> list[str]:
    """Registered policy names, in registration order."""
    return POLICIES.names()


def make_policy(name: str, **kwargs: Any) -> Policy:
    """The policy registered as ``name``, built with ``kwargs`` (e.g. ``seed=0``).

    Raises:
        KeyError: (also a ``ValueError``) for an unknown name, listing the known ones.
        TypeError: the factory returned something that is not a ``Policy``.
    """
    policy = POLICIES.get(name)(**kwargs)
    if not isinstance(policy, Policy):
        raise TypeError(f"policy {name!r} built a {type(policy).__name__}, not a Policy")
    return policy

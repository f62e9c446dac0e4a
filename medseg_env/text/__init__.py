"""MLLM text protocols: how a model's replies become env actions, and the named registry.

Built in, in this order: ``medsam_agent`` (MedSAM-Agent's EVAL path), ``medsam_agent_rl``
(its RL path) and ``segagent`` (SegAgent). Third-party packages add theirs with
``register_protocol`` or through the ``medseg_env.protocols`` entry-point group
(``name = "pkg.module:factory"``, the factory taking no arguments).

Also here: ``hermes`` (Qwen's ``<tool_call>`` text, written and read in one place) and
``tool_session`` (``ToolSession``: one text episode driven call by call, the framework-neutral
core of the trainer adapters; import it from its module, as it drives the text env wrapper).
"""

from __future__ import annotations

from collections.abc import Callable

from ..prompting import PROMPTING_RULES
from ..registry import Registry
from .medsam_agent import MedSAMAgentProtocol, MedSAMAgentRLProtocol
from .protocol import TOOL_NAMES, ImageRule, ParsedReply, Protocol, ToolCall
from .segagent import SegAgentProtocol

ProtocolEntry = Protocol | Callable[[], Protocol]


def _check_entry(name: str, entry: object) -> None:
    if not isinstance(entry, Protocol) and not callable(entry):
        raise TypeError(
            f"protocol {name!r} must be a Protocol or a callable returning one; got {entry!r}"
        )


PROTOCOLS: Registry[ProtocolEntry] = Registry("protocol", "medseg_env.protocols", _check_entry)


def register_protocol(name: str, protocol: ProtocolEntry, *, overwrite: bool = False) -> None:
    """Make ``get_protocol(name)`` return ``protocol`` (or ``protocol()`` for a factory)."""
    PROTOCOLS.register(name, protocol, overwrite=overwrite)


def registered_protocols() -> list[str]:
    """Registered protocol names, in registration order."""
    return PROTOCOLS.names()


def get_protocol(spec: str | Protocol) -> Protocol:
    """The protocol registered as ``spec``, or ``spec`` itself when it already is one.

    Raises:
        KeyError: an unknown name (``UnknownNameError``, also a ``ValueError``).
        TypeError: ``spec`` is neither a name nor a protocol, or a factory returned something
            other than a ``Protocol``.
        ValueError: the protocol's ``segmenter_call`` is not a registered prompting rule
            (``medseg_env.prompting``).
    """
    if isinstance(spec, Protocol):
        protocol = spec
    elif not isinstance(spec, str):
        raise TypeError(f"a protocol is a registered name or a Protocol; got {spec!r}")
    else:
        entry = PROTOCOLS.get(spec)
        protocol = entry if isinstance(entry, Protocol) else entry()
        if not isinstance(protocol, Protocol):
            raise TypeError(f"protocol factory {spec!r} returned {protocol!r}, not a Protocol")
    if protocol.segmenter_call not in PROMPTING_RULES:
        raise ValueError(
            f"protocol {protocol.name!r} calls its segmenter as {protocol.segmenter_call!r}, "
            f"which is no registered prompting rule; known: {PROMPTING_RULES.names()}"
        )
    return protocol


register_protocol("medsam_agent", MedSAMAgentProtocol)
register_protocol("medsam_agent_rl", MedSAMAgentRLProtocol)
register_protocol("segagent", SegAgentProtocol)

__all__ = [
    "PROTOCOLS",
    "TOOL_NAMES",
    "ImageRule",
    "MedSAMAgentProtocol",
    "MedSAMAgentRLProtocol",
    "ParsedReply",
    "Protocol",
    "SegAgentProtocol",
    "ToolCall",
    "get_protocol",
    "register_protocol",
    "registered_protocols",
]

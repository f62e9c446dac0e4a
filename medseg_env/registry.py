"""``Registry``: the one registry type behind every name a user can pass as a string.

Segmenters, datasets, reward terms, reward presets, prompting rules, text protocols (here) and
policies (``medseg_agents``) each keep one ``Registry``. They all behave the same way:

- ``register(name, entry)`` refuses a name that is taken unless ``overwrite=True``, so two
  packages cannot silently replace each other's entries;
- third-party packages register without being imported, through a Python entry-point group
  (``[project.entry-points."medseg_env.segmenters"] my_model = "pkg.module:factory"``); entry
  points are read on the first lookup, and an entry registered in code wins over one of the
  same name from an entry point;
- an unknown name raises ``KeyError`` (also a ``ValueError`` subclass, ``UnknownNameError``) with
  one message format: ``unknown policy 'x'; known: ['a', 'b']``;
- ``names()`` lists entries in registration order (built-ins first, in the order their module
  registers them), then entry points in alphabetical order.

A name given on a command line may carry the entry's options as a *spec*,
``name:key=value,...`` (``classical:work_size=96``); ``parse_spec`` splits it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered (catchable as ``KeyError`` or ``ValueError``)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def callable_entries(kind: str, what: str = "callable") -> Callable[[str, object], None]:
    """The entry check of a registry of callables: ``TypeError`` naming the entry otherwise."""

    def check(name: str, entry: object) -> None:
        if not callable(entry):
            raise TypeError(f"{kind} {name!r} must be {what}; got {entry!r}")

    return check


def parse_spec(spec: str, kind: str = "entry") -> tuple[str, dict[str, Any]]:
    """``"name:k=v,k2=v2"`` -> ``("name", {"k": v, "k2": v2})``.

    Each value is read as JSON where it parses (``96``, ``true``, ``"x"``, ``[1, 2]``), else
    kept as the string (``checkpoint=/w/a.pt``). ``kind`` names the entry in errors. The name
    is not looked up: pass it to the registry.

    Raises:
        ValueError: no name, or an option that is not ``key=value``.
    """
    name, _, rest = spec.partition(":")
    if not name:
        raise ValueError(f"{kind} spec {spec!r} has no {kind} name")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{kind} spec {spec!r}: option {item!r} is not key=value")
        try:
            kwargs[key] = json.loads(raw)
        except json.JSONDecodeError:
            kwargs[key] = raw
    return name, kwargs


class Registry(Generic[T]):
    """Named entries of one kind, with an optional entry-point group.

    Args:
        kind: what an entry is, for messages (``"segmenter"``, ``"policy"``...).
        group: the entry-point group third-party packages use, or None for none.
        check: called on every entry before it is registered; raises ``TypeError`` for an
            entry of the wrong type.
    """

    def __init__(
        self, kind: str, group: str | None = None, check: Callable[[str, T], None] | None = None
    ) -> None:
        self.kind = kind
        self.group = group
        self._check = check
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = group is None
        self._lock = threading.RLock()

    def register(self, name: str, entry: T, *, overwrite: bool = False) -> None:
        """Add ``entry`` under ``name``.

        Raises:
            ValueError: ``name`` is empty or taken (pass ``overwrite=True`` to replace it).
            TypeError: ``entry`` fails the registry's type check.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string; got {name!r}")
        if self._check is not None:
            self._check(name, entry)
        with self._lock:
            if name in self._entries and not overwrite:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it"
                )
            self._entries[name] = entry

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry (``UnknownNameError`` when it is not there)."""
        with self._lock:
            if name not in self._entries:
                raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {self.names()}")
            return self._entries.pop(name)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; ``UnknownNameError`` names the known ones."""
        self._load_entry_points()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {self.names()}") from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self._load_entry_points()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def refresh_entry_points(self) -> None:
        """Read the entry-point group again (after installing a plug-in in a running process).

        Names already registered keep their entries.
        """
        with self._lock:
            self._entry_points_loaded = False
        self._load_entry_points()

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.group is None:
            return
        with self._lock:
            if self._entry_points_loaded:
                return
            self._entry_points_loaded = True
            for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
                if ep.name in self._entries:  # registered in code: that one wins
                    continue
                try:
                    entry = ep.load()
                except Exception as err:
                    raise ImportError(
                        f"{self.kind} entry point {ep.name!r} ({ep.value}) in group "
                        f"{self.group!r} failed to load: {err}"
                    ) from err
                self.register(ep.name, entry)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, entries={list(self._entries)})"

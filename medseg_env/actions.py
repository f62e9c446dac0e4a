"""Structured prompt actions of ``MedSeg-v0`` and their builders.

An action is a dict with three entries, in observation coordinates normalised to [0, 1]
(x to the right, y down, (0, 0) the top-left corner of the observation):

- ``kind``: 0 stop, 1 positive click, 2 negative click, 3 box (an ``int``);
- ``point``: ``(x, y)``, read when ``kind`` is a click (``float32`` array of shape (2,));
- ``box``: ``(x0, y0, x1, y1)``, read when ``kind`` is 3 (``float32`` array of shape (4,)).

Entries that the kind does not read are ignored, so every action has the same structure,
as Gymnasium's ``Dict`` space requires.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import numpy as np
from gymnasium import spaces

from . import geometry


class ActionKind(IntEnum):
    STOP = 0
    POSITIVE_CLICK = 1
    NEGATIVE_CLICK = 2
    BOX = 3


Action = dict[str, Any]


def action_space() -> spaces.Dict:
    """The ``Dict`` action space shared by every structured-action env."""
    return spaces.Dict(
        {
            "kind": spaces.Discrete(len(ActionKind)),
            "point": spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32),
            "box": spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32),
        }
    )


def _action(kind: ActionKind, point=(0.0, 0.0), box=(0.0, 0.0, 0.0, 0.0)) -> Action:
    return {
        "kind": int(kind),
        "point": np.asarray(point, dtype=np.float32).reshape(2),
        "box": np.asarray(box, dtype=np.float32).reshape(4),
    }


def stop() -> Action:
    """End the episode; the mask stays as it is."""
    return _action(ActionKind.STOP)


def click(x: float, y: float, positive: bool = True) -> Action:
    """A click at normalised ``(x, y)``: positive adds the spot, negative removes it."""
    kind = ActionKind.POSITIVE_CLICK if positive else ActionKind.NEGATIVE_CLICK
    return _action(kind, point=(x, y))


def box(x0: float, y0: float, x1: float, y1: float) -> Action:
    """A bounding-box prompt with normalised corners (either corner order is accepted)."""
    return _action(ActionKind.BOX, box=(x0, y0, x1, y1))


def pixel_click(row: int, col: int, size: int, positive: bool = True) -> Action:
    """A click at the centre of pixel ``(row, col)`` of a ``size``×``size`` observation."""
    return click(*geometry.pixel_center(row, col, size), positive)


def pixel_box(r0: int, c0: int, r1: int, c1: int, size: int) -> Action:
    """A box covering pixels ``r0..r1`` × ``c0..c1`` (inclusive) of a size×size observation."""
    return box(*geometry.pixel_box_normalized((r0, c0, r1, c1), size))


def validate(action: Any) -> tuple[ActionKind, np.ndarray, np.ndarray]:
    """Check that ``action`` lies in the action space; return ``(kind, point, box)``.

    Raises:
        ValueError: naming the entry and the value, for a missing entry, a wrong ``kind``,
            a wrong shape, or a non-finite or out-of-range coordinate. Such an action is outside
            the action space, so it is a caller's bug, not an invalid move inside the episode.
    """
    if not isinstance(action, dict):
        raise ValueError(
            f"action must be a dict with keys 'kind', 'point', 'box'; got {type(action).__name__}"
        )
    missing = {"kind", "point", "box"} - set(action)
    if missing:
        raise ValueError(f"action is missing the entries {sorted(missing)}")
    raw_kind = np.asarray(action["kind"])
    if raw_kind.size != 1 or not np.issubdtype(raw_kind.dtype, np.integer):
        raise ValueError(f"action['kind'] must be one integer in 0..3; got {action['kind']!r}")
    kind_value = int(raw_kind.reshape(()))
    if kind_value not in ActionKind._value2member_map_:
        raise ValueError(
            f"action['kind'] must be 0 (stop), 1 (positive click), 2 (negative click) or 3 (box); "
            f"got {kind_value}"
        )
    point = _coords(action["point"], "point", 2)
    box_ = _coords(action["box"], "box", 4)
    return ActionKind(kind_value), point, box_


def _coords(value: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"action[{name!r}] must have shape ({n},); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"action[{name!r}] must be finite; got {arr.tolist()}")
    if np.any(arr < 0.0) or np.any(arr > 1.0):
        raise ValueError(f"action[{name!r}] must lie in [0, 1]; got {arr.tolist()}")
    return arr

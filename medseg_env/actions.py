"""Structured prompt actions of ``MedSeg-v0`` and their builders.

An action is a dict with three entries, in observation coordinates normalised to [0, 1]
(x to the right, y down, (0, 0) the top-left corner of the observation):

- ``kind``: 0 stop, 1 positive click, 2 negative click, 3 box (an ``int``);
- ``point``: ``(x, y)``, read when ``kind`` is a click (``float32`` array of shape (2,));
- ``box``: ``(x0, y0, x1, y1)``, read when ``kind`` is 3 (``float32`` array of shape (4,)).

Entries that the kind does not read are ignored, so every action has the same structure,
as Gymnasium's ``Dict`` space requires; they are still checked. :func:`validate` is the one
strict check: an action outside the space (a missing or extra entry, a ``kind`` that is not one
integer in 0..3, coordinates that are not finite real numbers in [0, 1] of the right shape:
strings, bools, complex numbers, objects and datetimes included) raises a ``ValueError`` that
names the entry, the value and what was expected.
"""

from __future__ import annotations

import reprlib
from enum import IntEnum
from typing import Any, NoReturn

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


_ENTRIES = ("kind", "point", "box")
_KIND = (
    "one integer: 0 (stop), 1 (positive click), 2 (negative click) or 3 (box), as a Python int "
    "or a numpy integer scalar"
)
_POINT = "(x, y): 2 real numbers in [0, 1], e.g. a float array of shape (2,)"
_BOX = "(x0, y0, x1, y1): 4 real numbers in [0, 1], e.g. a float array of shape (4,)"
# numpy dtype kinds of real numbers: signed and unsigned integers, floating point. Never
# b (bool), c (complex), O (object), U/S (strings), M/m (datetimes), V (structured).
_REAL_DTYPE_KINDS = "iuf"


def validate(action: Any) -> tuple[ActionKind, np.ndarray, np.ndarray]:
    """Check that ``action`` lies in the action space; return ``(kind, point, box)``.

    The one strict check of a structured action: ``action`` is a ``dict`` with exactly the
    entries ``kind``, ``point`` and ``box``; ``kind`` is one integer in 0..3 (a Python ``int``,
    not a ``bool``, or a numpy integer scalar or 0-d array); ``point`` and ``box`` are real
    coordinates in [0, 1] of shape (2,) and (4,) (see :func:`real_array`). Entries that the
    kind does not read are checked too. ``point`` and ``box`` come back as fresh ``float64``
    arrays.

    Raises:
        ValueError: for any action outside the action space, naming the entry, the value and
            what was expected. Such an action is a caller's bug, not an invalid move inside the
            episode, and nothing else is raised for it.
    """
    if not isinstance(action, dict):
        raise ValueError(
            "action must be a dict with exactly the entries 'kind', 'point' and 'box' "
            f"(see medseg_env.actions); got {describe(action)}"
        )
    missing = [name for name in _ENTRIES if name not in action]
    if missing:
        which = " and ".join(f"action[{name!r}]" for name in missing)
        raise ValueError(
            f"{which} {'is' if len(missing) == 1 else 'are'} missing: an action is a dict with "
            "exactly the entries 'kind', 'point' and 'box'; "
            f"got the entries {describe(list(action))}"
        )
    extra = [key for key in action if not (isinstance(key, str) and key in _ENTRIES)]
    if extra:
        which = ", ".join(f"action[{_REPR.repr(key)}] = {describe(action[key])}" for key in extra)
        raise ValueError(
            f"{which} {'is not an entry' if len(extra) == 1 else 'are not entries'} of the action "
            "space: an action has exactly the entries 'kind', 'point' and 'box'"
        )
    kind = _kind(action["kind"])
    point = real_array(action["point"], "action['point']", (2,), _POINT, unit=True)
    box_ = real_array(action["box"], "action['box']", (4,), _BOX, unit=True)
    return kind, point, box_


def _kind(value: Any) -> ActionKind:
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iu":
        number = int(value)
    elif isinstance(value, int | np.integer) and not isinstance(value, bool):
        number = int(value)
    else:
        raise ValueError(f"action['kind'] must be {_KIND}; got {describe(value)}")
    if number not in ActionKind._value2member_map_:
        raise ValueError(f"action['kind'] must be {_KIND}; got {describe(value)}, out of range")
    return ActionKind(number)


def real_array(
    value: Any, name: str, shape: tuple[int, ...], expected: str, *, unit: bool = False
) -> np.ndarray:
    """``value`` as a fresh ``float64`` array, checked strictly; the one conversion of user input.

    Accepted: a numpy array of an integer or floating dtype, a list or tuple of real scalars
    (Python ``int``/``float``, numpy integer/floating scalars or 0-d arrays), or another
    array-like (``__array__``, e.g. a torch tensor) of an integer or floating dtype. Refused:
    strings, bools, complex numbers, objects, datetimes, a wrong shape, NaN or infinity, and
    with ``unit`` a value outside [0, 1].

    Raises:
        ValueError: ``"{name} must be {expected}; got {value}: {problem}"``, and nothing else.
    """

    def refuse(problem: str) -> NoReturn:
        raise ValueError(f"{name} must be {expected}; got {describe(value)}: {problem}")

    if isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, list | tuple):
        for element in value:
            if not _is_real_scalar(element):
                refuse(f"its element {describe(element)} is not a real number")
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (OverflowError, ValueError, TypeError):  # a Python int too large for a float
            refuse("it does not fit in float64")
    elif isinstance(value, str | bytes | dict) or not hasattr(value, "__array__"):
        refuse(f"a {type(value).__name__} is not an array or a sequence of real numbers")
    elif isinstance(value, np.generic):
        refuse("a single number is not an array of numbers")
    else:  # a foreign array-like: convert, then check its dtype like an array's
        try:
            arr = np.asarray(value)
        except Exception as err:  # a foreign __array__ may raise anything
            refuse(f"it could not be read as an array ({type(err).__name__}: {err})")
    if arr.dtype.kind not in _REAL_DTYPE_KINDS:
        refuse(f"dtype {arr.dtype} is not a real number type (integer or floating point)")
    if arr.shape != shape:
        refuse(f"shape {arr.shape}, not {shape}")
    out = np.array(arr, dtype=np.float64)
    if not np.isfinite(out).all():
        refuse("it is not finite (NaN or infinity)")
    if unit and ((out < 0.0).any() or (out > 1.0).any()):
        refuse("a value lies outside [0, 1]")
    return out


def _is_real_scalar(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.shape == () and value.dtype.kind in _REAL_DTYPE_KINDS
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def describe(value: Any) -> str:
    """A short, safe ``repr`` of ``value`` and its type, for error messages."""
    text = _REPR.repr(value)
    if isinstance(value, np.ndarray):
        text = " ".join(text.split())  # numpy's repr breaks lines; a message keeps to one
        return f"{text} (ndarray of {value.dtype}, shape {value.shape})"
    return f"{text} ({type(value).__name__})"


_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 6
_REPR.maxlevel = 3

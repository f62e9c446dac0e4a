"""Strict action validation (issue 10, finding 4): one check for the dict space and both flat forms.

Every action outside the space raises a ``ValueError`` that names the entry (or the flat form),
the value and what was expected, and changes nothing in the env; every action inside it steps.
The unit tests replay the issue's findings one by one; the hypothesis tests fuzz the dict space,
``MedSeg-MultiDiscrete-v0`` and ``MedSeg-Continuous-v0`` against a real env.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medseg_env import actions
from medseg_env.actions import ActionKind
from medseg_env.data import Dataset
from medseg_env.wrappers import ContinuousActions, MultiDiscreteActions

GRID = 32  # MedSeg-MultiDiscrete-v0's default grid
NVEC = [4, GRID, GRID, GRID, GRID]

# What a rejection of each form names: the entry of a dict action, or the flat form.
DICT_ERROR = re.compile(
    r"action\['(kind|point|box)'\]|^action\[.+ (is not an entry|are not entries) of the action"
    r" space|^action must be a dict",
    re.DOTALL,
)
FLAT_ERROR = {
    "multidiscrete": re.compile(r"^MultiDiscrete action must be .+; got .+: ", re.DOTALL),
    "continuous": re.compile(r"^continuous action must be .+; got .+: ", re.DOTALL),
}


def ok(kind: Any = 1, point: Any = (0.5, 0.5), box: Any = (0.1, 0.1, 0.9, 0.9)) -> dict:
    return {"kind": kind, "point": point, "box": box}


# ------------------------------------------------------------------ the issue's findings
# Each of these was accepted or raised something other than a ValueError naming the entry
# before issue 10 (``git show <before>:medseg_env/actions.py``).
ISSUE_CASES = {
    # raw TypeErrors
    "dict_as_point": (ok(point={"x": 0.5, "y": 0.5}), "point"),
    "dict_as_box": (ok(box={"x0": 0.1}), "box"),
    "complex_numbers_as_point": (ok(point=[0.5 + 0.5j, 0.5]), "point"),
    "complex_numbers_as_box": (ok(box=[0.1j, 0.1, 0.9, 0.9]), "box"),
    # ValueErrors that did not name the entry
    "string_as_point": (ok(point="ab"), "point"),
    "string_element_in_box": (ok(box=[0.1, "x", 0.9, 0.9]), "box"),
    "ragged_point": (ok(point=[[0.5], 0.5]), "point"),
    # accepted although outside the space
    "kind_as_list": (ok(kind=[1]), "kind"),
    "kind_as_1_element_array": (ok(kind=np.array([1])), "kind"),
    "kind_as_2d_array": (ok(kind=np.array([[1]])), "kind"),
    "extra_key": ({**ok(), "extra": 1}, "extra"),
    "object_point": (ok(point=np.array([0.5, 0.5], dtype=object)), "point"),
    "object_box": (ok(box=np.array([0.1, 0.1, 0.9, 0.9], dtype=object)), "box"),
    "datetime64_point": (ok(point=np.array([0, 1], dtype="datetime64[s]")), "point"),
    "timedelta64_box": (ok(box=np.array([0, 0, 1, 1], dtype="timedelta64[s]")), "box"),
    "complex_array_point": (ok(point=np.array([0.5 + 0.25j, 0.5])), "point"),
    "complex_array_real_box": (ok(box=np.array([0.1, 0.1, 0.9, 0.9], dtype=complex)), "box"),
    "numeric_strings_point": (ok(point=["0.5", "0.5"]), "point"),
    "numeric_string_array_box": (ok(box=np.array(["0.1", "0.1", "0.9", "0.9"])), "box"),
    "bool_array_point": (ok(point=np.array([True, False])), "point"),
    "bool_list_box": (ok(box=[False, False, True, True]), "box"),
    "bool_element_in_point": (ok(point=[True, 0.5]), "point"),
}


@pytest.mark.parametrize("case", list(ISSUE_CASES))
def test_issue_cases_raise_a_value_error_naming_the_entry(case):
    action, entry = ISSUE_CASES[case]
    with pytest.raises(ValueError) as info:
        actions.validate(action)
    message = str(info.value)
    assert f"action[{entry!r}]" in message and DICT_ERROR.search(message), message
    if entry != "extra":  # the expectation, then the value
        assert f"action[{entry!r}] must be " in message and "; got " in message, message


# Outside the space before too, and still refused; each message names the entry.
OTHER_CASES = {
    "not_a_dict": ([1, 0.5, 0.5], r"^action must be a dict .* got \[1, 0\.5, 0\.5\] \(list\)"),
    "none": (None, r"^action must be a dict"),
    "missing_box": ({"kind": 1, "point": [0.5, 0.5]}, r"action\['box'\] is missing"),
    "missing_two": ({"kind": 1}, r"action\['point'\] and action\['box'\] are missing"),
    "non_string_extra_key": ({**ok(), 5: 1}, r"action\[5\] = 1 \(int\) is not an entry"),
    "kind_bool": (ok(kind=True), r"action\['kind'\] must be one integer.*True \(bool\)"),
    "kind_numpy_bool": (ok(kind=np.bool_(True)), r"action\['kind'\] must be one integer"),
    "kind_float": (ok(kind=1.0), r"action\['kind'\] must be one integer.*1\.0 \(float\)"),
    "kind_numpy_float": (ok(kind=np.float32(1)), r"action\['kind'\] must be one integer"),
    "kind_float_0d_array": (ok(kind=np.array(1.0)), r"action\['kind'\] must be one integer"),
    "kind_str": (ok(kind="1"), r"action\['kind'\] must be one integer.*'1' \(str\)"),
    "kind_complex": (ok(kind=1 + 0j), r"action\['kind'\] must be one integer"),
    "kind_out_of_range": (ok(kind=4), r"action\['kind'\] must be .*4 \(int\), out of range"),
    "kind_negative": (ok(kind=np.int64(-1)), r"action\['kind'\] .* out of range"),
    "kind_huge": (ok(kind=2**80), r"action\['kind'\] .* out of range"),
    "point_nan": (ok(point=[math.nan, 0.5]), r"action\['point'\] .* not finite"),
    "box_inf": (ok(box=np.array([0, 0, np.inf, 1])), r"action\['box'\] .* not finite"),
    "point_out_of_range": (ok(point=[1.5, 0.5]), r"action\['point'\] .* outside \[0, 1\]"),
    "box_negative": (ok(box=[-0.1, 0, 1, 1]), r"action\['box'\] .* outside \[0, 1\]"),
    "point_short": (ok(point=[0.5]), r"action\['point'\] .* shape \(1,\), not \(2,\)"),
    "point_2d": (ok(point=np.full((1, 2), 0.5)), r"action\['point'\] .* shape \(1, 2\)"),
    "point_nested_list": (ok(point=[[0.5, 0.5]]), r"action\['point'\] .* not a real number"),
    "point_scalar": (ok(point=0.5), r"action\['point'\] .* a float is not an array"),
    "point_numpy_scalar": (ok(point=np.float64(0.5)), r"action\['point'\] .* single number"),
    "point_none": (ok(point=None), r"action\['point'\] .* NoneType is not an array"),
    "point_bytes": (ok(point=b"ab"), r"action\['point'\] .* bytes is not an array"),
    "point_set": (ok(point={0.5}), r"action\['point'\] .* set is not an array"),
    "point_fraction": (ok(point=[Fraction(1, 2), 0.5]), r"action\['point'\] .* Fraction"),
    "point_huge_int": (ok(point=[10**400, 0]), r"action\['point'\] .* float64"),
    "box_structured": (
        ok(box=np.zeros(4, dtype=[("a", "f4")])),
        r"action\['box'\] .* not a real number type",
    ),
    "box_torch_bool": (ok(box=torch.ones(4, dtype=torch.bool)), r"action\['box'\] .* dtype bool"),
}


@pytest.mark.parametrize("case", list(OTHER_CASES))
def test_other_out_of_space_actions_raise_named_value_errors(case):
    action, pattern = OTHER_CASES[case]
    with pytest.raises(ValueError, match=pattern) as info:
        actions.validate(action)
    assert DICT_ERROR.search(str(info.value))


def test_long_values_are_shortened_in_messages():
    with pytest.raises(ValueError) as info:
        actions.validate(ok(point=np.zeros(100_000)))
    assert len(str(info.value)) < 400 and "shape (100000,)" in str(info.value)
    with pytest.raises(ValueError) as info:
        actions.validate(ok(point="x" * 10_000))
    assert len(str(info.value)) < 300


def test_a_value_whose_repr_raises_still_gives_a_value_error():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no repr")

        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("no array")

    for action in (Hostile(), ok(point=Hostile()), ok(kind=Hostile()), ok(box=[Hostile()] * 4)):
        with pytest.raises(ValueError, match="must be"):
            actions.validate(action)


VALID_ENTRIES = {
    "kind": [0, 3, np.int64(1), np.uint8(2), np.int32(3), np.array(2), ActionKind.BOX],
    "point": [
        (0.5, 0.5),
        [0, 1],
        np.array([0.25, 0.75], np.float32),
        np.array([1, 0], np.uint8),
        np.array([0.5, 0.5], np.float16),
        [np.float32(0.1), np.array(0.2)],
        torch.tensor([0.5, 0.25]),
    ],
}


@pytest.mark.parametrize("kind", VALID_ENTRIES["kind"], ids=repr)
@pytest.mark.parametrize("point", VALID_ENTRIES["point"], ids=repr)
def test_every_form_inside_the_space_is_accepted_as_float64(kind, point):
    got_kind, got_point, got_box = actions.validate(ok(kind=kind, point=point))
    assert type(got_kind) is ActionKind and got_kind == int(kind)
    expected = np.asarray(point.numpy() if isinstance(point, torch.Tensor) else point, np.float64)
    assert got_point.dtype == np.float64 and got_point.tobytes() == expected.tobytes()
    assert got_box.tolist() == [0.1, 0.1, 0.9, 0.9]


def test_builders_and_samples_validate_to_the_same_float64_as_before():
    """``validate`` returns what the old ``np.asarray(v, float64)`` gave: episodes are unchanged."""
    space = actions.action_space()
    space.seed(0)
    built = [
        actions.stop(),
        actions.click(0.3, 0.7),
        actions.click(1.0, 0.0, positive=False),
        actions.box(0.9, 0.1, 0.2, 0.8),
        actions.pixel_click(0, 63, 64),
        actions.pixel_box(3, 4, 60, 61, 64),
    ]
    for action in built + [space.sample() for _ in range(200)]:
        assert space.contains(action)
        kind, point, box = actions.validate(action)
        assert kind == int(action["kind"])
        for got, entry in ((point, action["point"]), (box, action["box"])):
            assert got.dtype == np.float64
            assert got.tobytes() == np.asarray(entry, dtype=np.float64).tobytes()
            assert got is not entry  # a fresh array: the caller's is never held


def test_validate_never_changes_or_holds_the_callers_arrays():
    point = np.array([0.5, 0.5])
    action = ok(point=point)
    _, got, _ = actions.validate(action)
    got[0] = 0.0
    assert point[0] == 0.5 and set(action) == {"kind", "point", "box"}


# ------------------------------------------------------------------ the flat forms
@pytest.fixture(scope="module")
def one_sample(demo) -> Dataset:
    return Dataset([demo[0]], name="one-sample")


def make(env_id: str, one_sample: Dataset) -> gym.Env:
    return gym.make(env_id, dataset=one_sample, obs_size=64, max_turns=1000)


def unwrap_to(env: gym.Env, cls: type) -> Any:
    while not isinstance(env, cls):
        env = env.env
    return env


@pytest.fixture(scope="module")
def multidiscrete(one_sample):
    env = make("MedSeg-MultiDiscrete-v0", one_sample)
    yield env
    env.close()


@pytest.fixture(scope="module")
def continuous(one_sample):
    env = make("MedSeg-Continuous-v0", one_sample)
    yield env
    env.close()


MULTIDISCRETE_CASES = {
    # the issue's finding: fractions were floored, so this became a box
    "fractions_floored_to_a_box": [3.9, 0.5, 0.5, 31.9, 31.9],
    "fraction_kind": np.array([0.5, 1, 1, 2, 2]),
    "bools": np.array([True, False, True, False, True]),
    "bool_in_list": [1, True, 0, 0, 0],
    "strings": ["3", "1", "1", "2", "2"],
    "string": "31122",
    "too_short": [3, 1, 1, 2],
    "2d": np.array([[3, 1, 1, 2, 2]]),
    "kind_out_of_range": [4, 0, 0, 0, 0],
    "cell_out_of_range": [3, 0, 0, GRID, 0],
    "negative": [1, -1, 0, 0, 0],
    "nan": [1, math.nan, 0, 0, 0],
    "inf": np.array([1, 0, 0, 0, np.inf]),
    "complex": np.array([1, 0, 0, 0, 0], dtype=complex),
    "object": np.array([1, 0, 0, 0, 0], dtype=object),
    "dict": {"kind": 1},
    "none": None,
}


@pytest.mark.parametrize("case", list(MULTIDISCRETE_CASES))
def test_multidiscrete_refuses_non_integers_and_wrong_shapes(multidiscrete, case):
    wrapper = unwrap_to(multidiscrete, MultiDiscreteActions)
    with pytest.raises(ValueError, match=FLAT_ERROR["multidiscrete"]):
        wrapper.action(MULTIDISCRETE_CASES[case])


def test_multidiscrete_fractions_no_longer_become_a_box(multidiscrete):
    multidiscrete.reset(seed=0)
    with pytest.raises(ValueError, match="not whole numbers"):
        multidiscrete.step(np.array([3.9, 0.5, 0.5, 31.9, 31.9]))
    _, _, _, _, info = multidiscrete.step(np.array([0, 0, 0, 0, 0]))
    assert info["turn"] == 1 and info["num_boxes"] == 0


def test_multidiscrete_maps_every_integer_form_alike(multidiscrete):
    wrapper = unwrap_to(multidiscrete, MultiDiscreteActions)
    space = wrapper.action_space
    space.seed(0)
    for _ in range(100):
        a = space.sample()
        reference = wrapper.action(a)
        for form in (a.astype(np.int32), a.astype(np.uint8), a.tolist(), a.astype(np.float64)):
            got = wrapper.action(form)
            assert got["kind"] == reference["kind"]
            assert got["point"].tobytes() == reference["point"].tobytes()
            assert got["box"].tobytes() == reference["box"].tobytes()
        kind, c0, r0, c1, r1 = (int(v) for v in a)
        if kind == ActionKind.BOX:
            (lo_c, hi_c), (lo_r, hi_r) = sorted((c0, c1)), sorted((r0, r1))
            expected = actions.pixel_box(lo_r, lo_c, hi_r, hi_c, GRID)["box"]
            assert reference["box"].tobytes() == expected.tobytes()
        elif kind != ActionKind.STOP:
            expected = actions.pixel_click(r0, c0, GRID)["point"]
            assert reference["point"].tobytes() == expected.tobytes()


CONTINUOUS_CASES = {
    "dict": {"kind": 1, "point": [0.5, 0.5], "box": [0, 0, 1, 1]},  # the issue's finding
    "string": "0000000",
    "strings": ["0"] * 7,
    "bools": np.ones(7, dtype=bool),
    "complex": np.zeros(7, dtype=complex),
    "object": np.zeros(7, dtype=object),
    "too_long": np.zeros(8),
    "2d": np.zeros((1, 7)),
    "nan": [math.nan] + [0.0] * 6,
    "inf": np.array([0, 0, 0, 0, 0, 0, -np.inf]),
    "none": None,
}


@pytest.mark.parametrize("case", list(CONTINUOUS_CASES))
def test_continuous_refuses_non_reals_and_wrong_shapes(continuous, case):
    wrapper = unwrap_to(continuous, ContinuousActions)
    with pytest.raises(ValueError, match=FLAT_ERROR["continuous"]):
        wrapper.action(CONTINUOUS_CASES[case])


def test_continuous_maps_as_before(continuous):
    wrapper = unwrap_to(continuous, ContinuousActions)
    space = wrapper.action_space
    space.seed(0)
    for _ in range(100):
        a = space.sample()
        got = wrapper.action(a)
        # the arithmetic of the form, on float64 as before
        x = np.clip(np.asarray(a, np.float64), -1.0, 1.0)
        kind = min(int((x[0] + 1.0) / 2.0 * 4), 3)
        coords = (x[1:] + 1.0) / 2.0
        expected = (
            actions.stop()
            if kind == 0
            else actions.box(*coords[2:])
            if kind == 3
            else actions.click(coords[0], coords[1], positive=kind == 1)
        )
        assert got["kind"] == expected["kind"]
        assert got["point"].tobytes() == expected["point"].tobytes()
        assert got["box"].tobytes() == expected["box"].tobytes()
        assert wrapper.action(a.tolist())["box"].tobytes() == got["box"].tobytes()
    # out-of-range values are still clipped, as SB3 clips a policy's output
    assert wrapper.action([5, 0, 0, -9, -9, 9, 9])["box"].tolist() == [0, 0, 1, 1]


# ------------------------------------------------------------------ property-based fuzz
def reals(value: Any, n: int) -> list[float] | None:
    """The ``n`` real numbers ``value`` holds, or None when it is anything else (the oracle)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf" or value.shape != (n,):
            return None
        items = value.tolist()
    elif isinstance(value, list | tuple) and len(value) == n:
        items = []
        for x in value:
            if isinstance(x, np.ndarray) and x.shape == () and x.dtype.kind in "iuf":
                x = x.item()
            if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
                return None
            items.append(x)
    else:
        return None
    try:
        numbers = [float(x) for x in items]
    except OverflowError:  # a Python int beyond float64
        return None
    return numbers if all(math.isfinite(x) for x in numbers) else None


def in_space(action: Any) -> bool:
    """An independent statement of the dict action space, the fuzz test's oracle."""
    if not isinstance(action, dict) or set(action) != {"kind", "point", "box"}:
        return False
    kind = action["kind"]
    if isinstance(kind, np.ndarray):
        if kind.shape != () or kind.dtype.kind not in "iu":
            return False
        kind = kind.item()
    elif isinstance(kind, bool) or not isinstance(kind, int | np.integer):
        return False
    if int(kind) not in (0, 1, 2, 3):
        return False
    point, box = reals(action["point"], 2), reals(action["box"], 4)
    return point is not None and box is not None and all(0.0 <= x <= 1.0 for x in point + box)


def in_multidiscrete(action: Any) -> bool:
    numbers = reals(action, 5)
    return numbers is not None and all(
        x == math.floor(x) and 0 <= x < n for x, n in zip(numbers, NVEC, strict=True)
    )


def in_continuous(action: Any) -> bool:
    return reals(action, 7) is not None  # finite; beyond [-1, 1] is clipped, as SB3 does


unit = st.floats(0.0, 1.0)
kind_value = st.sampled_from([3, 1, 2, 0])  # boxes first: integers(0, 3) rarely draws a 3
valid_kind = st.one_of(
    kind_value,
    kind_value.map(ActionKind),
    kind_value.map(np.int64),
    kind_value.map(np.uint8),
    kind_value.map(np.array),
)


def valid_coords(n: int) -> st.SearchStrategy:
    return st.one_of(
        st.lists(unit, min_size=n, max_size=n),
        st.lists(unit, min_size=n, max_size=n).map(tuple),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        hnp.arrays(np.float32, n, elements=st.floats(0.0, 1.0, width=32)),
        hnp.arrays(np.float64, n, elements=unit),
        hnp.arrays(st.sampled_from([np.uint8, np.int64]), n, elements=st.integers(0, 1)),
    )


valid_dict = st.fixed_dictionaries(
    {"kind": valid_kind, "point": valid_coords(2), "box": valid_coords(4)}
)
scalar_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.complex_numbers(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.just(np.datetime64("1970-01-01T00:00:01")),
)
junk = st.recursive(
    scalar_junk,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
bad_kind = st.one_of(
    st.integers().filter(lambda k: not 0 <= k <= 3),
    st.integers(0, 3).map(lambda k: [k]),
    st.integers(0, 3).map(lambda k: np.array([k])),
    st.integers(0, 3).map(lambda k: np.array([[k]])),
    st.booleans(),
    st.booleans().map(np.bool_),
    st.integers(0, 3).map(float),
    st.integers(0, 3).map(np.float64),
    st.integers(0, 3).map(lambda k: np.array(k, dtype=np.float32)),
    st.integers(0, 3).map(lambda k: np.array(k, dtype=object)),
    st.integers(0, 3).map(str),
    st.integers(0, 3).map(complex),
    st.floats(),
    junk,
)


def bad_coords(n: int) -> st.SearchStrategy:
    def outside(values: list) -> bool:
        return not all(0.0 <= v <= 1.0 for v in values)  # NaN compares False: outside

    floats = st.floats(allow_nan=True, allow_infinity=True)
    return st.one_of(
        st.lists(unit, max_size=6).filter(lambda v: len(v) != n),
        st.lists(floats, min_size=n, max_size=n).filter(outside),
        hnp.arrays(np.float64, n, elements=floats).filter(lambda a: outside(a.tolist())),
        hnp.arrays(np.float64, st.sampled_from([(), (1, n), (n, 1), (n + 1,)]), elements=unit),
        st.lists(st.complex_numbers(max_magnitude=1), min_size=n, max_size=n),
        hnp.arrays(np.complex128, n, elements=st.complex_numbers(max_magnitude=1)),
        hnp.arrays(np.float64, n, elements=unit).map(lambda a: a.astype(object)),
        hnp.arrays(np.int64, n, elements=st.integers(0, 1)).map(
            lambda a: a.astype("datetime64[s]")
        ),
        hnp.arrays(np.int64, n, elements=st.integers(0, 1)).map(
            lambda a: a.astype("timedelta64[s]")
        ),
        hnp.arrays(np.bool_, n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(unit, min_size=n - 1, max_size=n - 1).map(lambda v: [*v, True]),
        st.lists(unit.map(str), min_size=n, max_size=n),
        st.lists(unit, min_size=n, max_size=n).map(lambda v: np.array(v).astype(str)),
        st.lists(unit, min_size=n, max_size=n).map(lambda v: [v]),
        st.lists(unit, min_size=n - 1, max_size=n - 1).map(lambda v: [[0.5], *v]),
        st.text(max_size=8),
        st.dictionaries(st.text(max_size=3), unit, max_size=n),
        unit,
        unit.map(np.float32),
        st.none(),
        junk,
    )


def mutate(action: dict, data: st.DataObject) -> dict:
    """A near-valid action: one thing wrong with a valid one."""
    how = data.draw(st.sampled_from(["kind", "point", "box", "extra", "missing"]))
    action = dict(action)
    if how == "kind":
        action["kind"] = data.draw(bad_kind)
    elif how in ("point", "box"):
        action[how] = data.draw(bad_coords(2 if how == "point" else 4))
    elif how == "extra":
        key = data.draw(
            st.one_of(
                st.text(max_size=6), st.integers(), st.none(), st.tuples(st.integers())
            ).filter(lambda k: k not in ("kind", "point", "box"))
        )
        action[key] = data.draw(junk)
    else:
        for name in data.draw(st.sets(st.sampled_from(list(action)), min_size=1)):
            del action[name]
    return action


def snapshot(env: gym.Env) -> dict:
    """Everything a raising step must leave alone: the observation, turn, prompts, mask, RNG
    and every other array or plain value the env holds."""
    u = env.unwrapped
    state: dict[str, Any] = {
        "obs": {k: v.tobytes() for k, v in u._obs().items()},
        "rng": repr(u.np_random.bit_generator.state),
        "mask": u.current_mask.tobytes(),
    }
    prompts = u.prompts
    state["prompts"] = (prompts.points.tobytes(), prompts.labels.tobytes(), repr(prompts.box))
    for name, value in vars(u).items():
        if isinstance(value, np.ndarray):
            state[name] = (value.dtype.str, value.shape, value.tobytes())
        elif isinstance(value, torch.Tensor):  # the logits in full; the big embedding by id
            small = value.numel() <= 2**16
            state[name] = (id(value), value.cpu().numpy().tobytes() if small else value.data_ptr())
        elif isinstance(value, int | float | str | bool | type(None)):
            state[name] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
            state[name] = tuple(value)
        else:
            state[name] = id(value)
    return state


class Fuzz:
    """Steps ``env`` with one fuzzed action and checks the contract; counts the outcomes."""

    def __init__(self, env: gym.Env, error: re.Pattern) -> None:
        self.env, self.error = env, error
        self.counts = {"accepted": 0, "invalid": 0, "value_error": 0}
        env.reset(seed=0)

    def __call__(self, action: Any, valid: bool) -> None:
        before = snapshot(self.env)
        try:
            _, _, terminated, truncated, info = self.env.step(action)
        except ValueError as err:
            assert not valid, f"{action!r} is in the space but raised {err}"
            assert self.error.search(str(err)), str(err)
            assert snapshot(self.env) == before, f"{action!r} raised and changed the env"
            self.counts["value_error"] += 1
            return
        assert valid, f"{action!r} is outside the space but was accepted"
        self.counts["invalid" if info["invalid_action"] else "accepted"] += 1
        if terminated or truncated:
            self.env.reset()


@pytest.fixture(scope="module")
def dict_fuzz(one_sample):
    env = make("MedSeg-v0", one_sample)
    yield Fuzz(env, DICT_ERROR)
    env.close()


# Deterministic, no example database in the working tree, and no deadline: a valid step runs
# the real model (~50 ms on a 64-pixel observation).
FAST = settings(
    deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


def draw_dict(data: st.DataObject, weights: dict[str, int]) -> tuple[str, Any]:
    source = data.draw(st.sampled_from([k for k, n in weights.items() for _ in range(n)]))
    if source == "valid":
        action = data.draw(valid_dict)
    elif source == "near":
        action = mutate(data.draw(valid_dict), data)
    else:
        action = data.draw(
            st.one_of(junk, st.fixed_dictionaries({k: junk for k in ("kind", "point", "box")}))
        )
    assert in_space(action) or source != "valid"  # the valid strategy agrees with the oracle
    return source, action


@settings(FAST, max_examples=600)
@given(data=st.data())
def test_fuzz_validate_agrees_with_the_space(data):
    """Many actions, no env: ``validate`` accepts exactly the space, else a named ValueError."""
    _, action = draw_dict(data, {"valid": 1, "near": 1, "junk": 1})
    try:
        kind, point, box = actions.validate(action)
    except ValueError as err:
        assert not in_space(action), f"{action!r} is in the space but raised {err}"
        assert DICT_ERROR.search(str(err)), str(err)
        return
    assert in_space(action), f"{action!r} is outside the space but was accepted"
    assert kind in tuple(ActionKind) and point.shape == (2,) and box.shape == (4,)


@settings(FAST, max_examples=200)
@given(data=st.data())
def test_fuzz_dict_actions(dict_fuzz, data):
    # One in eight is valid: a valid prompt runs the model, everything else is cheap.
    _, action = draw_dict(data, {"valid": 1, "near": 4, "junk": 3})
    dict_fuzz(action, in_space(action))


@pytest.fixture(scope="module")
def multidiscrete_fuzz(multidiscrete):
    return Fuzz(multidiscrete, FLAT_ERROR["multidiscrete"])


@pytest.fixture(scope="module")
def continuous_fuzz(continuous):
    return Fuzz(continuous, FLAT_ERROR["continuous"])


md_valid = st.tuples(*(st.integers(0, n - 1) for n in NVEC)).flatmap(
    lambda v: st.sampled_from(
        [list(v), tuple(v), np.array(v), np.array(v, np.int32), np.array(v, np.float64)]
    )
)
md_near = st.one_of(
    st.lists(st.integers(-2, GRID + 1), min_size=5, max_size=5).filter(
        lambda v: not all(0 <= x < n for x, n in zip(v, NVEC, strict=True))
    ),
    hnp.arrays(np.float64, 5, elements=st.floats(0, 3.9)).filter(
        lambda a: (a != np.floor(a)).any()
    ),
    hnp.arrays(np.float64, 5, elements=st.floats(allow_nan=True)).filter(
        lambda a: not np.isfinite(a).all()
    ),
    hnp.arrays(np.bool_, 5),
    hnp.arrays(np.int64, st.sampled_from([(), (4,), (6,), (1, 5), (5, 1)]), elements=st.just(0)),
    st.lists(st.integers(0, 3).map(str), min_size=5, max_size=5),
    hnp.arrays(np.complex128, 5, elements=st.just(1 + 0j)),
    hnp.arrays(np.int64, 5, elements=st.just(0)).map(lambda a: a.astype(object)),
    st.lists(st.integers(0, 3), min_size=4, max_size=4).map(lambda v: [*v, True]),
    valid_dict,
)


def draw_flat(data: st.DataObject, form: str, weights: dict[str, int]) -> Any:
    source = data.draw(st.sampled_from([k for k, n in weights.items() for _ in range(n)]))
    strategies = FLAT_STRATEGIES[form]
    action = data.draw(strategies[source] if source in strategies else junk)
    inside = FLAT_ORACLES[form](action)
    assert inside == (source == "valid") or source == "junk", action
    return action


@settings(FAST, max_examples=300)
@given(data=st.data(), form=st.sampled_from(["multidiscrete", "continuous"]))
def test_fuzz_flat_forms_agree_with_their_spaces(multidiscrete, continuous, data, form):
    """No step: each form accepts exactly its space, and maps it into the dict space."""
    wrapper = (
        unwrap_to(multidiscrete, MultiDiscreteActions)
        if form == "multidiscrete"
        else unwrap_to(continuous, ContinuousActions)
    )
    action = draw_flat(data, form, {"valid": 1, "near": 1, "junk": 1})
    try:
        structured = wrapper.action(action)
    except ValueError as err:
        assert not FLAT_ORACLES[form](action), f"{action!r} is in the space but raised {err}"
        assert FLAT_ERROR[form].search(str(err)), str(err)
        return
    assert FLAT_ORACLES[form](action), f"{action!r} is outside the space but was accepted"
    assert in_space(structured)
    actions.validate(structured)


@settings(FAST, max_examples=60)
@given(data=st.data())
def test_fuzz_multidiscrete_actions(multidiscrete_fuzz, data):
    action = draw_flat(data, "multidiscrete", {"valid": 1, "near": 3, "junk": 2})
    multidiscrete_fuzz(action, in_multidiscrete(action))


c_valid = st.one_of(
    hnp.arrays(np.float32, 7, elements=st.floats(-1, 1, width=32)),
    hnp.arrays(np.float64, 7, elements=st.floats(-5, 5)),  # clipped, as SB3 does
    st.lists(st.floats(-1, 1), min_size=7, max_size=7),
)
c_near = st.one_of(
    hnp.arrays(np.float64, 7, elements=st.floats(allow_nan=True)).filter(
        lambda a: not np.isfinite(a).all()
    ),
    hnp.arrays(np.float32, st.sampled_from([(), (6,), (8,), (1, 7), (7, 1)]), elements=st.just(0)),
    hnp.arrays(np.bool_, 7),
    hnp.arrays(np.complex128, 7, elements=st.just(0.5 + 0j)),
    hnp.arrays(np.float64, 7, elements=st.just(0.0)).map(lambda a: a.astype(object)),
    st.lists(st.floats(-1, 1).map(str), min_size=7, max_size=7),
    st.lists(st.floats(-1, 1), min_size=6, max_size=6).map(lambda v: [*v, False]),
    valid_dict,
)


@settings(FAST, max_examples=60)
@given(data=st.data())
def test_fuzz_continuous_actions(continuous_fuzz, data):
    action = draw_flat(data, "continuous", {"valid": 1, "near": 3, "junk": 2})
    continuous_fuzz(action, in_continuous(action))


FLAT_STRATEGIES = {
    "multidiscrete": {"valid": md_valid, "near": md_near},
    "continuous": {"valid": c_valid, "near": c_near},
}
FLAT_ORACLES = {"multidiscrete": in_multidiscrete, "continuous": in_continuous}

"""One registry type behind every name: segmenters, datasets, reward terms and presets, policies.

Every registry is checked the same way, from the list below: registration order, the overwrite
policy, the error format for an unknown name, the type check, and an entry point installed by a
third-party distribution.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from medseg_agents import POLICIES, RandomPolicy, make_policy, register_policy
from medseg_env.data import load_dataset, register_dataset
from medseg_env.data.manifest import DATASETS
from medseg_env.registry import Registry, UnknownNameError
from medseg_env.rewards import (
    PRESETS,
    TERMS,
    Reward,
    register_reward_preset,
    register_reward_term,
)
from medseg_env.segmenters import SEGMENTERS, make_segmenter, register_segmenter


def _term(ctx) -> float:
    return 1.0


def _dataset():
    return load_dataset("demo")[:2]


def _segmenter(**kwargs):
    return make_segmenter("litemedsam", **kwargs)


def _policy(**kwargs):
    return RandomPolicy(**kwargs)


# (registry, its register function, a valid entry, the first built-in names in order, a
#  function that uses a registered name the way a user does)
CASES = {
    "segmenter": (
        SEGMENTERS,
        register_segmenter,
        _segmenter,
        ["litemedsam", "litemedsam_clicks", "sam", "medsam"],
        lambda name: make_segmenter(name),
    ),
    "dataset": (DATASETS, register_dataset, _dataset, ["demo", "demo-heldout"], load_dataset),
    "reward term": (
        TERMS,
        register_reward_term,
        _term,
        ["dice_gain", "iou_gain", "step", "invalid_action"],
        lambda name: Reward({name: 1.0}),
    ),
    "reward preset": (
        PRESETS,
        register_reward_preset,
        {"dice_gain": 1.0},
        ["dice_gain", "iou_gain", "final_dice", "medsam_agent"],
        Reward,
    ),
    "policy": (
        POLICIES,
        register_policy,
        _policy,
        [
            "learned",
            "learned_bc",
            "hint_box",
            "hint_click",
            "random",
            "oracle_box",
            "hybrid_expert",
            "ritm",
            "imis",
        ],
        make_policy,
    ),
}
KINDS = sorted(CASES)


@pytest.mark.parametrize("kind", KINDS)
def test_builtins_are_listed_in_registration_order(kind):
    registry, _, _, builtins, _ = CASES[kind]
    assert isinstance(registry, Registry) and registry.kind == kind
    assert registry.names()[: len(builtins)] == builtins


@pytest.mark.parametrize("kind", KINDS)
def test_register_refuses_a_taken_name_unless_overwrite(kind):
    registry, register, entry, _, use = CASES[kind]
    name = f"test-{kind.replace(' ', '-')}"
    register(name, entry)
    try:
        assert registry.get(name) is entry or registry.get(name) == entry
        assert registry.names()[-1] == name  # appended: registration order
        use(name)  # usable by name, the way a user names it
        with pytest.raises(ValueError, match=f"{kind} '{name}' is already registered"):
            register(name, entry)
        register(name, entry, overwrite=True)
    finally:
        registry.unregister(name)
    assert name not in registry


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_names_have_one_error_format(kind):
    registry, _, _, builtins, _ = CASES[kind]
    with pytest.raises(UnknownNameError) as info:
        registry.get("no-such-name")
    message = str(info.value)
    assert message.startswith(f"unknown {kind} 'no-such-name'; known: [")
    assert all(repr(name) in message for name in builtins)
    # catchable as either base, whichever a caller expects
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("kind", KINDS)
def test_entries_are_type_checked(kind):
    _, register, _, _, _ = CASES[kind]
    with pytest.raises(TypeError, match=kind):
        register("test-bad-entry", 42)
    with pytest.raises(ValueError, match="non-empty string"):
        register("", CASES[kind][2])


def test_user_facing_calls_use_the_registry_message():
    with pytest.raises(ValueError, match=r"unknown policy 'nope'; known: \['learned'"):
        make_policy("nope")
    with pytest.raises(ValueError, match=r"unknown segmenter 'nope'; known: \['litemedsam'"):
        make_segmenter("nope")


@pytest.fixture
def plugin_distribution(tmp_path, monkeypatch):
    """A third-party distribution on sys.path declaring one entry point in every group."""
    module = tmp_path / "medseg_test_plugin.py"
    module.write_text(
        textwrap.dedent(
            """
            from medseg_agents import RandomPolicy
            from medseg_env.data import load_dataset
            from medseg_env.segmenters import make_segmenter

            def term(ctx):
                return 2.0

            PRESET = {"dice_gain": 0.5}

            def dataset():
                return load_dataset("demo")[:1]

            def segmenter(**kwargs):
                return make_segmenter("litemedsam", **kwargs)

            class Policy(RandomPolicy):
                name = "plugin_policy"
            """
        )
    )
    info = tmp_path / "medseg_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: medseg-test-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [medseg_env.segmenters]
            plugin-segmenter = medseg_test_plugin:segmenter
            [medseg_env.datasets]
            plugin-dataset = medseg_test_plugin:dataset
            [medseg_env.reward_terms]
            plugin-reward-term = medseg_test_plugin:term
            [medseg_env.reward_presets]
            plugin-reward-preset = medseg_test_plugin:PRESET
            [medseg_agents.policies]
            plugin-policy = medseg_test_plugin:Policy
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("medseg_test_plugin", None)


@pytest.mark.parametrize("kind", KINDS)
def test_entry_points_register_third_party_entries(kind, plugin_distribution):
    registry, _, _, builtins, use = CASES[kind]
    name = f"plugin-{kind.replace(' ', '-')}"
    assert name not in registry  # not read yet: entry points are read once, then on refresh
    registry.refresh_entry_points()
    try:
        assert name in registry
        assert registry.names()[: len(builtins)] == builtins  # built-ins keep their place
        use(name)
        # a name registered in code is never replaced by an entry point of the same name
        registry.refresh_entry_points()
        entry = registry.get(name)
        registry.refresh_entry_points()
        assert registry.get(name) is entry
    finally:
        registry.unregister(name)


def test_a_broken_entry_point_names_itself(tmp_path, monkeypatch):
    info = tmp_path / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[test.medseg.group]\nbroken = no_such_module:thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry: Registry[object] = Registry("widget", "test.medseg.group")
    with pytest.raises(ImportError, match="widget entry point 'broken'.*no_such_module"):
        registry.names()

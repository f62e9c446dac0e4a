"""The learned agent (``medseg_agents.learned``): its actions, checkpoints and shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg_agents import make_policy
from medseg_agents.learned import (
    CheckpointError,
    LearnedPolicy,
    PolicySpec,
    PromptNet,
    load_checkpoint,
    save_checkpoint,
    shipped_weights,
)
from medseg_agents.learned.network import Choice, greedy, to_action, to_choice, window
from medseg_env import actions as A
from medseg_env.data import Dataset
from medseg_env.env import MedSegEnv

SMALL = PolicySpec(crop=32, cell=1, width=4, horizon=5)


def small_net(seed: int = 0, spec: PolicySpec = SMALL) -> PromptNet:
    torch.manual_seed(seed)
    return PromptNet(spec).eval()


def test_the_window_is_centred_on_the_hint_and_zero_past_the_canvas() -> None:
    canvas = np.arange(16 * 16).reshape(16, 16, 1)
    out = window(canvas, 2, 13, 8)
    assert out[4, 4, 0] == canvas[2, 13, 0]  # the hint pixel at (crop/2, crop/2)
    assert (out[:2] == 0).all() and (out[:, 7:] == 0).all()  # rows < 0 and cols >= 16
    assert out[2, 0, 0] == canvas[0, 9, 0]


@pytest.mark.parametrize("cell", [1, 4])
def test_choices_and_actions_round_trip(cell: int) -> None:
    spec = PolicySpec(crop=64, cell=cell, width=4, obs_size=128)
    rng = np.random.default_rng(0)
    for _ in range(200):
        hint = (int(rng.integers(40, 88)), int(rng.integers(40, 88)))
        kind = int(rng.integers(0, 4))
        choice = Choice(
            kind,
            (int(rng.integers(spec.grid)), int(rng.integers(spec.grid))),
            tuple(int(v) for v in rng.integers(0, spec.bins, size=4)),  # type: ignore[arg-type]
        )
        back = to_choice(to_action(choice, hint, spec), hint, spec)
        assert back.kind == choice.kind
        if kind in (1, 2):
            assert back.cell == choice.cell
        if kind == 3:
            assert back.edges == choice.edges


def test_pixel_cells_place_clicks_and_box_sides_on_exact_pixels() -> None:
    spec = PolicySpec(crop=64, cell=1, width=4, obs_size=128)
    hint = (60, 70)
    click = to_action(Choice(1, (32 + 5, 32 - 3)), hint, spec)
    assert np.allclose(click["point"] * 128, (70 - 3 + 0.5, 60 + 5 + 0.5))  # pixel (65, 67)
    box = to_action(Choice(3, edges=(7, 2, 0, 11)), hint, spec)  # left, top, right, bottom
    assert np.allclose(box["box"] * 128, (70 - 7, 60 - 2, 70 + 0 + 1, 60 + 11 + 1))


def test_greedy_takes_the_most_likely_parts_and_forced_stops() -> None:
    kind = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    clicks = torch.zeros(2, 2, 4, 4)
    clicks[0, 0, 2, 3] = 9.0
    edges = torch.zeros(2, 4, 3)
    edges[1, :, 2] = 1.0
    a, b = greedy(kind, clicks, edges)
    assert (a.kind, a.cell) == (1, (2, 3))
    assert (b.kind, b.edges) == (3, (2, 2, 2, 2))
    forced = greedy(kind, clicks, edges, stop=torch.tensor([True, False]))
    assert forced[0].kind == 0 and forced[1].kind == 3


def test_checkpoints_round_trip(tmp_path) -> None:
    net = small_net(1)
    save_checkpoint(tmp_path, net, {"stage": "test"})
    loaded, meta = load_checkpoint(tmp_path)
    assert meta == {"stage": "test"} and loaded.spec == SMALL
    x, s = torch.rand(2, 6, 32, 32), torch.rand(2, 4)
    for a, b in zip(net(x, s), loaded(x, s), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(small_net(2)(x, s)[0], loaded(x, s)[0])  # a fresh net differs


def _spec_doc(folder) -> dict:
    return json.loads((folder / "policy.json").read_text())


def test_bad_checkpoints_name_the_file_and_the_field(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="policy.json: not found"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, small_net())
    spec_file = tmp_path / "policy.json"
    good = spec_file.read_text()

    spec_file.write_text("{not json")
    with pytest.raises(CheckpointError, match="policy.json: not valid JSON"):
        load_checkpoint(tmp_path)
    for change, pattern in [
        (lambda d: d.update(format="medseg-ppo-1"), "field 'format'"),
        (lambda d: d["spec"].pop("crop"), r"missing \['crop'\]"),
        (lambda d: d["spec"].update(colour=3), r"unknown \['colour'\]"),
        (lambda d: d["spec"].update(cell=3), "PolicySpec.cell must divide"),
    ]:
        doc = json.loads(good)
        change(doc)
        spec_file.write_text(json.dumps(doc))
        with pytest.raises(CheckpointError, match=pattern) as err:
            load_checkpoint(tmp_path)
        assert str(spec_file) in str(err.value)
    doc = json.loads(good)
    doc["spec"]["width"] = 8  # the tensors were made for width 4
    spec_file.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"policy.safetensors: tensor '\S+' has shape"):
        load_checkpoint(tmp_path)
    spec_file.write_text(good)
    (tmp_path / "policy.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="policy.safetensors: not a safetensors file"):
        load_checkpoint(tmp_path)


def test_a_policy_without_the_hint_names_target_hint(tmp_path, demo: Dataset) -> None:
    save_checkpoint(tmp_path, small_net(spec=PolicySpec(crop=32, width=4)))
    policy = LearnedPolicy(path=tmp_path)
    env = MedSegEnv(dataset=demo, segmenter="classical", target_hint=False)
    obs, info = env.reset(seed=0)
    with pytest.raises(ValueError, match="target_hint=True"):
        policy.act(obs, info)


@pytest.mark.parametrize("name", ["learned", "learned_bc"])
def test_the_shipped_weights_load_and_act_deterministically(name: str, demo: Dataset) -> None:
    policy = make_policy(name)
    assert policy.needs_oracle is False
    stage = "rl" if name == "learned" else "bc"
    assert policy.path == shipped_weights(stage)
    env = MedSegEnv(dataset=demo, segmenter="classical", max_turns=6)

    def episode(index: int) -> list[tuple]:
        obs, info = env.reset(options={"sample_index": index})
        steps = []
        for _ in range(6):
            action = policy.act(obs, info, None)  # no env: it never reads the oracle
            steps.append((int(action["kind"]), *np.round(action["point"], 6), *action["box"]))
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        assert int(action["kind"]) == A.ActionKind.STOP or info["turn"] <= policy.spec.horizon
        return steps

    first = [episode(i) for i in (0, 30, 80)]
    assert [episode(i) for i in (0, 30, 80)] == first
    assert all(1 <= len(steps) <= policy.spec.horizon + 1 for steps in first)
    assert any(steps[0][0] != A.ActionKind.STOP for steps in first)  # it prompts


def test_act_batch_equals_act(demo: Dataset) -> None:
    policy = make_policy("learned")
    env = MedSegEnv(dataset=demo, segmenter="classical")
    pairs = [env.reset(options={"sample_index": i}) for i in (1, 2, 40)]
    batch = policy.act_batch([o for o, _ in pairs], [i for _, i in pairs])
    for (obs, info), action in zip(pairs, batch, strict=True):
        one = policy.act(obs, info)
        assert one["kind"] == action["kind"]
        assert np.array_equal(one["point"], action["point"])
        assert np.array_equal(one["box"], action["box"])


def test_learned_runs_through_medseg_bench(tmp_path) -> None:
    """``medseg-bench`` plays the shipped agents with no options on a small subset; they stop
    by themselves within their horizon and send no invalid prompt."""
    import csv

    from medseg_bench.cli import main

    out = tmp_path / "bench"
    argv = ["run", "-p", "learned", "learned_bc", "-d", "demo", "--limit", "3", "--subset"]
    argv += ["first", "-s", "classical", "--no-progress", "--no-plots", "--out", str(out)]
    assert main(argv) == 0
    with open(out / "episodes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    finals = {}
    for row in rows:
        assert row["invalid"] == "", row
        finals[(row["policy"], row["sample_id"])] = row
    assert {p for p, _ in finals} == {"learned", "learned_bc"} and len(finals) == 6
    for row in finals.values():
        assert 1 <= int(row["turns"]) <= 5 and row["stopped"] == "true"
        assert 0.0 <= float(row["final_dice"]) <= 1.0
    # the agent segments its targets rather than stopping at once
    assert max(float(r["final_dice"]) for r in finals.values()) > 0.5

"""The learned agent's recipe (``medseg_agents.training.learned``): a few real steps of each
stage on a small split of ``demo`` with the weight-free ``classical`` backend."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medseg_agents.learned import LearnedPolicy, load_checkpoint
from medseg_agents.training.learned import imitation, recipe
from medseg_agents.training.learned.data import orient, oriented, train_val
from medseg_agents.training.learned.grpo import GRPOSettings, advantages
from medseg_agents.training.learned.rollout import Episode
from medseg_env.data import Dataset, load_dataset

TINY = recipe.RecipeConfig(
    segmenter="classical",
    orientations=2,
    per_sample=1,
    crop=128,
    width=4,
    sft_steps=4,
    sft_batch=8,
    sft_eval_every=2,
    rl_iterations=2,
    rl_eval_every=1,
    grpo=GRPOSettings(targets=2, group=2, epochs=1, minibatch=16),
)


@pytest.fixture(scope="module")
def few(demo: Dataset) -> Dataset:
    """Two brain slices and two nuclei tiles: 4 groups (images), so both splits are non-empty."""
    picks = [s for s in demo if s.source_id.startswith("brain1")][:2]
    nuclei = [s for s in demo if s.source_id.startswith("nuclei")]
    images = {}
    for s in nuclei:
        images.setdefault(id(s.image), s)
    return Dataset(picks + list(images.values())[:3], "few")


def curve(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_split_refuses_the_heldout_set_and_orients_every_sample() -> None:
    with pytest.raises(ValueError, match="held out"):
        train_val("demo-heldout")
    train, val = train_val("demo", orientations=8)
    ids = {s.sample_id.split("@")[0] for s in train}
    assert ids.isdisjoint({s.sample_id.split("@")[0] for s in val})
    assert len(train) == 8 * len(ids)
    demo = load_dataset("demo")
    one = demo[0]
    for k in range(8):
        turned = oriented(demo, [0], 8, "x")[k]
        assert turned.mask.sum() == one.mask.sum()
        assert np.array_equal(turned.image, orient(one.image, k))
    assert len({orient(one.mask, k).tobytes() for k in range(8)}) == 8  # all 8 differ


def test_group_advantages() -> None:
    eps = []
    for ret in (1.0, 0.0, 0.5, 0.5):
        e = Episode(0)
        e.rewards = [ret]
        eps.append(e)
    adv = advantages(eps, group=2)
    assert np.allclose(adv, [1.0, -1.0, 0.0, 0.0])  # the second group scored alike: no signal


def test_a_run_trains_both_stages_writes_curves_and_resumes_exactly(
    tmp_path, monkeypatch, few
) -> None:
    torch.set_num_threads(1)
    whole = recipe.train(tmp_path / "whole", TINY, log=lambda *_: None, dataset=few)
    for stage, steps in (("sft", ["0", "2", "4"]), ("rl", ["0", "1", "2"])):
        rows = curve(tmp_path / "whole" / stage / "curve.csv")
        assert [r["step" if stage == "sft" else "iteration"] for r in rows] == steps
        assert 0.0 <= float(rows[-1]["val_dice"]) <= 1.0
    assert (tmp_path / "whole" / "curves.png").stat().st_size > 1000
    assert set(whole["seconds"]) == {"data", "baselines", "sft", "rl"}
    assert set(whole["baselines"]) == set(recipe.BASELINES)
    assert all(0 <= b["val_dice"] <= 1 for b in whole["baselines"].values())
    sft, _ = load_checkpoint(tmp_path / "whole" / "sft" / "best")
    torch.manual_seed(TINY.seed)
    fresh = type(sft)(sft.spec)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(sft.state_dict().values(), fresh.state_dict().values(), strict=True)
    ]
    assert any(changed)  # imitation moved the weights
    assert LearnedPolicy(path=tmp_path / "whole" / "rl" / "best").spec == TINY.spec

    # A run stopped after the first imitation chunk resumes from its state and ends where the
    # uninterrupted run ended.
    calls = {"n": 0}
    real = imitation.bc_steps

    def stop_after_one(*args, **kwargs):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(imitation, "bc_steps", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(tmp_path / "cut", TINY, log=lambda *_: None, dataset=few)
    assert [r["step"] for r in curve(tmp_path / "cut" / "sft" / "curve.csv")] == ["0", "2"]
    monkeypatch.setattr(imitation, "bc_steps", real)
    recipe.train(tmp_path / "cut", TINY, log=lambda *_: None, dataset=few)
    assert [r["step"] for r in curve(tmp_path / "cut" / "sft" / "curve.csv")] == ["0", "2", "4"]
    for stage in ("sft", "rl"):
        a, _ = load_checkpoint(tmp_path / "whole" / stage / "best")
        b, _ = load_checkpoint(tmp_path / "cut" / stage / "best")
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y)

    other = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert other["sft_steps"] == 4
    with pytest.raises(ValueError, match="another config"):
        recipe.train(tmp_path / "cut", recipe.RecipeConfig(segmenter="classical"), dataset=few)

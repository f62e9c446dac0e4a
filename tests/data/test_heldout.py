"""The held-out flag (``Dataset.heldout``) and the one guard every trainer and exporter uses
(``medseg_env.data.refuse_heldout``)."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from medseg_env.data import Dataset, load_dataset, load_manifest, refuse_heldout


def test_the_bundled_held_out_split_is_flagged_and_demo_is_not(demo: Dataset) -> None:
    heldout = load_dataset("demo-heldout")
    assert heldout.heldout and not demo.heldout
    # what is cut from it stays held out
    assert heldout[:3].heldout
    assert heldout.filter(modality="CT").heldout
    assert demo[:2].concat(heldout[:1]).heldout and (demo[:2] + demo[2:4]).heldout is False
    assert "heldout=True" in repr(heldout) and "heldout" not in repr(demo)


def test_refuse_heldout_names_the_dataset_and_the_option(demo: Dataset) -> None:
    refuse_heldout(demo, "medseg-train ppo --dataset")  # a training set passes
    with pytest.raises(ValueError, match=r"^medseg-train ppo --dataset: dataset 'demo-heldout'"):
        refuse_heldout(load_dataset("demo-heldout"), "medseg-train ppo --dataset")


def test_a_manifest_can_flag_its_data_held_out(tmp_path) -> None:
    folder = resources.files("medseg_env.data").joinpath("demo_heldout")
    doc = {"format": "npz", "items": [{"path": str(folder.joinpath("brain2_z008.npz"))}]}
    for flag in (True, False):
        path = tmp_path / f"m{flag}.json"
        path.write_text(json.dumps({**doc, "heldout": flag}))
        assert load_manifest(path).heldout is flag
    path.write_text(json.dumps({**doc, "heldout": "yes"}))
    with pytest.raises(
        ValueError, match="'heldout' = \"yes\" \\(a string\\) must be true or false"
    ):
        load_manifest(path)


def test_the_flag_must_be_a_bool(demo: Dataset) -> None:
    with pytest.raises(ValueError, match="heldout must be True or False"):
        Dataset(demo.samples[:1], "x", heldout=1)  # type: ignore[arg-type]

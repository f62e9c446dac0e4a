"""The click fine-tuning recipe's pieces (``medseg_agents.training.click_model``).

No test needs the downloaded training sources: the tumour-slice tests write a small synthetic
pyradiomics case, the evaluation tests read the bundled held-out split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg_agents.training.click_model.data import (
    EVERY_SLICE,
    HELDOUT_SOURCES,
    INPUT,
    HeldOutLeakError,
    Item,
    check_no_heldout,
    dihedral,
    tumour_items,
    zoom_out,
)
from medseg_agents.training.click_model.evaluate import (
    at,
    build_parser,
    bundled_heldout,
    load_heldout,
)
from medseg_agents.training.click_model.loop import weights_metadata
from medseg_agents.training.click_model.losses import click_loss, regression_loss, target_frame
from medseg_agents.training.click_model.prompting import (
    click_prompts,
    jitter_box,
    random_error_click,
)
from medseg_agents.training.click_model.train import FAMILY_WEIGHTS, family_weights
from medseg_env.data.demo import build_demo


def test_click_loss_rewards_logits_that_agree_with_the_clicks():
    gt = np.zeros((128, 128), bool)  # a 128-px image: clicks scale by 2 to the 256 frame
    clicks = [[(20, 10, True), (60, 100, False)]]  # (row, col, positive)
    agree = torch.full((1, 1, INPUT, INPUT), -8.0)
    agree[0, 0, 41, 21] = 8.0  # the positive click at (x=10.5, y=20.5) -> (col 21, row 41)
    disagree = -agree
    low, high = click_loss(agree, clicks, [gt]), click_loss(disagree, clicks, [gt])
    assert low.item() < 0.01 < 5 < high.item()
    # no clicks yet (a box-only first round): zero, and still part of the graph
    logits = torch.zeros(1, 1, INPUT, INPUT, requires_grad=True)
    empty = click_loss(logits, [[]], [gt])
    assert empty.item() == 0.0 and empty.requires_grad


def test_family_weights_override_only_the_named_sources():
    shares = family_weights("stardist=0.35,procedural=0.15")
    assert shares["stardist"] == 0.35 and shares["procedural"] == 0.15
    assert shares["pyradiomics"] == FAMILY_WEIGHTS["pyradiomics"]
    assert family_weights("") == FAMILY_WEIGHTS
    with pytest.raises(argparse.ArgumentTypeError, match="'brain2'"):
        family_weights("brain2=1")


def test_regression_loss_penalises_only_a_round_that_got_worse():
    assert regression_loss(torch.tensor([0.5, 0.9]), None).item() == 0.0  # the first round
    better = regression_loss(torch.tensor([0.9, 0.95]), torch.tensor([0.8, 0.9]))
    worse = regression_loss(torch.tensor([0.6, 0.95]), torch.tensor([0.8, 0.9]))
    assert better.item() == 0.0
    assert worse.item() == pytest.approx(0.1)  # (0.2 + 0) / 2


def test_weights_metadata_records_the_recipe_and_a_warm_start(tmp_path):
    init = tmp_path / "stage1.safetensors"
    init.write_bytes(b"stage-1 weights")
    keys = dict(
        seed=3, data_seed=0, iters=200, batch=4, lr=1e-4, min_rounds=1, max_rounds=5,
        last_weight=3.0, p_box=0.6, p_exact=0.5, p_grad=1.0, p_no_mask=0.2, click_weight=0.2,
        warmup=10, zoom_outs=2, box_weight=3.0, family_weights=dict(FAMILY_WEIGHTS),
        regress_weight=3.0,
    )  # fmt: skip
    cold = weights_metadata(argparse.Namespace(**keys, init=None), ["a", "b"])
    assert json.loads(cold["recipe"])["regress_weight"] == 3.0
    assert json.loads(cold["items"]) == ["a", "b"] and "init_sha256" not in cold
    warm = weights_metadata(argparse.Namespace(**keys, init=init), ["a"])
    assert warm["init_sha256"] == hashlib.sha256(b"stage-1 weights").hexdigest()


def test_zoom_out_shrinks_the_lesion_and_keeps_it_aligned():
    rng = np.random.default_rng(0)
    grey = np.full((256, 256), 40, np.uint8)
    seg = np.zeros((256, 256), bool)
    seg[100:140, 90:150] = True
    grey[seg] = 200
    g, m = zoom_out(grey, seg, rng)
    assert g.shape == grey.shape and g.dtype == np.uint8 and m.shape == seg.shape
    assert 0.45**2 * seg.sum() * 0.8 <= m.sum() <= 0.8**2 * seg.sum() * 1.2
    assert g[m].mean() > 180 and g[~m].mean() < 60  # the mask still sits on the bright lesion


def test_dihedral_gives_eight_distinct_views():
    a = np.arange(12).reshape(3, 4)
    views = {dihedral(a, k).tobytes() + bytes(dihedral(a, k).shape) for k in range(8)}
    assert len(views) == 8


def test_held_out_cases_are_refused_for_training():
    ok = Item("brain1_z010_d0", "pyradiomics:brain1", np.zeros((4, 4, 3), np.uint8))
    check_no_heldout([ok])
    leaks = [*sorted(HELDOUT_SOURCES), "pyradiomics:lung2_zoom"]  # exact names and look-alikes
    for source in leaks:
        with pytest.raises(HeldOutLeakError, match="held-out") as caught:
            check_no_heldout([ok, Item("x", source, ok.image)])
        assert source in str(caught.value)  # names what leaked
        # a real exception (kept under `python -O`), and a ValueError to generic handlers
        assert isinstance(caught.value, ValueError)
        assert not isinstance(caught.value, AssertionError)


def test_jitter_box_stays_near_the_exact_box_and_inside_the_image():
    mask = np.zeros((50, 80), bool)
    mask[10:30, 5:75] = True
    box = jitter_box(mask, np.random.default_rng(0))
    exact = np.array([5, 10, 75, 30], np.float32)  # x0, y0, x1, y1 pixel edges
    assert np.all(np.abs(box - exact) <= [3.5, 1, 3.5, 1])  # <= 5 % of the side
    assert 0 <= box[0] and box[2] <= 80 and 0 <= box[1] and box[3] <= 50


def test_target_frame_letterboxes_like_the_model_input():
    mask = np.zeros((64, 128), bool)
    mask[:, :8] = True
    frame = target_frame(mask)
    assert frame.shape == (1, INPUT, INPUT)
    assert frame[0, :128, :16].all() and frame.sum() == 128 * 16  # 2x, padded below


# --- tumour slices from a synthetic pyradiomics case -----------------------------------------


def fake_pyradiomics(root: Path, cases=("brain1",)) -> Path:
    """A small pyradiomics tree: a 32×32×10 volume per case, a tumour on 8 slices."""
    nrrd = pytest.importorskip("nrrd")
    data = root / "pyradiomics" / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(1)
    header = {"space directions": np.diag([0.5, 0.5, 3.0])}
    for case in cases:
        vol = rng.normal(300, 50, (32, 32, 10)).astype(np.int16)
        lab = np.zeros(vol.shape, np.uint8)
        lab[10:16, 5:12, 1:9] = 1
        vol[lab > 0] += 600
        nrrd.write(str(data / f"{case}_image.nrrd"), vol, header)
        nrrd.write(str(data / f"{case}_label.nrrd"), lab, header)
    return root / "pyradiomics"


def test_tumour_case_honours_max_slices_without_touching_globals(tmp_path):
    pyrad = fake_pyradiomics(tmp_path)
    before = build_demo.MAX_SLICES
    demo = build_demo.tumour_case("brain1", pyrad)
    every = build_demo.tumour_case("brain1", pyrad, max_slices=EVERY_SLICE)
    two = build_demo.tumour_case("brain1", pyrad, max_slices=2)
    assert build_demo.MAX_SLICES == before == 6  # no module global was changed
    assert len(demo) == before and len(every) == 8 and len(two) == 2
    assert {stem for stem, _ in demo} < {stem for stem, _ in every}
    again = build_demo.tumour_case("brain1", pyrad)  # the default still gives the demo's spread
    assert [stem for stem, _ in again] == [stem for stem, _ in demo]


def test_training_takes_every_tumour_slice(tmp_path):
    pyrad = fake_pyradiomics(tmp_path, cases=("brain1", "lung1", "breast1"))
    before = build_demo.MAX_SLICES
    items = tumour_items(pyrad, np.random.default_rng(0), 0, 0, np.random.default_rng(1))
    assert build_demo.MAX_SLICES == before
    assert len(items) == 3 * 8 * 8  # 3 cases x 8 slices x 8 dihedral views
    assert {it.source for it in items} == {
        f"pyradiomics:{c}" for c in ("brain1", "lung1", "breast1")
    }
    check_no_heldout(items)


# --- evaluation ------------------------------------------------------------------------------


def test_eval_refuses_training_tiles(tmp_path):
    labels = np.zeros((8, 8), np.uint16)
    labels[2:5, 2:5] = 1
    np.savez(
        tmp_path / "nuclei_r128_c000.npz",
        imgs=np.zeros((8, 8, 3), np.uint8),
        gts=labels,
        source_id="nuclei",
    )
    with pytest.raises(ValueError, match="rows < 256 are training data"):
        load_heldout(tmp_path, 0, 0)


def test_eval_reads_the_bundled_held_out_split_by_default(tmp_path):
    args = build_parser().parse_args(["--out", str(tmp_path)])
    assert args.heldout == bundled_heldout()
    assert (args.heldout / "PROVENANCE.md").is_file()
    targets = load_heldout(args.heldout, 0, 0)
    groups = [t["group"] for t in targets]
    assert groups.count("tumour") == 9 and groups.count("nuclei") == 75
    subset = load_heldout(args.heldout, 5, 0)
    assert [t["group"] for t in subset].count("nuclei") == 5
    other = build_parser().parse_args(["--out", str(tmp_path), "--heldout", str(tmp_path)])
    assert other.heldout == tmp_path


def test_curve_value_after_an_early_stop_is_the_last_one():
    assert at([0.5, 0.8, 0.95], 1) == 0.5
    assert at([0.5, 0.8, 0.95], 5) == 0.95


def test_clicks_are_the_simulated_users_clicks_and_become_pixel_centre_prompts():
    """One click convention: ``(row, col, positive)`` (``medseg_agents.simulation.Click``),
    as the RITM rule draws it; ``click_prompts`` puts each at its pixel's centre in (x, y)."""
    gt = np.zeros((32, 48), bool)
    gt[10:20, 30:40] = True
    pred = np.zeros_like(gt)
    row, col, positive = random_error_click(
        pred, gt, np.zeros_like(gt), np.random.default_rng(0), 1
    )
    assert positive is True and gt[row, col]  # the RITM click: inside the missed target
    box = np.array([1.0, 2.0, 30.0, 20.0], np.float32)
    prompts = click_prompts([(row, col, positive), (3, 7, False)], box)
    assert prompts.points.tolist() == [[col + 0.5, row + 0.5], [7.5, 3.5]]
    assert prompts.labels.tolist() == [1, 0] and prompts.box.tolist() == box.tolist()
    empty = click_prompts([])
    assert empty.points.shape == (0, 2) and empty.labels.shape == (0,) and empty.box is None

"""Summary numbers on hand-made records: Dice@k padding, NoC, NoF, AUC, rates, HD95."""

from __future__ import annotations

import math

import pytest

from medseg_bench.records import EpisodeRecord, Step
from medseg_bench.summary import (
    dice_curves,
    episode_metrics,
    padded,
    summarize,
    summarize_group,
    value_at,
)


def record(
    ious: list[float],
    *,
    budget: int = 5,
    stopped: bool = False,
    modality: str = "CT",
    policy: str = "p",
    sample: str = "s",
    invalid: tuple[int, ...] = (),
    hd95: float = 1.0,
) -> EpisodeRecord:
    """An episode whose Dice is derived from its IoU (Dice = 2 IoU / (1 + IoU))."""
    steps = tuple(
        Step(
            turn=t,
            action="box",
            invalid="refused" if t in invalid else None,
            dice=2 * v / (1 + v),
            iou=v,
            nsd=v,
            hd95=hd95,
            num_clicks=0,
            num_boxes=1,
        )
        for t, v in enumerate(ious, start=1)
    )
    return EpisodeRecord(
        policy=policy,
        dataset="d",
        segmenter="m",
        sample_id=sample,
        sample_index=0,
        modality=modality,
        target="t",
        source_id="src",
        seed=0,
        budget=budget,
        stopped=stopped,
        steps=steps,
    )


def dice(iou: float) -> float:
    return 2 * iou / (1 + iou)


def test_padding_helpers():
    assert padded([0.1, 0.5], 4) == [0.1, 0.5, 0.5, 0.5]
    assert padded([0.1, 0.5], 1) == [0.1, 0.5]  # never truncated
    assert value_at([0.1, 0.5], 1) == 0.1
    assert value_at([0.1, 0.5], 5) == 0.5
    with pytest.raises(ValueError):
        padded([], 3)


def test_episode_metrics_of_an_early_stop():
    # Stops after turn 2 (IoU 0.9 reached at turn 2), budget 5.
    m = episode_metrics(record([0.5, 0.9], stopped=True))
    assert m["turns"] == 2 and m["stopped"] is True
    assert m["dice_t1"] == pytest.approx(dice(0.5))
    assert m["dice_t3"] == m["dice_t5"] == pytest.approx(dice(0.9))  # padded with the last
    assert m["final_dice"] == pytest.approx(dice(0.9))
    assert (m["noc80"], m["noc85"], m["noc90"]) == (2, 2, 2)
    assert m["reached90"] is True
    # AUC over the budget: [d(.5), d(.9), d(.9), d(.9), d(.9)] / 5
    assert m["auc_dice"] == pytest.approx((dice(0.5) + 4 * dice(0.9)) / 5)


def test_noc_counts_the_budget_when_never_reached():
    m = episode_metrics(record([0.5, 0.82, 0.84], budget=5, stopped=True))
    assert m["noc80"] == 2
    assert m["noc85"] == 5 and m["noc90"] == 5  # stopped early without reaching: the budget
    assert m["reached85"] is False


def test_group_numbers():
    recs = [
        record([0.5, 0.9], stopped=True, sample="a"),  # NoC 2/2/2
        record([0.81, 0.81, 0.86, 0.86, 0.86], sample="b", invalid=(2,)),  # 1/3/5
        record([0.0, 0.0, 0.0, 0.0, 0.0], sample="c", invalid=(1, 2, 3, 4, 5), hd95=math.inf),
    ]
    row = summarize_group(recs)
    assert row["n"] == 3 and row["budget"] == 5
    assert row["noc80"] == pytest.approx((2 + 1 + 5) / 3, abs=1e-6)
    assert row["noc85"] == pytest.approx((2 + 3 + 5) / 3, abs=1e-6)
    assert row["noc90"] == pytest.approx((2 + 5 + 5) / 3, abs=1e-6)
    assert (row["nof80"], row["nof85"], row["nof90"]) == (1, 1, 2)
    finals = [dice(0.9), dice(0.86), 0.0]
    assert row["dice_final_mean"] == pytest.approx(sum(finals) / 3, abs=1e-6)
    mean = sum(finals) / 3
    std = math.sqrt(sum((f - mean) ** 2 for f in finals) / 3)  # population std
    assert row["dice_final_std"] == pytest.approx(std, abs=1e-6)
    assert row["dice_t1_mean"] == pytest.approx((dice(0.5) + dice(0.81)) / 3, abs=1e-6)
    assert row["dice_t3_mean"] == pytest.approx((dice(0.9) + dice(0.86)) / 3, abs=1e-6)
    assert row["turns_mean"] == pytest.approx(4.0)
    assert row["stop_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert row["invalid_rate"] == pytest.approx(6 / 12, abs=1e-6)
    auc_a = (dice(0.5) + 4 * dice(0.9)) / 5
    auc_b = (2 * dice(0.81) + 3 * dice(0.86)) / 5
    assert row["auc_dice"] == pytest.approx((auc_a + auc_b) / 3, abs=1e-6)
    # HD95: the infinite one is counted, not averaged.
    assert row["hd95_final_mean"] == pytest.approx(1.0) and row["hd95_final_inf"] == 1


def test_rows_per_group_then_per_modality():
    recs = [
        record([0.9], policy="p1", sample="a", modality="MR"),
        record([0.5], policy="p1", sample="b", modality="CT"),
        record([0.7], policy="p0", sample="a", modality="MR"),
    ]
    rows = summarize(recs)
    idents = [(r["policy"], r["modality"], r["n"]) for r in rows]
    assert idents == [("p1", "all", 2), ("p1", "CT", 1), ("p1", "MR", 1), ("p0", "all", 1),
                      ("p0", "MR", 1)]  # fmt: skip
    assert rows[1]["dice_final_mean"] == pytest.approx(dice(0.5), abs=1e-6)


def test_dice_curves_are_padded_to_the_budget():
    curves = dice_curves([record([0.5], budget=3, sample="a"), record([0.5, 1.0], budget=3)])
    curve = curves[("p", "d", "m")]
    assert curve.shape == (2, 3)
    assert curve[0].tolist() == pytest.approx([dice(0.5)] * 3)
    assert curve[1].tolist() == pytest.approx([dice(0.5), 1.0, 1.0])

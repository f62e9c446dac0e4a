"""Aggregation of episode records into summary rows (pure functions, no I/O).

Conventions (all metrics come from ``medseg_env.metrics``):

- **Dice@k**: the Dice after turn ``k``; an episode that ended before turn ``k`` (stopped, or
  ``k`` beyond its budget) counts with its last value: a stopped episode keeps its mask.
  **Dice@final**: after the episode's last turn. Means and *population* standard deviations
  (ddof 0; 0 for a single episode) over the group's episodes.
- **NoC@t** (t = IoU 0.80, 0.85, 0.90): ``metrics.noc`` on the per-turn IoU curve with the
  episode's budget: the first turn whose IoU reaches t, the budget when none does (also when
  the policy stopped early without reaching it), as in RITM. Mean over episodes.
- **NoF@t**: the number of episodes that never reach t within the budget (``metrics.reached``).
- **AUC**: ``metrics.area_under_curve`` of the Dice-vs-turn curve padded with its last value
  up to the budget (so an early stop keeps its final Dice for the remaining turns and every
  curve of a group covers the same turns); mean over episodes, in [0, 1].
- **turns**: mean number of turns taken (the stop action counts as a turn);
  **stop_rate**: share of episodes the policy ended itself; **invalid_rate**: invalid
  actions / turns taken.
- **HD95@final**: mean over episodes whose HD95 is finite; ``hd95_final_inf`` counts the others
  (exactly one of mask and target empty), which would make a mean meaningless.

Text policies (``MedSeg-Text-v0``) add, for their groups only:

- **wellformed_rate**: replies that parsed into a call / replies (retried ones included);
- **dice_final_mean_eval**, **iou_final_mean_eval**: MedSAM-Agent's EVAL convention, where an
  episode that ends with no mask is *left out* of the means (``eval_left_out`` counts them);
  our ``dice_final_mean`` counts it as Dice 0. An empty final mask is one whose HD95 is
  infinite (the target is never empty);
- **turn_counts**: ``"turns:episodes"`` pairs, e.g. ``"1:3 2:10 5:7"``.

Rows come for each (policy, dataset, segmenter) with ``modality == "all"``, each followed by one
row per modality in that group (sorted), in the order the groups first appear in the records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from medseg_env import metrics

from .records import EpisodeRecord

IOU_THRESHOLDS = (0.80, 0.85, 0.90)
DICE_TURNS = (1, 3, 5)
ALL = "all"
DECIMALS = 6

Row = dict[str, Any]


def threshold_tag(threshold: float) -> str:
    """``0.85`` -> ``"85"``, for column names such as ``noc85``."""
    return f"{round(threshold * 100):d}"


def padded(values: Sequence[float], budget: int) -> list[float]:
    """``values`` extended with its last value up to ``budget`` entries (never truncated)."""
    if not values:
        raise ValueError("an episode has at least one turn")
    return [*values, *[values[-1]] * max(0, budget - len(values))]


def value_at(values: Sequence[float], turn: int) -> float:
    """The value after ``turn`` (1-based), or the last one when the curve is shorter."""
    return float(values[min(turn, len(values)) - 1])


def episode_metrics(record: EpisodeRecord) -> dict[str, Any]:
    """The episode-level numbers of one record (also the episode columns of ``episodes.csv``)."""
    dice, ious = record.series("dice"), record.series("iou")
    last = record.steps[-1]
    out: dict[str, Any] = {
        "turns": record.turns,
        "stopped": record.stopped,
        "invalid_actions": sum(s.invalid is not None for s in record.steps),
        "final_dice": last.dice,
        "final_iou": last.iou,
        "final_nsd": last.nsd,
        "final_hd95": last.hd95,
        "auc_dice": metrics.area_under_curve(padded(dice, record.budget)),
    }
    for t in DICE_TURNS:
        out[f"dice_t{t}"] = value_at(dice, t)
    for thr in IOU_THRESHOLDS:
        tag = threshold_tag(thr)
        out[f"noc{tag}"] = metrics.noc(ious, thr, record.budget)
        out[f"reached{tag}"] = metrics.reached(ious, thr, record.budget)
    return out


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _std(values: Sequence[float]) -> float:
    return float(np.std(values)) if len(values) else math.nan


def summarize_group(records: Sequence[EpisodeRecord]) -> Row:
    """The metric columns of one group of episodes (no identifying columns)."""
    if not records:
        raise ValueError("cannot summarise an empty group")
    eps = [episode_metrics(r) for r in records]
    row: Row = {"n": len(records), "budget": max(r.budget for r in records)}

    def col(name: str) -> list[float]:
        return [float(e[name]) for e in eps]

    for t in DICE_TURNS:
        row[f"dice_t{t}_mean"] = _mean(col(f"dice_t{t}"))
        row[f"dice_t{t}_std"] = _std(col(f"dice_t{t}"))
    row["dice_final_mean"] = _mean(col("final_dice"))
    row["dice_final_std"] = _std(col("final_dice"))
    row["iou_final_mean"] = _mean(col("final_iou"))
    row["nsd_final_mean"] = _mean(col("final_nsd"))
    row["nsd_final_std"] = _std(col("final_nsd"))
    finite = [v for v in col("final_hd95") if math.isfinite(v)]
    row["hd95_final_mean"] = _mean(finite) if finite else None
    row["hd95_final_inf"] = len(eps) - len(finite)
    for thr in IOU_THRESHOLDS:
        tag = threshold_tag(thr)
        row[f"noc{tag}"] = _mean(col(f"noc{tag}"))
        row[f"nof{tag}"] = sum(not e[f"reached{tag}"] for e in eps)
    row["turns_mean"] = _mean(col("turns"))
    row["stop_rate"] = _mean(col("stopped"))
    row["invalid_rate"] = sum(col("invalid_actions")) / sum(col("turns"))
    row["auc_dice"] = _mean(col("auc_dice"))
    if any(step.reply is not None for r in records for step in r.steps):
        row.update(_text_columns(records))
    return {k: _round(v) for k, v in row.items()}


def _text_columns(records: Sequence[EpisodeRecord]) -> Row:
    """The columns of text-policy groups: well-formed rate, the EVAL convention, turn counts."""
    replies = [s.parsed for r in records for s in r.steps if s.parsed is not None]
    replies += [retry["parsed"] for r in records for s in r.steps for retry in s.retries]
    well_formed = sum(parsed.get("call") is not None for parsed in replies)
    kept = [r for r in records if math.isfinite(r.steps[-1].hd95)]
    counts: dict[int, int] = {}
    for r in records:
        counts[r.turns] = counts.get(r.turns, 0) + 1
    return {
        "wellformed_rate": well_formed / len(replies) if replies else math.nan,
        "dice_final_mean_eval": _mean([r.steps[-1].dice for r in kept]),
        "iou_final_mean_eval": _mean([r.steps[-1].iou for r in kept]),
        "eval_left_out": len(records) - len(kept),
        "turn_counts": " ".join(f"{t}:{n}" for t, n in sorted(counts.items())),
    }


def _round(value: Any) -> Any:
    # Fixed precision keeps results files short and byte-stable; ints and None pass through.
    if isinstance(value, float):
        return round(value, DECIMALS)
    return value


def summarize(records: Iterable[EpisodeRecord]) -> list[Row]:
    """Summary rows: per (policy, dataset, segmenter), then per modality within it."""
    groups: dict[tuple[str, str, str], list[EpisodeRecord]] = {}
    for r in records:
        groups.setdefault((r.policy, r.dataset, r.segmenter), []).append(r)
    rows: list[Row] = []
    for (policy, dataset, segmenter), recs in groups.items():
        ident = {"policy": policy, "dataset": dataset, "segmenter": segmenter}
        rows.append({**ident, "modality": ALL, **summarize_group(recs)})
        for modality in sorted({r.modality for r in recs}):
            sub = [r for r in recs if r.modality == modality]
            rows.append({**ident, "modality": modality, **summarize_group(sub)})
    return rows


def dice_curves(records: Iterable[EpisodeRecord]) -> dict[tuple[str, str, str], np.ndarray]:
    """Per (policy, dataset, segmenter): ``(n_episodes, budget)`` padded Dice-vs-turn curves."""
    curves: dict[tuple[str, str, str], list[list[float]]] = {}
    for r in records:
        curves.setdefault((r.policy, r.dataset, r.segmenter), []).append(
            padded(r.series("dice"), r.budget)
        )
    out = {}
    for key, rows in curves.items():
        width = max(len(c) for c in rows)
        out[key] = np.array([padded(c, width) for c in rows], dtype=np.float64)
    return out


def summarize_timings(records: Iterable[EpisodeRecord]) -> list[Row]:
    """Wall time per (policy, dataset, segmenter), seconds: not reproducible by nature.

    ``step_s`` is the mean over turns of policy ``act`` plus env ``step`` time; ``act_s`` and
    ``env_s`` split it; ``reset_s`` is the mean env reset (an image encode on a cache miss).
    """
    groups: dict[tuple[str, str, str], list[EpisodeRecord]] = {}
    for r in records:
        groups.setdefault((r.policy, r.dataset, r.segmenter), []).append(r)
    rows = []
    for (policy, dataset, segmenter), recs in groups.items():
        act = [t for r in recs for t in r.timing.get("act", [])]
        env = [t for r in recs for t in r.timing.get("env", [])]
        steps = [a + e for a, e in zip(act, env, strict=True)]
        rows.append(
            {
                "policy": policy,
                "dataset": dataset,
                "segmenter": segmenter,
                "steps": len(steps),
                "step_s": _mean(steps),
                "act_s": _mean(act),
                "env_s": _mean(env),
                "reset_s": _mean([r.timing.get("reset", math.nan) for r in recs]),
                "total_s": float(sum(steps) + sum(r.timing.get("reset", 0.0) for r in recs)),
            }
        )
    return rows

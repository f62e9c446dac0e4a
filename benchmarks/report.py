"""Writing results: JSON, CSV, the Markdown table and the PNG figures.

Formatting is fixed so files are byte-stable: JSON with sorted keys and two-space indent,
CSV floats with 6 decimals (``inf`` for an infinite HD95, empty for "none"), booleans as
``true``/``false``, ``\\n`` line ends. Every file is written atomically (``records.atomic_write``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from medseg_env.render import overlay

from .config import BenchConfig
from .records import EpisodeKey, EpisodeRecord, atomic_write
from .summary import ALL, DICE_TURNS, IOU_THRESHOLDS, dice_curves, episode_metrics, threshold_tag

if TYPE_CHECKING:
    from .episode import FinalState

Row = dict[str, Any]
FLOAT_FORMAT = "{:.6f}"


# ---------------------------------------------------------------------------------------------
# JSON and CSV
# ---------------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf floats as None and tuples as lists: strict JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def dump_json(doc: Any) -> str:
    return json.dumps(jsonable(doc), indent=2, sort_keys=True, allow_nan=False) + "\n"


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return FLOAT_FORMAT.format(value)
    return str(value)


def to_csv(rows: Sequence[Row], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


EPISODE_COLUMNS = (
    "policy",
    "dataset",
    "segmenter",
    "sample_id",
    "sample_index",
    "modality",
    "target",
    "source_id",
    "seed",
    "budget",
)
STEP_COLUMNS = (
    "turn",
    "action",
    "invalid",
    "dice",
    "iou",
    "nsd",
    "hd95",
    "num_clicks",
    "num_boxes",
)


def episode_level_columns() -> tuple[str, ...]:
    noc = [f"noc{threshold_tag(t)}" for t in IOU_THRESHOLDS]
    reached = [f"reached{threshold_tag(t)}" for t in IOU_THRESHOLDS]
    return (
        "turns",
        "stopped",
        "invalid_actions",
        *[f"dice_t{t}" for t in DICE_TURNS],
        "final_dice",
        "final_iou",
        "final_nsd",
        "final_hd95",
        "auc_dice",
        *noc,
        *reached,
    )


def episodes_csv(records: Sequence[EpisodeRecord]) -> str:
    """Long format: one row per episode per turn; episode columns repeat on each row."""
    rows = []
    for r in records:
        ident = {c: getattr(r, c) for c in EPISODE_COLUMNS}
        episode = episode_metrics(r)
        for step in r.steps:
            rows.append({**ident, **step.__dict__, **episode})
    return to_csv(rows, (*EPISODE_COLUMNS, *STEP_COLUMNS, *episode_level_columns()))


TIMING_COLUMNS = (
    "policy",
    "dataset",
    "segmenter",
    "sample_id",
    "turns",
    "reset_s",
    "act_s",
    "env_s",
    "step_s_mean",
)


def timings_csv(records: Sequence[EpisodeRecord]) -> str:
    """One row per episode: seconds to reset, total seconds in ``act`` and in ``env.step``."""
    rows = [
        {
            "policy": r.policy,
            "dataset": r.dataset,
            "segmenter": r.segmenter,
            "sample_id": r.sample_id,
            "turns": r.turns,
            "reset_s": r.timing.get("reset"),
            "act_s": float(sum(r.timing.get("act", []))),
            "env_s": float(sum(r.timing.get("env", []))),
            "step_s_mean": (sum(r.timing.get("act", [])) + sum(r.timing.get("env", [])))
            / max(1, r.turns),
        }
        for r in records
    ]
    return to_csv(rows, TIMING_COLUMNS)


def summary_columns(rows: Sequence[Row]) -> list[str]:
    """Identifying columns, then every metric column in first-seen order (text policies add
    theirs; other rows leave them empty)."""
    ident = ["policy", "dataset", "segmenter", "modality"]
    seen = dict.fromkeys(k for row in rows for k in row if k not in ident)
    return ident + list(seen)


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def summary_table(rows: Sequence[Row]) -> str:
    """The metric rows as one Markdown table (Dice as mean ± std)."""
    header = ["Policy", "Dataset", "Segmenter", "Modality", "N", "Budget"]
    header += [f"Dice@{t}" for t in DICE_TURNS] + ["Dice@final", "NSD@final", "HD95 mm"]
    header += [f"NoC@{threshold_tag(t)}" for t in IOU_THRESHOLDS]
    header += [f"NoF@{threshold_tag(t)}" for t in IOU_THRESHOLDS]
    header += ["Turns", "AUC", "Invalid %"]
    body = []
    for r in rows:
        cells = [r["policy"], r["dataset"], r["segmenter"], r["modality"], str(r["n"])]
        cells.append(str(r["budget"]))
        cells += [_f(r[f"dice_t{t}_mean"]) for t in DICE_TURNS]
        cells.append(f"{_f(r['dice_final_mean'])} ± {_f(r['dice_final_std'])}")
        cells.append(_f(r["nsd_final_mean"]))
        hd = _f(r["hd95_final_mean"], 1)
        cells.append(hd + (f" ({r['hd95_final_inf']}×∞)" if r["hd95_final_inf"] else ""))
        cells += [_f(r[f"noc{threshold_tag(t)}"], 2) for t in IOU_THRESHOLDS]
        cells += [str(r[f"nof{threshold_tag(t)}"]) for t in IOU_THRESHOLDS]
        cells += [_f(r["turns_mean"], 2), _f(r["auc_dice"]), _f(100 * r["invalid_rate"], 1)]
        body.append(cells)
    return _table(header, body)


def grouped_tables(rows: Sequence[Row]) -> str:
    """``summary_table`` of the policies that see only the image and the hint, then (apart)
    that of the oracle policies, which read the ground truth (rows' ``oracle`` flag)."""
    free = [r for r in rows if not r.get("oracle")]
    oracle = [r for r in rows if r.get("oracle")]
    parts = []
    if free:
        parts += [
            "GT-free policies (they see the image and the user's hint):",
            "",
            summary_table(free),
        ]
    if oracle:
        if parts:
            parts.append("")
        parts += ["Oracle policies (they read the ground truth):", "", summary_table(oracle)]
    return "\n".join(parts)


def text_table(rows: Sequence[Row]) -> str:
    """Text policies: our convention beside MedSAM-Agent's EVAL one, well-formed replies."""
    header = ["Policy", "Dataset", "Segmenter", "N", "Dice@final (ours: empty = 0)"]
    header += ["Dice@final (EVAL: empty left out)", "Left out", "IoU@final (EVAL)"]
    header += ["Well-formed %", "Turns", "Turn counts"]
    body = [
        [
            r["policy"],
            r["dataset"],
            r["segmenter"],
            str(r["n"]),
            f"{_f(r['dice_final_mean'])} ± {_f(r['dice_final_std'])}",
            _f(r["dice_final_mean_eval"]),
            str(r["eval_left_out"]),
            _f(r["iou_final_mean_eval"]),
            _f(100 * r["wellformed_rate"], 1),
            _f(r["turns_mean"], 2),
            r["turn_counts"],
        ]
        for r in rows
        if "wellformed_rate" in r
    ]
    return _table(header, body)


def timing_table(timings: Sequence[Row]) -> str:
    header = ["Policy", "Dataset", "Segmenter", "Steps", "ms/step", "act ms", "env ms", "reset ms"]
    body = [
        [
            t["policy"],
            t["dataset"],
            t["segmenter"],
            str(t["steps"]),
            _f(1000 * t["step_s"], 1),
            _f(1000 * t["act_s"], 1),
            _f(1000 * t["env_s"], 1),
            _f(1000 * t["reset_s"], 1),
        ]
        for t in timings
    ]
    return _table(header, body)


def markdown_summary(rows: Sequence[Row], timings: Sequence[Row], config: BenchConfig) -> str:
    """``summary.md``: overall table, per-modality table, timing table and conventions."""
    overall = [r for r in rows if r["modality"] == ALL]
    by_modality = [r for r in rows if r["modality"] != ALL]
    limit = "all samples" if config.limit is None else f"{config.subset} {config.limit}/dataset"
    parts = [
        "# medseg-bench summary",
        "",
        f"Config `{config.hash()}`: seed {config.seed}, budget {config.budget} turns"
        + (f" (overrides: {dict(config.policy_budgets)})" if config.policy_budgets else "")
        + f", {limit}, obs {config.obs_size} px, NSD tolerance {config.nsd_tolerance_mm:g} mm.",
        "",
        grouped_tables(overall),
        "",
        "## By modality",
        "",
        grouped_tables(by_modality),
        "",
        *_text_section(overall),
        "## Wall time (varies between runs)",
        "",
        timing_table(timings),
        "",
        "Dice@k: Dice after turn k (an episode that ended earlier keeps its last value). "
        "NoC@t: mean first turn with IoU >= t, the budget when never reached. NoF@t: episodes "
        "never reaching IoU t. AUC: mean of the Dice-vs-turn curve padded to the budget with "
        "its last value. HD95: mean over finite values (n×∞: empty mask). Invalid %: invalid "
        "actions / turns. Std: population (ddof 0).",
        "",
    ]
    return "\n".join(parts)


def _text_section(overall: Sequence[Row]) -> list[str]:
    if not any("wellformed_rate" in r for r in overall):
        return []
    return [
        "## Text policies",
        "",
        text_table(overall),
        "",
        "Ours: an episode that ends with no mask counts as Dice 0. EVAL: MedSAM-Agent's "
        "evaluation leaves such episodes out of the means (their number: Left out). "
        "Well-formed: replies that parsed into a tool call.",
        "",
    ]


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No "Software" tag: the file then depends on the pixels only.
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def plot_dice_curves(records: Sequence[EpisodeRecord]) -> bytes:
    """Mean Dice vs turn (± 1 std band) per policy; one panel per (dataset, segmenter)."""
    curves = dice_curves(records)
    panels = list(dict.fromkeys((d, s) for _, d, s in curves))
    fig = Figure(figsize=(5.5 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (dataset, segmenter) in zip(axes, panels, strict=True):
        for (policy, d, s), curve in curves.items():
            if (d, s) != (dataset, segmenter):
                continue
            turns = np.arange(1, curve.shape[1] + 1)
            mean, std = curve.mean(axis=0), curve.std(axis=0)
            (line,) = ax.plot(turns, mean, marker=".", label=f"{policy} (n={len(curve)})")
            ax.fill_between(turns, mean - std, mean + std, color=line.get_color(), alpha=0.12)
        ax.set(title=f"{dataset} · {segmenter}", xlabel="turn", ylabel="Dice", ylim=(0, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def plot_examples(finals: Sequence[tuple[EpisodeKey, FinalState]]) -> bytes:
    """Grid of final masks with their prompts: one row per policy, one column per sample.

    The ground-truth outline is drawn in red on top of ``medseg_env.render.overlay``.
    """
    policies = list(dict.fromkeys(k[0] for k, _ in finals))
    samples = list(dict.fromkeys(k[3] for k, _ in finals))
    fig = Figure(figsize=(2.6 * len(samples), 2.8 * len(policies)), layout="constrained")
    axes = fig.subplots(len(policies), len(samples), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for key, state in finals:
        ax = axes[policies.index(key[0]), samples.index(key[3])]
        ax.imshow(overlay(state.image, state.mask, state.points, state.labels, state.box))
        ax.contour(state.ground_truth, levels=[0.5], colors="red", linewidths=0.6)
        ax.set_title(f"{key[0]}\n{key[3]}\nDice {state.dice:.3f}, {state.turns} turns", fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------------------


def write_outputs(
    out: Path,
    config: BenchConfig,
    records: Sequence[EpisodeRecord],
    rows: Sequence[Row],
    timings: Sequence[Row],
    results_doc: dict[str, Any],
    run_info: dict[str, Any],
    finals: Sequence[tuple[EpisodeKey, FinalState]] | None,
) -> dict[str, Path]:
    """Write every result file; returns them by name."""
    files = {
        "results.json": dump_json({**results_doc, "run": run_info}),
        "episodes.csv": episodes_csv(records),
        "timings.csv": timings_csv(records),
        "summary.csv": to_csv(rows, summary_columns(rows)),
        "summary.md": markdown_summary(rows, timings, config),
    }
    written = {}
    for name, text in files.items():
        atomic_write(out / name, text)
        written[name] = out / name
    if finals is not None:
        atomic_write(out / "dice_vs_turn.png", plot_dice_curves(records))
        written["dice_vs_turn.png"] = out / "dice_vs_turn.png"
        if finals:
            atomic_write(out / "examples.png", plot_examples(finals))
            written["examples.png"] = out / "examples.png"
    return written

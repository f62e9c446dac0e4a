"""``medseg-bench compare A B``: two result folders side by side, as a Markdown table.

Rows are the overall (``modality == "all"``) summary rows of either folder, matched on
(policy, dataset, segmenter); a row found in only one folder shows "–" for the other. Deltas
are B − A: for Dice higher is better, for NoC lower is better.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .config import BenchConfig, BenchError
from .summary import ALL

Key = tuple[str, str, str]
COLUMNS = (("dice_final_mean", "Dice@final", 3), ("noc85", "NoC@85", 2), ("noc90", "NoC@90", 2))


def load_results(folder: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a result folder; ``BenchError`` when missing or unreadable."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise BenchError(f"{folder} holds no results.json (not a medseg-bench result folder?)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise BenchError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or not {"summary", "config"} <= set(doc):
        raise BenchError(f"{path} is not a medseg-bench results file (no summary/config)")
    return doc


def _rows(doc: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {
        (r["policy"], r["dataset"], r["segmenter"]): r
        for r in doc["summary"]
        if r.get("modality") == ALL
    }


def _num(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _delta(a: Any, b: Any, digits: int) -> str:
    if a is None or b is None:
        return "–"
    return f"{b - a:+.{digits}f}"


def compare(folder_a: str | Path, folder_b: str | Path) -> str:
    """The comparison table (and notes on config differences) as Markdown text."""
    doc_a, doc_b = load_results(folder_a), load_results(folder_b)
    rows_a, rows_b = _rows(doc_a), _rows(doc_b)
    keys = list(rows_a) + [k for k in rows_b if k not in rows_a]
    header = ["Policy", "Dataset", "Segmenter", "N (A/B)"]
    for _, label, _ in COLUMNS:
        header += [f"{label} A", f"{label} B", f"Δ {label}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for key in keys:
        a, b = rows_a.get(key, {}), rows_b.get(key, {})
        cells = [*key, f"{a.get('n', '–')}/{b.get('n', '–')}"]
        for name, _, digits in COLUMNS:
            va, vb = a.get(name), b.get(name)
            cells += [_num(va, digits), _num(vb, digits), _delta(va, vb, digits)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    out = [f"A: {folder_a}", f"B: {folder_b}", "", *lines, ""]
    try:
        diff = BenchConfig.from_dict(doc_b["config"]).diff(BenchConfig.from_dict(doc_a["config"]))
    except (ValueError, TypeError):
        diff = ["(a config could not be read)"]
    if diff:
        out += ["Configs differ (B != A): " + "; ".join(diff), ""]
    return "\n".join(out)

"""The replay check: every exported row, read back from disk, replays to what was recorded.

Each exported trajectory's assistant turns, read back from the written files, are parsed and
replayed through a fresh text env on the same sample and seed; every turn's mask must match the
recorded one (Dice >= ``REPLAY_MIN_DICE``, ``medseg_env.metrics.dice``) and every reply the
recorded one, every row must equal the row rebuilt from the replay (texts and image names),
and every image file must hold the pixels its name says. Any failure raises
``ReplayCheckError`` naming the trajectories.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from medseg_env.data import Dataset
from medseg_env.env import MedSegEnv
from medseg_env.metrics import dice
from medseg_env.wrappers.text_env import MedSegTextEnv

from .config import ExportConfig, ExportError, ReplayCheckError
from .format import (
    DATA_FILES,
    build_rows,
    decode_mask,
    image_name,
    read_export_doc,
    read_rows,
    row_replies,
    row_trajectory,
    serialize,
)
from .journal import Entry, TrajectoryJournal
from .plan import load_export_dataset, make_plan
from .play import make_env

REPLAY_MIN_DICE = 0.99

# file -> (format, records, rows by trajectory id)
_Files = Mapping[str, tuple[str, str, Mapping[str, list[dict[str, Any]]]]]


@dataclass
class ReplayReport:
    """What the replay check saw: trajectories and turns replayed, the lowest mask Dice."""

    checked: int = 0
    turns: int = 0
    rows: int = 0
    min_dice: float = 1.0
    failures: list[tuple[str, str]] = field(default_factory=list)


def verify(
    out_dir: str | Path, *, progress: bool = False, dataset: Dataset | None = None
) -> ReplayReport:
    """Replay every trajectory of the dataset files in ``out_dir`` (see the module docstring).

    Raises:
        ExportError: the folder holds no export.
        ReplayCheckError: the trajectories that fail, each with its first problem.
    """
    out = Path(out_dir)
    try:
        config = ExportConfig.from_dict(read_export_doc(out)["config"])
    except (ValueError, TypeError) as err:
        raise ExportError(f"{out} holds no readable export ({err})") from err
    if dataset is None:
        dataset = load_export_dataset(config)
    plan = make_plan(dataset, config)
    journal = TrajectoryJournal(out).entries(plan, out, repair=False)  # a check writes nothing
    by_file: dict[str, tuple[str, str, dict[str, list[dict[str, Any]]]]] = {}
    for (fmt, rec), name in DATA_FILES.items():
        if (out / name).is_file():
            grouped: dict[str, list[dict[str, Any]]] = {}
            try:
                rows = read_rows(out / name)
            except ValueError as err:
                raise ReplayCheckError(str(err)) from None
            for row in rows:
                grouped.setdefault(row_trajectory(row["id"], rec), []).append(row)
            by_file[name] = (fmt, rec, grouped)
    if not by_file:
        raise ExportError(f"{out} holds no dataset file ({', '.join(DATA_FILES.values())})")
    ids = list(dict.fromkeys(t for _, _, g in by_file.values() for t in g))
    report = ReplayReport()
    checked_images: dict[str, str | None] = {}
    bar = tqdm(ids, disable=not progress, unit="traj", desc="replay-check", dynamic_ncols=True)
    try:
        for tid in bar:
            problem = _verify_one(tid, journal, by_file, config, dataset, out, checked_images)
            if isinstance(problem, str):
                report.failures.append((tid, problem))
                continue
            dices, rows_checked = problem
            report.checked += 1
            report.turns += len(dices)
            report.rows += rows_checked
            report.min_dice = min([report.min_dice, *dices])
    finally:
        bar.close()
    if report.failures:
        shown = "; ".join(f"{tid}: {why}" for tid, why in report.failures[:10])
        more = len(report.failures) - 10
        raise ReplayCheckError(
            f"replay check failed for {len(report.failures)} of {len(ids)} exported "
            f"trajectories in {out}: {shown}" + (f"; and {more} more" if more > 0 else "")
        )
    return report


def _verify_one(
    tid: str,
    journal: Mapping[str, Entry],
    by_file: _Files,
    config: ExportConfig,
    dataset: Dataset,
    out: Path,
    checked_images: dict[str, str | None],
) -> str | tuple[list[float], int]:
    """The first problem of one trajectory, or its per-turn Dice and its number of rows."""
    entry = journal.get(tid)
    if entry is None or entry["skipped"] is not None:
        return "no recorded trajectory in the journal"
    replays: dict[tuple[str, ...], tuple[dict[str, Any], list[float]] | str] = {}
    dices: list[float] = []
    rows = 0
    for name, (fmt, rec, grouped) in by_file.items():
        got = grouped.get(tid, [])
        if not got:
            return f"missing from {name}"
        # Each file's replies: a trajectory row holds them all, a turn's row ends with its own.
        if rec == "trajectory":
            if len(got) != 1:
                return f"{len(got)} rows in {name}"
            replies = tuple(row_replies(fmt, got[0]))
        else:
            replies = tuple((row_replies(fmt, r) or [""])[-1] for r in got)
        if replies not in replays:
            replays[replies] = _replay_and_compare(entry, replies, config, dataset)
        result = replays[replies]
        if isinstance(result, str):
            return f"{name}: {result}"
        replayed, dices = result
        # Every row must be the row the replay gives, and its images what their names say.
        expected = build_rows(replayed, fmt, rec)
        if got != expected:
            return f"{name}: a row differs from the replay ({_first_difference(got, expected)})"
        rows += len(got)
        for image in (i for row in got for i in row["images"]):
            if image not in checked_images:
                checked_images[image] = _check_image(out, image)
            if checked_images[image] is not None:
                return f"{name}: {checked_images[image]}"
    return dices, rows


def _replay_and_compare(
    entry: Mapping[str, Any], replies: Sequence[str], config: ExportConfig, dataset: Dataset
) -> tuple[dict[str, Any], list[float]] | str:
    """Replay ``replies`` in a fresh text env: what they give and each turn's mask Dice
    against the recorded mask, or the first problem."""
    env = make_env(config, dataset)
    try:
        replayed, masks, error = _replay(env, entry, replies)
    finally:
        env.close()
    if error is not None:
        return error
    recorded = entry["turns"]
    if len(masks) != len(recorded):
        return f"{len(masks)} turns replayed, {len(recorded)} recorded"
    shape = entry["mask_shape"]
    dices = [dice(m, decode_mask(t["mask"], shape)) for m, t in zip(masks, recorded, strict=True)]
    for t, d in enumerate(dices):
        if d < REPLAY_MIN_DICE:
            return f"turn {t + 1}: replayed mask Dice {d:.4f} < {REPLAY_MIN_DICE} vs the recorded"
    for t, (reply, turn) in enumerate(zip(replies, recorded, strict=True)):
        if reply != turn["reply"]:
            return f"turn {t + 1}: the reply {reply!r} is not the recorded {turn['reply']!r}"
    return replayed, dices


def _replay(
    env: MedSegTextEnv, entry: Mapping[str, Any], replies: Sequence[str]
) -> tuple[dict[str, Any], list[np.ndarray], str | None]:
    """Step the replies through ``env``: the entry they give (prompts, replies) and the masks."""
    base = cast(MedSegEnv, env.unwrapped)
    messages, _ = env.reset(seed=entry["seed"], options={"sample_index": entry["sample_index"]})
    turns: list[dict[str, Any]] = []
    masks: list[np.ndarray] = []
    images: dict[str, Image.Image] = {}
    for t, reply in enumerate(replies):
        if base.episode_over:
            return {}, masks, f"the episode ended after turn {t}; the row has {len(replies)}"
        shown = serialize(messages, images)
        messages, _, terminated, truncated, info = env.step(reply)
        if info["format_error"] is not None:
            return {}, masks, f"turn {t + 1}: the reply gives no action ({info['format_error']})"
        turns.append({"prompt": shown, "reply": reply})
        masks.append(base.current_mask)
    if not base.episode_over:
        return {}, masks, f"the row ends after turn {len(replies)} but the episode goes on"
    return {"id": entry["id"], "turns": turns}, masks, None


def _check_image(out: Path, name: str) -> str | None:
    path = out / name
    try:
        with Image.open(path) as image:
            image.load()
            pixels = image.convert("RGB") if image.mode != "RGB" else image.copy()
    except (OSError, ValueError) as err:
        return f"image {name} is unreadable ({err})"
    if image_name(pixels) != name:
        return f"image {name} does not hold the pixels its name says"
    return None


def _first_difference(got: Any, expected: Any, path: str = "") -> str:
    if type(got) is not type(expected):
        return f"{path or 'row'}: {_short(got)} != {_short(expected)}"
    if isinstance(got, dict):
        for key in sorted(set(got) | set(expected)):
            if got.get(key) != expected.get(key):
                return _first_difference(got.get(key), expected.get(key), f"{path}.{key}")
    if isinstance(got, list):
        if len(got) != len(expected):
            return f"{path}: {len(got)} items, the replay gives {len(expected)}"
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return f"{path}: {_short(got)} != {_short(expected)}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

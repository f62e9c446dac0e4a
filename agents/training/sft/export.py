"""``export_sft``: plan, play (or resume) and write an SFT export, then replay-check it.

The trajectories play in this process, or on a Ray cluster (``ray=RayOptions(...)``,
``export-sft --ray``; ``distributed.py``); this process alone writes the folder either way.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from medseg_env import files
from medseg_env.cluster import Cluster, ClusterError, RayOptions, connect
from medseg_env.data import Dataset, data_fingerprint
from medseg_env.segmenters import shared_segmenter
from medseg_env.text import get_protocol

from .config import STYLES, ExportConfig, ExportError
from .format import (
    CONFIG_FILE,
    DATA_FILES,
    FORMAT,
    FORMATS,
    IMAGE_DIR,
    JOURNAL_FILE,
    LF_FILE,
    LF_INFO_FILE,
    LF_TURNS_FILE,
    RECORDS,
    STATS_FILE,
    build_rows,
    dataset_info,
    dump_json,
    image_names,
    jsonl,
    png_bytes,
)
from .journal import TrajectoryJournal
from .plan import TrajectorySpec, default_out_dir, load_export_dataset, make_plan
from .play import make_env, make_expert, play
from .verify import ReplayReport, verify

LOCK_FILE = ".medseg-sft.lock"


@dataclass
class ExportResult:
    """What ``export_sft`` did and wrote."""

    out_dir: Path
    config: ExportConfig
    planned: int
    exported: int
    skipped: int
    resumed: int
    executed: int
    turns: int
    images: int
    image_bytes: int
    files: dict[str, Path]
    file_bytes: int
    replay: ReplayReport

    def summary(self) -> str:
        return (
            f"{self.exported} trajectories ({self.turns} assistant turns) exported of "
            f"{self.planned} planned: {self.executed} run, {self.resumed} resumed, "
            f"{self.skipped} skipped (reasons in {STATS_FILE}); {self.images} image files "
            f"({self.image_bytes:,} bytes), {self.file_bytes:,} bytes with the rows. Replay check: "
            f"{self.replay.checked} trajectories ({self.replay.turns} turns) reproduced, min "
            f"Dice {self.replay.min_dice:.4f}."
        )


def export_sft(
    config: ExportConfig,
    out_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    formats: Sequence[str] = FORMATS,
    records: Sequence[str] = ("trajectory",),
    progress: bool = True,
    ray: RayOptions | None = None,
) -> ExportResult:
    """Export (or resume) the config's trajectories to ``out_dir``, then replay-check them.

    ``ray``: play the trajectories on a Ray cluster (a local Ray, or a cluster's address); the
    folder is the same as a local export's, and either kind resumes the other.

    Raises:
        ExportError: bad input, a held-out dataset or a folder of another export (nothing
            written), or a folder another export holds; with ``ray``, Ray missing (the message
            names the extra) or a cluster that cannot be reached (nothing written).
        ReplayCheckError: an exported trajectory does not replay (the files stay, for a look).
    """
    formats, records = _check_outputs(formats, records, limit)
    dataset = load_export_dataset(config)
    plan = make_plan(dataset, config)
    if not plan:
        raise ExportError(f"the {config.split!r} split of {config.dataset!r} has no samples")
    protocol = get_protocol(config.protocol)
    if "trajectory" in records and protocol.history_turns is not None:
        if protocol.history_turns < protocol.max_turns - 1:
            warnings.warn(
                f"protocol {protocol.name!r} shows {protocol.history_turns} past turns: its "
                "per-trajectory rows hold turns the model never sees; use records='turn'",
                stacklevel=2,
            )
    model_id = shared_segmenter(config.segmenter).model_id
    out = Path(out_dir) if out_dir is not None else default_out_dir(config, model_id)
    doc = {
        "format": FORMAT,
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "data": data_fingerprint(dataset, range(len(dataset))),
        "model": model_id,
    }
    _check_out_dir(out, doc)
    cluster: Cluster | None = None
    if ray is not None:
        try:
            cluster = connect(
                ray.address, num_cpus=ray.local_cpus(), echo=_say if ray.echo else None
            )
        except ClusterError as err:
            raise ExportError(str(err)) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        with files.folder_lock(out, LOCK_FILE, "SFT export"):
            _check_out_dir(out, doc)  # again: another export may have written it meanwhile
            files.atomic_write(out / CONFIG_FILE, dump_json(doc))
            (out / IMAGE_DIR).mkdir(exist_ok=True)
            journal = TrajectoryJournal(out)
            entries = journal.entries(plan, out, repair=True)
            chosen = plan[:limit] if limit is not None else plan
            todo = [s for s in chosen if s.id not in entries]
            resumed = len(chosen) - len(todo)
            played = (
                _play_here(config, dataset, todo)
                if cluster is None or ray is None
                else _play_on_ray(cluster, ray, config, doc, todo)
            )
            _run(journal, played, entries, resumed, len(chosen), progress)
            written = _write_outputs(out, [entries[s.id] for s in chosen], formats, records)
            report = verify(out, progress=progress, dataset=dataset)
    except files.FolderInUseError as err:
        raise ExportError(str(err)) from None
    finally:
        if cluster is not None:
            cluster.close()
    kept = [entries[s.id] for s in chosen if entries[s.id]["skipped"] is None]
    names = {p for e in kept for t in e["turns"] for p in image_names(t["prompt"])}
    image_bytes = sum((out / n).stat().st_size for n in names)
    return ExportResult(
        out_dir=out,
        config=config,
        planned=len(chosen),
        exported=len(kept),
        skipped=len(chosen) - len(kept),
        resumed=resumed,
        executed=len(todo),
        turns=sum(len(e["turns"]) for e in kept),
        images=len(names),
        image_bytes=image_bytes,
        files=written,
        file_bytes=image_bytes + sum(p.stat().st_size for p in written.values()),
        replay=report,
    )


def _check_outputs(
    formats: Sequence[str], records: Sequence[str], limit: int | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    formats, records = tuple(dict.fromkeys(formats)), tuple(dict.fromkeys(records))
    if not formats or not set(formats) <= set(FORMATS):
        raise ExportError(f"formats must be among {FORMATS}; got {list(formats)}")
    if not records or not set(records) <= set(RECORDS):
        raise ExportError(f"records must be among {RECORDS}; got {list(records)}")
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ExportError(f"limit must be an integer >= 1 or None; got {limit!r}")
    return formats, records


def _check_out_dir(out: Path, doc: Mapping[str, Any]) -> None:
    """Refuse a folder that holds another export (or other files of ours without a config)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output path {out} exists and is not a folder")
    path = out / CONFIG_FILE
    if not path.is_file():
        ours = [n for n in (JOURNAL_FILE, *DATA_FILES.values()) if (out / n).exists()]
        if ours:
            raise ExportError(f"{out} holds export files ({', '.join(ours)}) but no {CONFIG_FILE}")
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        old = ExportConfig.from_dict(saved["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise ExportError(f"{path} is unreadable ({err}); choose another --out folder") from err
    mine, theirs = doc["config"], old.to_dict()
    diff = [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in sorted(mine) if mine[k] != theirs[k]]
    if diff:
        raise ExportError(
            f"{out} holds an export of another config; differing keys (this != saved): "
            f"{'; '.join(diff)}. Choose another --out folder."
        )
    for key, what in (("data", "data"), ("model", "segmenter weights")):
        if saved.get(key) != doc[key]:
            raise ExportError(
                f"{out} holds an export of the same config on other {what}; choose another "
                "--out folder"
            )


Played = tuple[TrajectorySpec, tuple[dict[str, Any], dict[str, Image.Image]]]


def _say(text: str) -> None:
    tqdm.write(f"export-sft: {text}", file=sys.stderr)


def _play_here(
    config: ExportConfig, dataset: Dataset, todo: Sequence[TrajectorySpec]
) -> Iterator[Played]:
    """Play ``todo`` in this process, in order."""
    if not todo:
        return
    env = make_env(config, dataset)
    experts = {style: make_expert(config, style) for style, _ in config.mix}
    try:
        for spec in todo:
            try:
                yield spec, play(env, experts[spec.style], dataset, spec)
            except Exception as err:
                err.add_note(f"while exporting trajectory {spec.id} ({spec.style})")
                raise
    finally:
        env.close()


def _play_on_ray(
    cluster: Cluster,
    ray: RayOptions,
    config: ExportConfig,
    doc: Mapping[str, Any],
    todo: Sequence[TrajectorySpec],
) -> Iterator[Played]:
    """Play ``todo`` on Ray workers (``distributed.play_on_ray``), as they finish."""
    if not todo:
        return
    from .distributed import play_on_ray

    yield from play_on_ray(cluster, ray, config, doc["data"], doc["model"], todo)


def _run(
    journal: TrajectoryJournal,
    played: Iterator[Played],
    entries: dict[str, dict[str, Any]],
    resumed: int,
    total: int,
    progress: bool,
) -> None:
    """Write each played trajectory's images (first) and journal entry as it ends; a
    trajectory already in the journal (sent back twice by a retried worker) is skipped."""
    out = journal.path.parent
    bar = tqdm(
        total=total,
        initial=resumed,
        disable=not progress,
        unit="traj",
        desc="export-sft",
        dynamic_ncols=True,
    )
    try:
        for spec, (entry, images) in played:
            if spec.id in entries:
                continue
            for name, image in images.items():
                _write_image(out, name, image)
            journal.append(entry)
            entries[spec.id] = entry
            bar.set_postfix_str(f"{spec.style} {spec.sample_id}", refresh=False)
            bar.update(1)
    finally:
        bar.close()


def _write_image(out: Path, name: str, image: Image.Image) -> None:
    path = out / name
    if not path.is_file():
        files.atomic_write(path, png_bytes(image))


def _write_outputs(
    out: Path,
    entries: Sequence[Mapping[str, Any]],
    formats: Sequence[str],
    records: Sequence[str],
) -> dict[str, Path]:
    """Write the dataset files (plan order) and ``dataset_info.json``; remove the files of
    formats not asked for this time, so that every dataset file in the folder is checked."""
    kept = [e for e in entries if e["skipped"] is None]
    written: dict[str, Path] = {}
    for (fmt, rec), name in DATA_FILES.items():
        path = out / name
        if fmt in formats and rec in records:
            files.atomic_write(path, jsonl(row for e in kept for row in build_rows(e, fmt, rec)))
            written[name] = path
        else:
            path.unlink(missing_ok=True)
    lf_files = [n for n in (LF_FILE, LF_TURNS_FILE) if n in written]
    if lf_files:
        files.atomic_write(out / LF_INFO_FILE, dump_json(dataset_info(lf_files)))
        written[LF_INFO_FILE] = out / LF_INFO_FILE
    else:
        (out / LF_INFO_FILE).unlink(missing_ok=True)
    data_files = set(DATA_FILES.values())
    stats = {
        "trajectories": len(kept),
        "skipped": {e["id"]: e["skipped"] for e in entries if e["skipped"] is not None},
        "turns": sum(len(e["turns"]) for e in kept),
        "styles": {s: sum(e["style"] == s for e in kept) for s in STYLES},
        "final_dice_mean": float(np.mean([e["turns"][-1]["dice"] for e in kept])) if kept else 0,
        "rows": {
            name: path.read_bytes().count(b"\n")
            for name, path in written.items()
            if name in data_files
        },
    }
    files.atomic_write(out / STATS_FILE, dump_json(stats))
    written[STATS_FILE] = out / STATS_FILE
    return written

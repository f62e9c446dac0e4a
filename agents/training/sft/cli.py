"""``medseg-train export-sft``: the export's options and its command."""

from __future__ import annotations

import argparse
import sys
import time

from medseg_env.cluster import add_ray_arguments, ray_options
from medseg_env.prompting import prompting_rule_names
from medseg_env.text import registered_protocols

from .config import SPLIT_BY, SPLITS, ExportConfig, ReplayCheckError, parse_mix
from .export import export_sft
from .format import IMAGE_DIR, RECORDS
from .plan import OUT_DIR_ENV
from .verify import verify


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``export-sft``."""
    d = ExportConfig()
    p.add_argument("-d", "--dataset", default=d.dataset, help=f"dataset (default {d.dataset})")
    p.add_argument(
        "--split",
        choices=SPLITS,
        default=d.split,
        help="export one side of a seeded split that keeps each group (--split-by) on one "
        f"side, or all (default {d.split})",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help=f"share of the samples on the val side (default {d.val_fraction})",
    )
    p.add_argument(
        "--split-by",
        choices=SPLIT_BY,
        default=d.split_by,
        help="groups kept whole: the 2D image (by pixels) or sample.source_id (default image)",
    )
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seeds the split (0)")
    p.add_argument("--limit", type=int, help="export only the first N planned trajectories")
    p.add_argument(
        "--protocol",
        default=d.protocol,
        help=f"text protocol, one of {registered_protocols()} (default {d.protocol})",
    )
    p.add_argument(
        "--target-template",
        default=d.target_template,
        help=f"turn 1's target text (default {d.target_template!r})",
    )
    p.add_argument("-s", "--segmenter", default=d.segmenter, help=f"(default {d.segmenter})")
    p.add_argument(
        "--prompting",
        choices=prompting_rule_names(),
        default=d.prompting,
        help="the env's segmenter call (default: the protocol's own)",
    )
    p.add_argument("--obs-size", type=int, default=d.obs_size, help=f"(default {d.obs_size})")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the trajectories (0)")
    p.add_argument(
        "--mix",
        default=",".join(f"{s}={w:g}" for s, w in d.mix),
        help="style weights: box (box, then corrective clicks) and click (clicks only) "
        "(default %(default)s)",
    )
    p.add_argument(
        "--per-sample", type=int, default=d.per_sample, help="trajectories per sample (1)"
    )
    p.add_argument(
        "--tau", type=float, default=d.tau, help=f"min IoU gain of a kept action ({d.tau})"
    )
    p.add_argument(
        "--target-iou", type=float, default=d.target_iou, help=f"stop at this IoU ({d.target_iou})"
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=d.resamples,
        help=f"candidates per turn before the expert stops ({d.resamples})",
    )
    p.add_argument(
        "--box-jitter",
        type=float,
        default=d.box_jitter,
        help=f"first box jitter, fraction of its size ({d.box_jitter})",
    )
    p.add_argument(
        "--format", choices=("trl", "llamafactory", "both"), default="both", help="(both)"
    )
    p.add_argument(
        "--records",
        choices=("trajectory", "turn", "both"),
        default="trajectory",
        help="one row per trajectory, per turn, or both (trajectory)",
    )
    p.add_argument(
        "--out",
        help=f"output folder (default ${OUT_DIR_ENV}/<hash> or ~/.cache/medseg-env/sft/<hash>)",
    )
    p.add_argument("--verify", action="store_true", help="only replay-check the export in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_arguments(p, "play the trajectories")


def run(args: argparse.Namespace) -> int:
    """Run ``export-sft``: 0, or 1 when the replay check fails; bad input raises ``ValueError``
    (``ExportError``), which the CLI turns into status 2."""
    started = time.perf_counter()
    try:
        if args.verify:
            if not args.out:
                raise ValueError("--verify needs --out, the folder to check")
            report = verify(args.out, progress=not args.no_progress)
            print(
                f"Replay check passed: {report.checked} trajectories, {report.turns} turns, "
                f"{report.rows} rows, min Dice {report.min_dice:.4f}."
            )
            return 0
        config = ExportConfig(
            dataset=args.dataset,
            split=args.split,
            val_fraction=args.val_fraction,
            split_by=args.split_by,
            split_seed=args.split_seed,
            protocol=args.protocol,
            target_template=args.target_template,
            segmenter=args.segmenter,
            prompting=args.prompting,
            obs_size=args.obs_size,
            seed=args.seed,
            mix=parse_mix(args.mix),
            per_sample=args.per_sample,
            tau=args.tau,
            target_iou=args.target_iou,
            resamples=args.resamples,
            box_jitter=args.box_jitter,
        )
        formats = {"both": ("trl", "llamafactory")}.get(args.format, (args.format,))
        records = {"both": RECORDS}.get(args.records, (args.records,))
        result = export_sft(
            config,
            args.out,
            limit=args.limit,
            formats=formats,
            records=records,
            progress=not args.no_progress,
            ray=ray_options(args),
        )
    except ReplayCheckError as err:
        print(f"medseg-train export-sft: error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"Wall time {time.perf_counter() - started:.1f} s. Files in {result.out_dir}:")
    for name, path in sorted(result.files.items()):
        print(f"  {name} ({path.stat().st_size:,} bytes)")
    print(f"  {IMAGE_DIR}/ ({result.images} PNG files)")
    return 0

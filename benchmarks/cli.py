"""The ``medseg-bench`` command.

Usage::

    medseg-bench                       # = medseg-bench run: the default benchmark
    medseg-bench run [-p POLICY ...] [-d DATASET ...] [-s SEGMENTER ...] [--budget N]
                     [--budget POLICY=N] [--seed S] [--limit N] [--subset random|first]
                     [--obs-size PX] [--nsd-tolerance MM] [--out DIR] [--examples N]
                     [--no-plots] [--no-progress]
                     [--ray [ADDRESS] [--ray-workers N] [--ray-cpus C] [--ray-gpus G]]
    medseg-bench compare DIR_A DIR_B   # Markdown table of two result folders
    medseg-bench export-sft [...]      # deprecated: runs `medseg-train export-sft [...]`
    medseg-bench list                  # known policies, datasets and segmenters

Exit status: 0 done, 2 bad input (nothing written), 130 interrupted (re-run to resume);
``export-sft``: the status of ``medseg-train export-sft`` (1 when its replay check fails).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from medseg_env.cluster import RayOptions, add_ray_arguments, ray_options
from medseg_env.metrics import NSD_TOLERANCE_MM

from .config import (
    DEFAULT_BUDGET,
    DEFAULT_DATASETS,
    DEFAULT_OBS_SIZE,
    DEFAULT_SEGMENTERS,
    SUBSET_MODES,
    BenchConfig,
    BenchError,
)
from .summary import ALL

COMMANDS = ("run", "compare", "list", "export-sft")


def _budgets(values: Sequence[str]) -> tuple[int, dict[str, int]]:
    """``["10", "oracle_box=2"]`` -> ``(10, {"oracle_box": 2})``."""
    budget, per_policy = DEFAULT_BUDGET, {}
    for value in values:
        label, sep, number = value.rpartition("=")
        try:
            n = int(number)
        except ValueError:
            raise BenchError(f"--budget takes N or POLICY=N; got {value!r}") from None
        if sep:
            per_policy[label] = n
        else:
            budget = n
    return budget, per_policy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg-bench",
        description="Benchmark interactive-segmentation policies on medseg-env.",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run (or resume) a benchmark (the default command)")
    run.add_argument(
        "-p",
        "--policies",
        nargs="+",
        action="extend",
        metavar="POLICY",
        help="policy specs, e.g. ritm 'oracle_box:jitter_px=5' (default: every registered one)",
    )
    run.add_argument(
        "-d",
        "--datasets",
        nargs="+",
        action="extend",
        metavar="DATASET",
        help=f"dataset names or paths (default: {' '.join(DEFAULT_DATASETS)})",
    )
    run.add_argument(
        "-s",
        "--segmenters",
        nargs="+",
        action="extend",
        metavar="SEGMENTER",
        help="segmenter specs: a registered name, or name:key=value,... with the backend's "
        f"options, e.g. 'medsam2:checkpoint=/w/MedSAM2_latest.pt' "
        f"(default: {' '.join(DEFAULT_SEGMENTERS)})",
    )
    run.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="N|POLICY=N",
        help=f"turn budget for every policy (default {DEFAULT_BUDGET}) or for one; repeatable",
    )
    run.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    run.add_argument("--limit", type=int, help="at most N samples per dataset (default: all)")
    run.add_argument(
        "--subset",
        choices=SUBSET_MODES,
        default="random",
        help="with --limit: a seeded random subset (default) or the first N samples",
    )
    run.add_argument(
        "--obs-size",
        type=int,
        default=DEFAULT_OBS_SIZE,
        help=f"observation side, px (default {DEFAULT_OBS_SIZE})",
    )
    run.add_argument(
        "--target-hint",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="observations carry the point where the user says which object to segment (the "
        "env's target_hint option; on by default, as in MedSeg-v0); --no-target-hint leaves "
        "it out (the GT-free and learned policies then refuse to play)",
    )
    run.add_argument(
        "--hint-noise",
        type=float,
        default=0.0,
        help="the env's hint_noise: 0 (default) hints the innermost pixel; above 0, a "
        "realistic off-centre user point, as a fraction of the target's radius",
    )
    run.add_argument(
        "--nsd-tolerance",
        type=float,
        default=NSD_TOLERANCE_MM,
        help=f"NSD tolerance, mm (default {NSD_TOLERANCE_MM:g})",
    )
    run.add_argument(
        "--out",
        help="results folder (default: $MEDSEG_BENCH_DIR/<config-hash>-<weights-hash> or "
        "~/.cache/medseg-env/bench/<config-hash>-<weights-hash>)",
    )
    run.add_argument("--examples", type=int, default=4, help="samples in examples.png (default 4)")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    # the files written are those of a local run, and either kind of run resumes the other
    add_ray_arguments(run, "play the episodes")

    compare = sub.add_parser("compare", help="compare two result folders")
    compare.add_argument("dir_a")
    compare.add_argument("dir_b")
    sub.add_parser("list", help="list known policies, datasets and segmenters")
    sub.add_parser(
        "export-sft",
        help="deprecated, removed in the next release: use `medseg-train export-sft`",
        add_help=False,  # every argument, --help included, goes to medseg-train export-sft
    )
    return parser


def _export_sft(args: Sequence[str]) -> int:
    """``medseg-bench export-sft``, kept for one release: ``medseg-train export-sft`` with the
    same arguments, in a subprocess, since the benchmark never imports the training package
    (``medseg_agents.training``); its exit status."""
    print(
        "medseg-bench: 'medseg-bench export-sft' is deprecated and will be removed in the next "
        "release; use 'medseg-train export-sft' (the same options). Running it now.",
        file=sys.stderr,
        flush=True,
    )
    command = [sys.executable, "-m", "medseg_agents.training", "export-sft", *args]
    return subprocess.run(command, check=False).returncode


def _config(args: argparse.Namespace) -> BenchConfig:
    budget, per_policy = _budgets(args.budget)
    kwargs = {
        "policies": tuple(args.policies or ()),
        "budget": budget,
        "policy_budgets": per_policy,
        "seed": args.seed,
        "limit": args.limit,
        "subset": args.subset,
        "obs_size": args.obs_size,
        "nsd_tolerance_mm": args.nsd_tolerance,
        "target_hint": args.target_hint,
        "hint_noise": args.hint_noise,
    }
    if args.datasets:
        kwargs["datasets"] = tuple(args.datasets)
    if args.segmenters:
        kwargs["segmenters"] = tuple(args.segmenters)
    return BenchConfig(**kwargs)


def _ray_options(args: argparse.Namespace) -> RayOptions | None:
    try:
        return ray_options(args)
    except ValueError as err:
        raise BenchError(str(err)) from None


def _run(args: argparse.Namespace) -> int:
    from .report import grouped_tables
    from .runner import run_benchmark

    result = run_benchmark(
        _config(args),
        args.out,
        progress=not args.no_progress,
        plots=not args.no_plots,
        examples=args.examples,
        ray=_ray_options(args),
    )
    print(grouped_tables([r for r in result.summary if r["modality"] == ALL]))
    print()
    total = len(result.records)
    print(
        f"{total} episodes: {result.executed} run, {result.resumed} resumed from an earlier run "
        f"(config {result.config.hash()})."
    )
    print(f"Results in {result.out_dir}: " + ", ".join(sorted(result.files)))
    for name in ("dice_vs_turn.png", "examples.png"):
        if name in result.files:
            print(f"Plot: {result.files[name]}")
    return 0


def _list() -> int:
    from medseg_env.data import available_datasets
    from medseg_env.segmenters import registered_segmenters

    from .plan import known_policies

    print("policies:   " + " ".join(known_policies()))
    print("datasets:   " + " ".join(available_datasets()) + "  (or a path)")
    print("segmenters: " + " ".join(registered_segmenters()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["export-sft"]:
        return _export_sft(args_list[1:])
    # Plain `medseg-bench` (or options only) means `run`.
    if not args_list or (args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "run")
    args = build_parser().parse_args(args_list)
    try:
        if args.command == "compare":
            from .compare import compare

            print(compare(args.dir_a, args.dir_b))
            return 0
        if args.command == "list":
            return _list()
        return _run(args)
    except BenchError as err:
        print(f"medseg-bench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "medseg-bench: interrupted; run the same command again to resume "
            "(finished episodes are kept)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())

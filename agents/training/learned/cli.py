"""``medseg-train learned``: train the learned agent (SFT then RL) into a folder, resumably.

    medseg-train learned --out runs/learned          # the shipped agent's recipe
    medseg-bench run -p 'learned:path=runs/learned/rl/best' \
        -p 'learned_bc:path=runs/learned/sft/best'

Re-running the same command in the same folder resumes it; a folder of another config is
refused. See ``medseg_agents.training.learned.recipe`` for the stages and files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields, replace

from .grpo import GRPOSettings
from .recipe import RecipeConfig, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RecipeConfig()
    parser.add_argument(
        "--out", required=True, help="the run folder (created; resumed if it exists)"
    )
    parser.add_argument(
        "--stages", choices=("all", "sft"), default="all", help="sft: stop after the SFT stage"
    )
    parser.add_argument(
        "--embeddings",
        default=None,
        help="the embedding cache folder (default OUT/embeddings; runs can share one)",
    )
    for f in fields(RecipeConfig):
        if f.name == "grpo":
            continue
        value = getattr(defaults, f.name)
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(value),
            default=value,
            help=f"(default {value})",
        )
    for f in fields(GRPOSettings):
        value = getattr(defaults.grpo, f.name)
        parser.add_argument(
            f"--rl-{f.name.replace('_', '-')}",
            type=type(value),
            default=value,
            help=f"GRPO {f.name} (default {value})",
        )


def config_of(args: argparse.Namespace) -> RecipeConfig:
    values = {f.name: getattr(args, f.name) for f in fields(RecipeConfig) if f.name != "grpo"}
    settings = GRPOSettings(**{f.name: getattr(args, f"rl_{f.name}") for f in fields(GRPOSettings)})
    return replace(RecipeConfig(), **values, grpo=settings)


def run(args: argparse.Namespace) -> int:
    try:
        summary = train(args.out, config_of(args), args.stages, embeddings=args.embeddings)
    except ValueError as err:
        print(f"medseg-train learned: {err}", file=sys.stderr)
        return 2
    for stage in ("sft", "rl"):
        if stage in summary:
            print(f"{stage}: best validation Dice {summary[stage]['val_dice']:.3f}")
    print(f"wall time (s): {summary.get('seconds', {})}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medseg-train learned", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

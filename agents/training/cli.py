"""``medseg-train`` (also ``python -m medseg_agents.training``): one command for every trainer.

    medseg-train export-sft [...]          # expert trajectories -> SFT chat datasets (sft)
    medseg-train ppo --out runs/ppo        # the PPO agent (ppo)
    medseg-train learn-text --out DIR      # SFT then GRPO of the tiny Qwen3-VL (learn_text)
    medseg-train verl-data --out DIR       # verl's parquet rows (verl.verl_data)
    medseg-train click-model-train [...]   # the click-tuned LiteMedSAM (click_model.train)
    medseg-train click-model-eval [...]    # ... on the held-out split (click_model.evaluate)
    medseg-train learned --out DIR         # the learned agent: SFT then RL (learned.cli)

Each subcommand's module gives ``add_arguments(parser)`` and ``run(args) -> int`` (and a
``main(argv)`` of its own for ``python -m``), and is imported only when its subcommand runs, so
``medseg-train --help`` needs none of the trainers' dependencies (stable-baselines3, TRL,
verl). Bad input (a ``ValueError``, such as a held-out dataset) exits with status 2 and the
message; a failed replay check with 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

PROG = "medseg-train"
#: subcommand -> (module, one-line help)
COMMANDS = {
    "export-sft": (
        "medseg_agents.training.sft.cli",
        "export expert trajectories through the text env as SFT chat datasets",
    ),
    "ppo": ("medseg_agents.training.ppo", "train the PPO agent on MedSeg-v0 (stable-baselines3)"),
    "learn-text": (
        "medseg_agents.training.learn_text",
        "SFT then GRPO of the tiny offline Qwen3-VL in MedSeg-Text-v0 (TRL, CPU)",
    ),
    "verl-data": (
        "medseg_agents.training.verl.verl_data",
        "write verl's parquet rows for MedSeg-Text-v0 episodes",
    ),
    "click-model-train": (
        "medseg_agents.training.click_model.train",
        "fine-tune LiteMedSAM's prompt encoder and mask decoder for clicks",
    ),
    "click-model-eval": (
        "medseg_agents.training.click_model.evaluate",
        "evaluate the original and the click-tuned LiteMedSAM on the held-out split",
    ),
    "learned": (
        "medseg_agents.training.learned.cli",
        "train the learned agent (behaviour cloning, then GRPO) into a folder, resumably",
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train and export for medseg-env: every trainer of medseg_agents.training.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<19} {text}" for name, (_, text) in COMMANDS.items())
        + f"\n\n'{PROG} COMMAND --help' shows a command's options.",
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; its exit status (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1])  # prints the help, or the error for a bad command
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"{PROG} {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args))
    except ValueError as err:  # bad input: the message says what and how to fix it
        print(f"{PROG} {name}: error: {err}", file=sys.stderr)
        return 2

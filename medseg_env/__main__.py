"""``python -m medseg_env [demo|precompute] ...``.

- ``demo`` (the default, so ``python -m medseg_env --episodes 3`` works too): a few episodes of
  the oracle-box policy on the bundled demo data.
- ``precompute DATASET [DATASET ...] [-s SPEC] [--cache-dir DIR]``: encode every distinct
  image once into the on-disk embedding cache that later runs reuse
  (``medseg_env.precompute``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import gymnasium as gym
import numpy as np

import medseg_env  # noqa: F401  (registers the envs)
from medseg_env import actions, precompute
from medseg_env.geometry import box_from_mask

COMMANDS = ("demo", "precompute")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["precompute"]:
        return precompute.main(args[1:])
    if args[:1] == ["demo"]:
        args = args[1:]
    demo(args)
    return 0


def demo(argv: Sequence[str]) -> None:
    """A few episodes of the oracle-box policy on the bundled demo data."""
    parser = argparse.ArgumentParser(
        prog="python -m medseg_env [demo]",
        description=demo.__doc__,
        epilog="Other command: python -m medseg_env precompute --help",
    )
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    env = gym.make("MedSeg-v0")
    dices = []
    for episode in range(args.episodes):
        _, info = env.reset(seed=args.seed + episode)
        oracle = env.get_wrapper_attr("oracle")
        bbox = box_from_mask(oracle.ground_truth)
        if bbox is None:  # every sample has a target; unpacking None raised TypeError
            raise ValueError("the episode's ground truth is empty")
        r0, c0, r1, c1 = bbox
        _, _, _, _, info = env.step(actions.pixel_box(r0, c0, r1, c1, oracle.obs_size))
        env.step(actions.stop())
        dices.append(info["dice"])
        print(
            f"episode {episode}: {info['sample_id']:<32} {info['modality']:<11} "
            f"Dice {info['dice']:.3f}"
        )
    print(f"mean Dice over {len(dices)} episodes: {np.mean(dices):.3f}")


if __name__ == "__main__":
    sys.exit(main())

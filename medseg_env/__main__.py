"""``python -m medseg_env``: a few episodes of the oracle-box policy on the bundled demo data."""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import medseg_env  # noqa: F401  (registers the envs)
from medseg_env import actions
from medseg_env.geometry import box_from_mask


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
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
    main()

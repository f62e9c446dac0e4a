"""The imitation data: ``hybrid_expert`` trajectories, as the SFT export plays them.

The expert is ``HybridExpert`` built by the SFT export (``medseg-train export-sft``'s
``make_expert``) with its default settings and style mix: a jittered box then corrective
clicks (``box``, 70 %), or clicks only (``click``, 30 %), every corrective action checked to
raise the IoU by ``tau``, and a stop once the IoU reaches ``target_iou``. It plays the
structured env (``MedSeg-v0``, the canvas the small policy acts on) rather than the text env;
the actions are the same, without the 0-999 grid's rounding.

Every turn becomes one example: the policy's input at that turn (the hint window and the state
numbers, ``policy_planes``) and the expert's action as the heads' nearest choice
(``to_choice``; pixel-exact where ``cell = 1``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medseg_agents.baselines import hint_pixel
from medseg_agents.learned.network import PolicySpec, policy_planes, to_choice
from medseg_env.env import MedSegEnv
from medseg_env.seeding import stable_int

from ..sft.config import ExportConfig
from ..sft.play import make_expert


@dataclass
class Demonstrations:
    """Expert turns as arrays (row ``n`` is one turn).

    Attributes:
        planes: ``(N, 6, crop, crop)`` uint8 inputs; scalars: ``(N, 4)`` float32.
        kind: ``(N,)``; cell: ``(N, 2)``; edges: ``(N, 4)``: the expert's choices.
        episode: ``(N,)`` the trajectory each turn belongs to.
        dice: the expert's final Dice of each trajectory.
    """

    planes: np.ndarray
    scalars: np.ndarray
    kind: np.ndarray
    cell: np.ndarray
    edges: np.ndarray
    episode: np.ndarray
    dice: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    def at_cell(self, cell: int) -> Demonstrations:
        """The same turns with the choices at ``cell`` pixels per cell (collected at 1).

        A pixel's cell is its index divided by ``cell``, and a side's bin its distance divided
        by ``cell``: what ``to_choice`` gives at that resolution.
        """
        if cell == 1:
            return self
        return replace(self, cell=self.cell // cell, edges=self.edges // cell)

    def write(self, path: Path) -> None:
        """Write the arrays to ``path`` (an ``.npz`` archive, whatever the file's name)."""
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **self.__dict__)

    @classmethod
    def load(cls, path: str | Path) -> Demonstrations:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def collect(
    env: MedSegEnv,
    spec: PolicySpec,
    per_sample: int = 1,
    seed: int = 0,
    config: ExportConfig | None = None,
    progress: bool = True,
) -> Demonstrations:
    """``per_sample`` expert trajectories on every sample of ``env``'s dataset.

    The choices are recorded at pixel resolution (``cell = 1``) whatever ``spec.cell`` is;
    ``Demonstrations.at_cell`` gives them at a coarser one.

    Each trajectory's style and the expert's draws are seeded from ``(seed, sample id, k)``, as
    the SFT export seeds them, so the data do not depend on the order they are played in.
    """
    config = config or ExportConfig()
    spec = replace(spec, cell=1)
    styles = [s for s, _ in config.mix]
    weights = np.array([w for _, w in config.mix], float)
    cumulative = np.cumsum(weights / weights.sum())
    rows: dict[str, list] = {
        k: [] for k in ("planes", "scalars", "kind", "cell", "edges", "episode")
    }
    dice = []
    jobs = [(i, k) for i in range(len(env.dataset)) for k in range(per_sample)]
    for n, (index, k) in enumerate(tqdm(jobs, desc="expert", disable=not progress)):
        sample_id = env.dataset[index].sample_id
        u = (stable_int("learned-style", seed, sample_id, k) >> 10) / 2**53
        style = styles[int(np.searchsorted(cumulative, u, side="right").clip(0, len(styles) - 1))]
        expert = make_expert(config, style)
        expert.seed(stable_int("learned-expert", seed, sample_id, k))
        obs, info = env.reset(options={"sample_index": index})
        hint = hint_pixel(obs, info, "learned")
        done = False
        while not done:
            action = expert.act(obs, info, env)
            planes, scalars = policy_planes(obs, info, hint, spec)
            choice = to_choice(action, hint, spec)
            rows["planes"].append(planes)
            rows["scalars"].append(scalars)
            rows["kind"].append(choice.kind)
            rows["cell"].append(choice.cell)
            rows["edges"].append(choice.edges)
            rows["episode"].append(n)
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        dice.append(float(info["dice"]))
    return Demonstrations(
        planes=np.stack(rows["planes"]).astype(np.uint8),
        scalars=np.stack(rows["scalars"]).astype(np.float32),
        kind=np.array(rows["kind"], np.int64),
        cell=np.array(rows["cell"], np.int64).reshape(-1, 2),
        edges=np.array(rows["edges"], np.int64).reshape(-1, 4),
        episode=np.array(rows["episode"], np.int64),
        dice=np.array(dice, np.float32),
    )

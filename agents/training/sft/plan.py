"""Planning an SFT export: its dataset (never a held-out one), its split, every trajectory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_env.data import Dataset, load_dataset, refuse_heldout
from medseg_env.data.split import group_split
from medseg_env.files import default_folder
from medseg_env.seeding import stable_int

from .config import ExportConfig, ExportError

OUT_DIR_ENV = "MEDSEG_SFT_DIR"


@dataclass(frozen=True)
class TrajectorySpec:
    """One planned trajectory: ``k``-th of sample ``sample_index``."""

    id: str
    sample_index: int
    sample_id: str
    k: int
    seed: int
    style: str


def split_indices(dataset: Dataset, config: ExportConfig) -> list[int]:
    """The sample indices of ``config.split``, in dataset order.

    ``medseg_env.data.split.group_split`` with a generator seeded from ``split_seed`` and the
    dataset's name: no image (or source, with ``split_by="source"``) is on both sides.
    """
    if config.split == "all":
        return list(range(len(dataset)))
    rng = np.random.default_rng(stable_int("sft-split", config.split_seed, dataset.name))
    train, val = group_split(dataset, config.val_fraction, rng, config.split_by)
    return val if config.split == "val" else train


def make_plan(dataset: Dataset, config: ExportConfig) -> list[TrajectorySpec]:
    """Every trajectory of the config, sample-major in dataset order."""
    styles = [s for s, _ in config.mix]
    weights = np.array([w for _, w in config.mix], float)
    bounds = np.cumsum(weights / weights.sum())
    plan = []
    for i in split_indices(dataset, config):
        sample_id = dataset[i].sample_id
        for k in range(config.per_sample):
            seed = stable_int("sft", config.seed, config.dataset, sample_id, k)
            u = (stable_int("sft-style", config.seed, config.dataset, sample_id, k) >> 10) / 2**53
            style = styles[min(int(np.searchsorted(bounds, u, side="right")), len(styles) - 1)]
            plan.append(TrajectorySpec(f"{sample_id}#{k}", i, sample_id, k, seed, style))
    return plan


def default_out_dir(config: ExportConfig, model_id: str) -> Path:
    """``$MEDSEG_SFT_DIR/<name>``, else ``${XDG_CACHE_HOME:-~/.cache}/medseg-env/sft/<name>``:
    the config hash and 8 hex digits of the segmenter's weights id."""
    suffix = hashlib.sha256(model_id.encode()).hexdigest()[:8]
    return default_folder("sft", OUT_DIR_ENV) / f"{config.hash()}-{suffix}"


def load_export_dataset(config: ExportConfig) -> Dataset:
    """The config's dataset; a held-out one (``Dataset.heldout``) is refused."""
    try:
        dataset = load_dataset(config.dataset)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise ExportError(f"dataset {config.dataset!r}: {err}") from err
    try:
        refuse_heldout(dataset, "medseg-train export-sft --dataset")
    except ValueError as err:
        raise ExportError(str(err)) from None
    return dataset

"""Train/validation splits of a dataset by group, so no image (or source) is on both sides.

Used by the SFT export and the PPO trainer: models, runs and settings are chosen on a
validation split carved from the training data, never on ``demo-heldout``.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .dataset import Dataset

SPLIT_BY = ("image", "source")


def pixel_hash(image: np.ndarray) -> str:
    """24 hex digits of the SHA-256 of an array's dtype, shape and pixels."""
    head = f"{image.dtype}|{image.shape}|"
    return hashlib.sha256(head.encode() + np.ascontiguousarray(image).tobytes()).hexdigest()[:24]


def split_groups(dataset: Dataset, split_by: str) -> list[str]:
    """Each sample's group: its ``source_id`` (``"source"``) or its image's pixels (``"image"``)."""
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {list(SPLIT_BY)}; got {split_by!r}")
    if split_by == "source":
        return [s.source_id for s in dataset]
    keys: dict[int, str] = {}  # samples of one image share its (read-only) array
    out = []
    for sample in dataset:
        key = keys.get(id(sample.image))
        if key is None:
            key = pixel_hash(sample.image)
            keys[id(sample.image)] = key
        out.append(key)
    return out


def group_split(
    dataset: Dataset, val_fraction: float, rng: np.random.Generator, split_by: str = "image"
) -> tuple[list[int], list[int]]:
    """``(train, val)`` sample indices, each in dataset order; no group is on both sides.

    The groups (``split_groups``) are shuffled by ``rng``; each in turn joins ``val`` when that
    brings ``val`` closer to ``val_fraction`` of the samples.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1]; got {val_fraction!r}")
    groups = split_groups(dataset, split_by)
    sizes: dict[str, int] = {}
    for key in groups:
        sizes[key] = sizes.get(key, 0) + 1
    order = sorted(sizes)
    target, val_count, val = val_fraction * len(dataset), 0, set()
    for i in rng.permutation(len(order)):
        key = order[int(i)]
        if abs(val_count + sizes[key] - target) < abs(val_count - target):
            val.add(key)
            val_count += sizes[key]
    train = [i for i, key in enumerate(groups) if key not in val]
    return train, [i for i, key in enumerate(groups) if key in val]

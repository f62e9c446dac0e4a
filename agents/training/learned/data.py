"""The learned agent's data: the train/validation split of ``demo`` and its dihedral copies.

The split is the SFT export's (``medseg-train export-sft`` defaults: 20 % of the samples to
validation, by image, split seed 0), so the expert data and every choice come from the same
training images, and the validation images decide everything. ``demo-heldout`` is refused.

Each image is also shown in its 8 dihedral orientations (rotations by 90 degrees, with and
without a transpose). A rotated slice is still a plausible image, the targets and their hints
move with it, and it costs one encoder call per orientation (cached on disk by the recipe).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg_env.data import Dataset, Sample, load_dataset, refuse_heldout
from medseg_env.data.split import group_split

VAL_FRACTION = 0.2
SPLIT_SEED = 0
ORIENTATIONS = 8


def orient(array: np.ndarray, k: int) -> np.ndarray:
    """Dihedral orientation ``k`` (0..7) of an ``(H, W, ...)`` array: ``k % 4`` quarter turns,
    after a transpose of the two image axes when ``k >= 4``."""
    if not 0 <= k < ORIENTATIONS:
        raise ValueError(f"orientation must be in 0..7; got {k}")
    if k >= 4:
        array = np.swapaxes(array, 0, 1)
    return np.ascontiguousarray(np.rot90(array, k % 4))


def oriented(dataset: Dataset, indices: Sequence[int], orientations: int, name: str) -> Dataset:
    """The samples ``indices`` of ``dataset`` in their first ``orientations`` orientations.

    Samples of one image share one oriented image array, as the loaders share it, so the env's
    memo and the embedding cache see one image per orientation.
    """
    samples: list[Sample] = []
    images: dict[tuple[int, int], np.ndarray] = {}
    for k in range(orientations):
        for i in indices:
            s = dataset[i]
            key = (id(s.image), k)
            if key not in images:
                images[key] = orient(s.image, k)
            swapped = (k % 2 == 1) != (k >= 4)  # a quarter turn and a transpose each swap axes
            spacing = (s.spacing[1], s.spacing[0]) if swapped else s.spacing
            samples.append(
                Sample(
                    image=images[key],
                    mask=orient(s.mask, k),
                    target=s.target,
                    modality=s.modality,
                    source_id=s.source_id,
                    sample_id=f"{s.sample_id}@o{k}",
                    spacing=spacing,
                )
            )
    return Dataset(samples, name)


def train_val(
    dataset: str | Dataset = "demo",
    val_fraction: float = VAL_FRACTION,
    split_seed: int = SPLIT_SEED,
    orientations: int = ORIENTATIONS,
) -> tuple[Dataset, Dataset]:
    """``(train, val)``: the split's two sides, each in ``orientations`` orientations.

    Raises:
        ValueError: ``dataset`` is held out (``demo-heldout``).
    """
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    refuse_heldout(data, "medseg-train learned --dataset")
    train_idx, val_idx = group_split(data, val_fraction, np.random.default_rng(split_seed))
    return (
        oriented(data, train_idx, orientations, f"{data.name}-train"),
        oriented(data, val_idx, orientations, f"{data.name}-val"),
    )

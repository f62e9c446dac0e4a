"""One segmentation target in one 2D image: the unit an episode is made of."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Sample:
    """A 2D image with one binary target.

    Attributes:
        image: ``(H, W, 3)`` ``uint8`` RGB, already windowed / normalised for display and models.
        mask: ``(H, W)`` ``bool`` ground truth of the one target.
        target: name of the target (for example ``"tumour"`` or ``"label_3"``).
        modality: ``"CT"``, ``"MR"``, ``"microscopy"``, ... (free text, used to group metrics).
        source_id: the file or case the sample came from (``"brain1"``, ``"case_07.nii.gz"``).
        sample_id: unique within its dataset, e.g. ``"brain1/z012/tumour"``.
        spacing: pixel size ``(row, col)`` in millimetres (1.0 when unknown).
    """

    image: np.ndarray
    mask: np.ndarray
    target: str
    modality: str
    source_id: str
    sample_id: str
    spacing: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"sample {self.sample_id!r}: image must be (H, W, 3) uint8; "
                f"got shape {self.image.shape} dtype {self.image.dtype}"
            )
        if self.mask.shape != self.image.shape[:2] or self.mask.dtype != bool:
            raise ValueError(
                f"sample {self.sample_id!r}: mask must be bool of shape {self.image.shape[:2]}; "
                f"got shape {self.mask.shape} dtype {self.mask.dtype}"
            )
        if not self.mask.any():
            raise ValueError(f"sample {self.sample_id!r}: target {self.target!r} is empty")
        if len(self.spacing) != 2 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(
                f"sample {self.sample_id!r}: spacing must be two positive numbers; "
                f"got {self.spacing}"
            )

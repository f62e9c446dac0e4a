"""One segmentation target in one 2D image: the unit an episode is made of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def read_only(array: np.ndarray) -> np.ndarray:
    """``array`` made read-only, in place when it owns its data.

    A view (of a caller's volume, a buffer, a memory map) is copied first: freezing the view
    alone would not stop writes through the array it looks into, and freezing that array would
    take it away from its owner. The result always owns its data, so samples that share it
    (the targets of one slice) share one frozen array.
    """
    if not array.flags.owndata:
        array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


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

    ``image`` and ``mask`` are read-only once the sample is made (see :func:`read_only`): an
    array that owns its data is frozen in place, so pass a copy to keep a writable one; a view
    is copied. No episode, policy or caller can change the data a later episode sees.
    Copies and pickles stay read-only.
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
        # Frozen dataclass: the validated values are stored with object.__setattr__.
        object.__setattr__(self, "image", read_only(self.image))
        object.__setattr__(self, "mask", read_only(self.mask))
        object.__setattr__(self, "spacing", (float(self.spacing[0]), float(self.spacing[1])))

    def __reduce__(self) -> tuple[Any, ...]:
        # Through the constructor, so that a copy or an unpickled sample is validated and
        # read-only again (NumPy does not keep the writeable flag across pickling or copying).
        fields = (self.target, self.modality, self.source_id, self.sample_id, self.spacing)
        return (type(self), (self.image, self.mask, *fields))

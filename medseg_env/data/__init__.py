"""Data layer: loaders that turn medical images + labels into :class:`Sample` datasets.

Every loader returns a :class:`Dataset` of 2D samples, one per (image or slice, target), with
the image windowed / normalised to ``(H, W, 3) uint8`` RGB and a ``bool`` mask.
"""

from medseg_env.data.dataset import Dataset, data_fingerprint, refuse_heldout
from medseg_env.data.folder import load_folder
from medseg_env.data.intensity import (
    WINDOW_PRESETS,
    apply_window,
    normalize_percentile,
    to_rgb_uint8,
)
from medseg_env.data.layouts import (
    detect_layout,
    load_layout,
    load_msd,
    load_nifti_folder,
    load_nnunet,
)
from medseg_env.data.manifest import (
    DatasetNotFoundError,
    available_datasets,
    demo_dataset,
    demo_heldout_dataset,
    load_dataset,
    load_manifest,
    register_dataset,
)
from medseg_env.data.nifti import load_nifti
from medseg_env.data.npz import load_npz
from medseg_env.data.sample import Sample

__all__ = [
    "WINDOW_PRESETS",
    "Dataset",
    "DatasetNotFoundError",
    "Sample",
    "apply_window",
    "available_datasets",
    "data_fingerprint",
    "demo_dataset",
    "demo_heldout_dataset",
    "detect_layout",
    "load_dataset",
    "load_folder",
    "load_layout",
    "load_manifest",
    "load_msd",
    "load_nifti",
    "load_nifti_folder",
    "load_nnunet",
    "load_npz",
    "normalize_percentile",
    "refuse_heldout",
    "register_dataset",
    "to_rgb_uint8",
]

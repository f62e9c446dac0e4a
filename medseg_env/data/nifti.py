"""NIfTI volumes (``.nii`` / ``.nii.gz``) with a label volume -> 2D samples.

Orientation: slices are taken from the arrays as stored on disk, with no reorientation to
RAS/LPS. Slicing along ``axis`` leaves the two other axes, in their stored order, as
``(rows, cols)``; ``transpose=True`` swaps them (for files stored x-first, this gives the
usual radiological look up to a flip). Image and label always get exactly the same treatment,
so masks stay aligned whatever the choice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage

from medseg_env.data.dataset import (
    Dataset,
    as_label_array,
    parse_label_map,
    samples_from_slices,
)
from medseg_env.data.intensity import WindowSpec, grey_to_rgb, intensity_to_uint8
from medseg_env.data.intensity import resolve_window_spec as _resolve_window

_AXIS_NAMES = "xyz"


def nifti_stem(path: str | os.PathLike[str]) -> str:
    """File name without ``.nii`` / ``.nii.gz`` (``"case_07"`` for ``case_07.nii.gz``)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _read_volume(path: Path, what: str, *, as_float: bool) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a 2D or 3D NIfTI as an array (trailing singleton axes dropped) and its voxel sizes."""
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI {what} not found: {path}")
    try:
        # nib.load is typed as returning FileBasedImage; NIfTI files load as a SpatialImage.
        img = cast(SpatialImage, nib.load(str(path)))
        data = img.get_fdata(dtype=np.float32) if as_float else np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as err:  # nibabel raises many types (ImageFileError, gzip/EOF errors...)
        raise ValueError(f"cannot read NIfTI {what} {path}: {type(err).__name__}: {err}") from err
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
        zooms = (*zooms[:2], 1.0)
    if data.ndim != 3:
        raise ValueError(f"NIfTI {what} {path}: expected a 2D or 3D volume; got shape {data.shape}")
    return np.asarray(data), (zooms + (1.0, 1.0, 1.0))[:3]


def load_nifti(
    image_path: str | os.PathLike[str],
    label_path: str | os.PathLike[str],
    *,
    axis: int = 2,
    label_map: Mapping[int, str] | None = None,
    modality: str = "CT",
    window: WindowSpec = "auto",
    min_area: int = 16,
    slice_step: int = 1,
    max_slices_per_target: int | None = None,
    transpose: bool = False,
    name: str | None = None,
    source_id: str | None = None,
) -> Dataset:
    """Cut an image volume and its label volume into 2D samples.

    Every nonzero label value present in a slice with at least ``min_area`` pixels becomes one
    sample (a binary mask of that value).

    Args:
        image_path: the image volume; CT in HU (scl_slope / scl_inter applied).
        label_path: integer label volume with the same shape (0 = background).
        axis: array axis to slice along (0, 1 or 2); the two others give ``(rows, cols)``.
        label_map: ``{value: name}``; values not in it are named ``"label_<value>"``.
        modality: ``"CT"``, ``"MR"``, ...; stored in each sample.
        window: CT window preset name or ``(level, width)`` in HU; ``None`` for percentile
            normalisation (0.5-99.5 %, over the whole volume); ``"auto"`` = ``"soft_tissue"``
            for CT, percentiles otherwise.
        min_area: skip a target in slices where it has fewer pixels.
        slice_step: only look at every ``slice_step``-th slice (0, step, 2 * step, ...).
        max_slices_per_target: keep at most this many slices per label value, spread over its
            extent (largest in each part); ``None`` keeps all.
        transpose: swap rows and cols of every slice (image, label and spacing alike).
        name: dataset name (default: the image file name).
        source_id: the samples' ``source_id`` (default: the image name without ``.nii[.gz]``).

    Returns:
        A :class:`Dataset` whose samples have ids ``"<source_id>/<x|y|z><slice:03d>/<target>"``
        and spacing (mm) taken from the header zooms of the two in-plane axes.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: unreadable file, shape mismatch, bad argument, or no target at all.
    """
    image_path, label_path = Path(image_path), Path(label_path)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2; got {axis!r}")
    if slice_step < 1:
        raise ValueError(f"slice_step must be >= 1; got {slice_step!r}")
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1; got {min_area!r}")
    win = _resolve_window(window, modality)
    names = parse_label_map(label_map, str(label_path))

    volume, zooms = _read_volume(image_path, "image", as_float=True)
    labels_raw, _ = _read_volume(label_path, "label", as_float=False)
    if volume.shape != labels_raw.shape:
        raise ValueError(
            f"NIfTI shape mismatch: image {image_path} is {volume.shape} "
            f"but label {label_path} is {labels_raw.shape}"
        )
    labels = as_label_array(labels_raw, str(label_path))

    # Intensities are mapped once for the whole volume so that all slices share one mapping.
    grey = intensity_to_uint8(volume, win, where=str(image_path))
    in_plane = [a for a in range(3) if a != axis]
    spacing = tuple(z if np.isfinite(z) and z > 0 else 1.0 for z in (zooms[a] for a in in_plane))
    order = (axis, *in_plane[::-1]) if transpose else (axis, *in_plane)
    if transpose:
        spacing = spacing[::-1]
    grey = np.transpose(grey, order)[::slice_step]
    labels = np.transpose(labels, order)[::slice_step]
    indices = range(0, volume.shape[axis], slice_step)

    source = source_id or nifti_stem(image_path)

    def rgb_slice(k: int) -> np.ndarray:
        return grey_to_rgb(np.ascontiguousarray(grey[k]))

    samples = samples_from_slices(
        rgb_slice,
        labels,
        slice_ids=[f"{_AXIS_NAMES[axis]}{i:03d}" for i in indices],
        source_id=source,
        modality=modality,
        spacing=(float(spacing[0]), float(spacing[1])),
        label_map=names,
        min_area=min_area,
        max_slices_per_target=max_slices_per_target,
    )
    if not samples:
        raise ValueError(
            f"no target in {label_path}: no nonzero label covers >= {min_area} pixels in any "
            f"slice along axis {axis}"
        )
    return Dataset(samples, name=name or image_path.name)

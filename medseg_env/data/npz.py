"""MedSAM-style ``.npz`` files -> 2D samples.

Keys read (``np.load(..., allow_pickle=False)``, so no code runs from the file):

* ``imgs``: ``(H, W)`` grey, ``(H, W, 3)`` RGB, ``(D, H, W)`` grey volume or ``(D, H, W, 3)``.
  ``uint8`` is used as is (MedSAM files are pre-normalised); other dtypes are windowed (CT) or
  percentile-normalised over the whole array.
* ``gts``: integer label map, ``(H, W)`` or ``(D, H, W)`` to match ``imgs``; every nonzero
  value is its own target (semantic or instance labels alike).
* optional ``spacing``: pixel size in mm, ``(row, col)`` or, for volumes, ``(slice, row, col)``
  (in array axis order).
* optional metadata of our own: ``modality`` (str), ``label_names`` (JSON str
  ``{"1": "liver", ...}``) and ``source_id`` (str, groups the files of one case).

Sample ids are ``"<file stem>/<target>"`` (2D) or ``"<file stem>/z<slice:03d>/<target>"`` (3D).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np

from medseg_env.data.dataset import (
    Dataset,
    as_label_array,
    parse_label_map,
    samples_from_slices,
)
from medseg_env.data.intensity import (
    WindowSpec,
    grey_to_rgb,
    intensity_to_uint8,
    resolve_window_spec,
)
from medseg_env.data.sample import Sample

_REQUIRED = ("imgs", "gts")


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first bytes (an empty one: 2nd)
_NPY_MAGIC = b"\x93NUMPY"


def _head(file: str | os.PathLike[str] | IO[bytes]) -> bytes:
    """The first bytes of the file (an open file is left where it was)."""
    if isinstance(file, str | os.PathLike):
        with open(file, "rb") as fh:
            return fh.read(len(_NPY_MAGIC))
    pos = file.tell()
    head = file.read(len(_NPY_MAGIC))
    file.seek(pos)
    return head


def _holds_objects(npz: np.lib.npyio.NpzFile, key: str) -> bool:
    """Whether member ``key`` is an object (pickled) array, read from its header alone."""
    fmt, archive = np.lib.format, npz.zip
    if archive is None:  # closed
        return False
    name = key if key in archive.namelist() else f"{key}.npy"
    try:
        with archive.open(name) as fh:
            version = fmt.read_magic(fh)
            read_header = (
                fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            )
            dtype = read_header(fh)[2]
    except Exception:  # a malformed member: reported as unreadable by the caller
        return False
    return bool(dtype.hasobject)


def _read_npz(file: str | os.PathLike[str] | IO[bytes], where: str) -> dict[str, np.ndarray]:
    """All arrays of the file, read eagerly so that decompression errors surface here.

    Pickled data is never loaded (``allow_pickle=False``). A file that is not a zip archive is
    refused before numpy sees it: numpy would take it for a pickle and advise loading it
    "unsafely", which this loader never does.
    """
    try:
        head = _head(file)
    except FileNotFoundError:
        raise FileNotFoundError(f"npz file not found: {where}") from None
    except OSError as err:
        raise ValueError(f"cannot read npz file {where}: {type(err).__name__}: {err}") from err
    if head.startswith(_NPY_MAGIC):
        raise ValueError(
            f"cannot read npz file {where}: not an .npz archive (a single .npy array?)"
        )
    if not head.startswith(_ZIP_MAGIC):
        raise ValueError(
            f"cannot read npz file {where}: not an .npz archive (a zip of .npy arrays, as "
            "numpy.savez writes); "
            + (f"the file starts with {head!r}" if head else "the file is empty")
        )
    out: dict[str, np.ndarray] = {}
    pickled = None
    try:
        with np.load(file, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    out[key] = npz[key]
                except ValueError:
                    if not _holds_objects(npz, key):
                        raise
                    pickled = key
                    break
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"cannot read npz file {where}: {type(err).__name__}: {err}") from err
    if pickled is not None:
        raise ValueError(
            f"cannot read npz file {where}: array {pickled!r} holds Python objects (pickled "
            "data), which are never loaded; store numeric arrays instead"
        )
    return out


def _scalar_str(data: Mapping[str, np.ndarray], key: str, where: str) -> str | None:
    if key not in data:
        return None
    value = data[key]
    if value.ndim != 0 or value.dtype.kind not in "US":
        raise ValueError(f"{where}: key {key!r} must be a scalar string; got {value.dtype}")
    return str(value.item().decode() if value.dtype.kind == "S" else value.item())


def _spacing(data: Mapping[str, np.ndarray], ndim: int, where: str) -> tuple[float, float]:
    if "spacing" not in data:
        return (1.0, 1.0)
    raw = np.asarray(data["spacing"], dtype=np.float64).ravel()
    if raw.size not in (2, 3) or (raw.size == 3 and ndim != 3):
        raise ValueError(f"{where}: spacing must have 2 values (or 3 for a volume); got {raw}")
    row, col = raw[-2:]
    if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
        raise ValueError(f"{where}: spacing must be positive; got {raw}")
    return float(row), float(col)


def npz_samples(
    file: str | os.PathLike[str] | IO[bytes],
    *,
    stem: str,
    where: str,
    modality: str | None = None,
    window: WindowSpec = "auto",
    label_map: Mapping[int, str] | None = None,
    min_area: int = 16,
    slice_step: int = 1,
    max_slices_per_target: int | None = None,
) -> list[Sample]:
    """Samples of one npz file (path or open binary file); ``where`` names it in errors.

    Returns an empty list when no target reaches ``min_area`` (the callers decide if that is an
    error). Options as in :func:`load_npz`.
    """
    data = _read_npz(file, where)
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; found {sorted(data)}")
    imgs, gts = data["imgs"], data["gts"]
    gts = as_label_array(gts, where)

    if gts.ndim == 2 and imgs.shape[:2] == gts.shape and imgs.ndim in (2, 3):
        volume = False
        if imgs.ndim == 3 and imgs.shape[2] not in (1, 3, 4):
            raise ValueError(f"{where}: 2D imgs must be (H, W) or (H, W, 3); got {imgs.shape}")
        imgs, gts = imgs[None], gts[None]
    elif gts.ndim == 3 and imgs.shape[:3] == gts.shape and imgs.ndim in (3, 4):
        volume = True
    else:
        raise ValueError(
            f"{where}: imgs {imgs.shape} and gts {gts.shape} do not match; expected imgs "
            "(H, W[, 3]) with gts (H, W), or imgs (D, H, W[, 3]) with gts (D, H, W)"
        )
    if imgs.ndim == 4:
        if imgs.shape[3] not in (1, 3, 4):
            raise ValueError(f"{where}: imgs channels must be 1, 3 or 4; got {imgs.shape}")
        imgs = imgs[..., :3] if imgs.shape[3] != 1 else imgs[..., 0]
    if imgs.dtype.kind not in "uifb":
        raise ValueError(f"{where}: imgs has unsupported dtype {imgs.dtype}")

    mod = modality or _scalar_str(data, "modality", where) or "unknown"
    names: dict[int, str] = {}
    label_json = _scalar_str(data, "label_names", where)
    if label_json is not None:
        try:
            names = parse_label_map(json.loads(label_json), where)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: label_names is not valid JSON: {err}") from None
    names.update(parse_label_map(label_map, where))
    spacing = _spacing(data, 3 if volume else 2, where)
    source_id = _scalar_str(data, "source_id", where) or stem

    if imgs.dtype == np.bool_:
        imgs = imgs.astype(np.uint8) * np.uint8(255)
    elif imgs.dtype != np.uint8:
        # One mapping for the whole file (all slices, all channels).
        imgs = intensity_to_uint8(imgs, resolve_window_spec(window, mod), where=where)
    slice_ids = [f"z{i:03d}" for i in range(0, gts.shape[0], slice_step)] if volume else [""]
    imgs, gts = imgs[::slice_step], gts[::slice_step]

    def rgb_slice(k: int) -> np.ndarray:
        img = imgs[k]
        return grey_to_rgb(np.ascontiguousarray(img)) if img.ndim == 2 else img.copy()

    return samples_from_slices(
        rgb_slice,
        gts,
        slice_ids=slice_ids,
        source_id=source_id,
        id_prefix=stem,
        modality=mod,
        spacing=spacing,
        label_map=names,
        min_area=min_area,
        max_slices_per_target=max_slices_per_target,
    )


def load_npz(
    path_or_dir: str | os.PathLike[str],
    *,
    modality: str | None = None,
    window: WindowSpec = "auto",
    label_map: Mapping[int, str] | None = None,
    min_area: int = 16,
    slice_step: int = 1,
    max_slices_per_target: int | None = None,
    skip_empty: bool = False,
    name: str | None = None,
) -> Dataset:
    """Load one ``.npz`` file, or every ``*.npz`` of a directory (sorted by name).

    Args:
        path_or_dir: a file or a directory (not searched recursively).
        modality: overrides the file's ``modality`` key (default ``"unknown"`` if neither).
        window: for non-``uint8`` images: CT preset / ``(level, width)`` in HU, ``None`` for
            percentiles, ``"auto"`` = soft-tissue window for CT, percentiles otherwise.
        label_map: ``{value: name}``, overrides the file's ``label_names`` entry by entry.
        min_area: skip targets with fewer pixels (per slice).
        slice_step, max_slices_per_target: for 3D files, as in :func:`load_nifti`.
        skip_empty: in a directory, skip files without any target instead of raising.
        name: dataset name (default: the file or directory name).

    Raises:
        FileNotFoundError: missing path, or a directory without ``.npz`` files.
        ValueError: unreadable / inconsistent file, or a file (or everything) without target.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.npz") if p.is_file())
        if not files:
            raise FileNotFoundError(f"no .npz files in directory {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"npz file or directory not found: {path}")
    if min_area < 1 or slice_step < 1:
        raise ValueError(f"min_area and slice_step must be >= 1; got {min_area!r}, {slice_step!r}")
    resolve_window_spec(window, modality or "")  # a bad preset fails before any read

    samples: list[Sample] = []
    for file in files:
        found = npz_samples(
            file,
            stem=file.stem,
            where=str(file),
            modality=modality,
            window=window,
            label_map=label_map,
            min_area=min_area,
            slice_step=slice_step,
            max_slices_per_target=max_slices_per_target,
        )
        if not found and not (skip_empty and len(files) > 1):
            raise ValueError(f"no target in {file}: no nonzero label covers >= {min_area} pixels")
        samples.extend(found)
    if not samples:
        raise ValueError(f"no target in any .npz file of {path} (min_area={min_area})")
    return Dataset(samples, name=name or path.name)

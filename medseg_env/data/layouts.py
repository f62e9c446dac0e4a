"""Dataset folders as users download them, loaded without a manifest.

Three layouts, recognised by :func:`detect_layout` and loaded by :func:`load_layout` (which
:func:`~medseg_env.data.load_dataset` calls for such a directory):

* ``"msd"``: a Medical Segmentation Decathlon task folder (``Task03_Liver/``):
  ``imagesTr/<case>.nii.gz``, ``labelsTr/<case>.nii.gz`` and a ``dataset.json`` with
  ``"modality": {"0": "CT"}`` and ``"labels": {"0": "background", "1": "liver", ...}``
  (value -> name). Multi-channel 4D images (BRATS: FLAIR, T1w, t1gd, T2w) give their first
  channel only, channel 0, whose modality is ``modality["0"]``. nnU-Net v1 task folders (the
  same ``dataset.json`` with ``imagesTr/<case>_0000.nii.gz`` channel files) load too.
* ``"nnunet"``: an nnU-Net v2 raw dataset folder (``Dataset003_Liver/``):
  ``imagesTr/<case>_0000.nii.gz`` (one file per channel, ``_0000``, ``_0001``, ...; channel
  ``_0000`` is used), ``labelsTr/<case>.nii.gz`` and a ``dataset.json`` with
  ``"channel_names": {"0": "CT"}``, ``"labels": {"background": 0, "liver": 1, ...}``
  (name -> value) and ``"file_ending": ".nii.gz"``. Region-based labels (a list of values per
  name) are refused; the ``"ignore"`` label (unannotated pixels) never becomes a target.
* ``"nifti_folder"``: ``images/`` + ``labels/`` sub-folders of NIfTI pairs with the same file
  names (the image may carry a ``_0000`` channel suffix), and no ``dataset.json``. An
  ``imagesTr/`` + ``labelsTr/`` folder without ``dataset.json`` is read the same way.

Cases are the image files on disk, in sorted order (``imagesTs/`` and dataset.json's
``"training"`` list are not used, so a trimmed copy loads); hidden files and macOS ``._*``
junk are ignored. Each case becomes ``load_nifti(image, label, source_id=<case>)``, so sample
ids are ``"<case>/z012/liver"`` and unique.

Defaults: label names and the modality come from ``dataset.json``; its modality strings map
to ``"CT"`` or ``"MR"`` (``"MRI"``, ``"T1"``, ``"T2"``, ``"FLAIR"``, ``"T1w"``, ``"ADC"``...;
others such as ``"noNorm"`` are kept as written). CT is windowed with the ``soft_tissue``
preset (level 40, width 400 HU; ``window="auto"`` of :func:`load_nifti`), a general window that
suits the abdominal and thoracic organs and tumours of these collections; MR and everything else
is percentile-normalised per volume. A plain ``nifti_folder`` has no metadata and takes
:func:`load_nifti`'s defaults (CT, ``soft_tissue``): pass ``modality="MR"`` for MR. Keyword
options (``axis``, ``window``, ``min_area``, ``max_slices_per_target``, ``modality``,
``label_map``, ...) override these defaults.

Every pair is checked (names, readable headers, matching shapes) before any volume is read.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage

from medseg_env.data.dataset import Dataset, parse_label_map, target_name
from medseg_env.data.nifti import load_nifti, nifti_stem
from medseg_env.data.sample import Sample

LAYOUTS = ("msd", "nnunet", "nifti_folder")

_NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_NIFTI_OPTIONS = frozenset(
    {"axis", "window", "min_area", "slice_step", "max_slices_per_target", "transpose"}
)
# Normalised (upper case, letters and digits only) modality names that mean MR.
_MR_NAMES = frozenset(
    {"MR", "MRI", "FLAIR", "ADC", "DWI", "PD", "PDW", "SWI", "DTI", "BOLD", "PERFUSION", "CINE"}
)
_CT_NAMES = frozenset({"CT", "CTA", "CECT", "NCCT"})

_Case = tuple[str, Path, Path]  # (case name, image file, label file)


# --- helpers -------------------------------------------------------------------------------------


def normalize_modality(name: str) -> str:
    """Map an MSD / nnU-Net modality string to ``"CT"`` or ``"MR"``, else return it stripped.

    ``"CT"`` -> ``"CT"``; ``"MRI"``, ``"MR"``, ``"T1"``, ``"T2"``, ``"T1w"``, ``"t1gd"``,
    ``"FLAIR"``, ``"ADC"``, ``"DWI"`` ... -> ``"MR"``; ``"noNorm"``, ``"PET"`` ... unchanged.
    """
    text = str(name).strip()
    key = re.sub(r"[^A-Z0-9]", "", text.upper())
    if key in _CT_NAMES:
        return "CT"
    if key in _MR_NAMES or key.startswith(("MR", "T1", "T2")):
        return "MR"
    return text


def _rel(folder: Path, path: Path) -> str:
    """``path`` relative to the dataset folder, with ``/`` separators (for messages)."""
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def _raise_problems(folder: Path, problems: list[str], error: type[Exception]) -> None:
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise error(f"dataset folder {folder}: {'; '.join(problems[:5])}{more}")


def _read_dataset_json(folder: Path) -> tuple[Path, dict[str, Any]]:
    path = folder / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a JSON object; got {type(data).__name__}")
    return path, data


def _json_modality(data: Mapping[str, Any], where: Path, keys: tuple[str, ...]) -> str:
    """Modality of channel 0 from ``{"0": "CT", ...}`` under the first of ``keys`` present."""
    key = next((k for k in keys if k in data), None)
    if key is None:
        raise ValueError(f'{where}: missing key {keys[0]!r} (e.g. {{"0": "CT"}})')
    value = data[key]
    if isinstance(value, str) and value.strip():
        return normalize_modality(value)
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{where}: key {key!r} must map channels to names; got {value!r}")
    first = value.get("0", value.get(0))
    if not isinstance(first, str) or not first.strip():
        raise ValueError(f'{where}: key {key!r} has no name for channel "0"; got {value!r}')
    return normalize_modality(first)


def _msd_labels(data: Mapping[str, Any], where: Path) -> dict[int, str]:
    """MSD ``"labels": {"0": "background", "1": "liver"}`` (value -> name), background dropped."""
    labels = data.get("labels")
    if not isinstance(labels, Mapping):
        raise ValueError(
            f"{where}: key 'labels' must map values to names "
            f'(e.g. {{"0": "background", "1": "liver"}}); got {labels!r}'
        )
    kept = {k: v for k, v in labels.items() if str(k).strip() != "0"}
    return parse_label_map(kept, f"{where}: key 'labels'")


def _nnunet_labels(data: Mapping[str, Any], where: Path) -> tuple[dict[int, str], int | None]:
    """nnU-Net v2 ``"labels": {"background": 0, "liver": 1}`` (name -> value) inverted, and the
    value of the ``"ignore"`` label if there is one."""
    labels = data.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(
            f"{where}: key 'labels' must map names to values "
            f'(e.g. {{"background": 0, "liver": 1}}); got {labels!r}'
        )
    out: dict[int, str] = {}
    ignore = None
    for label_name, value in labels.items():
        if isinstance(value, list | tuple):
            raise ValueError(
                f"{where}: key 'labels' entry {label_name!r}: {value!r} is a region "
                "(nnU-Net region-based training); only one integer value per label is supported"
            )
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
        ):
            raise ValueError(
                f"{where}: key 'labels' entry {label_name!r}: {value!r} is not an integer value"
            )
        ivalue = int(value)
        if ivalue == 0:
            continue
        if ivalue in out:
            raise ValueError(
                f"{where}: key 'labels' gives value {ivalue} to both {out[ivalue]!r} "
                f"and {label_name!r}"
            )
        out[ivalue] = str(label_name)
        if str(label_name) == "ignore":
            ignore = ivalue
    return parse_label_map(out, f"{where}: key 'labels'"), ignore


def _nifti_files(directory: Path, folder: Path, endings: tuple[str, ...]) -> dict[str, Path]:
    """``{name without ending: file}`` for the NIfTI files of a directory, sorted by name.

    Hidden files (macOS ``._*`` and ``.DS_Store`` included) and other files are skipped.
    """
    out: dict[str, Path] = {}
    for p in sorted(directory.iterdir(), key=lambda p: p.name):
        if p.name.startswith(".") or not p.is_file():
            continue
        ending = next((e for e in endings if p.name.lower().endswith(e)), None)
        if ending is None:
            continue
        stem = p.name[: -len(ending)]
        if stem in out:
            raise ValueError(
                f"dataset folder {folder}: {_rel(folder, out[stem])} and {_rel(folder, p)} "
                "have the same case name"
            )
        out[stem] = p
    return out


def _ending(path: Path) -> str:
    return path.name[len(nifti_stem(path)) :]


def _pair_cases(
    folder: Path,
    images_dir: Path,
    labels_dir: Path,
    *,
    endings: tuple[str, ...] = _NIFTI_ENDINGS,
    channel_files: bool,
) -> list[_Case]:
    """Pair the image files with the label files; raise on any lonely file.

    ``channel_files=True`` (nnU-Net v2): images must be ``<case>_<4 digits>``; channel
    ``_0000`` is used. ``False``: an image pairs with the label of the same name, or, failing
    that, is a ``<case>_<4 digits>`` channel file of label ``<case>`` (nnU-Net v1, optional
    ``_0000`` in plain folders).
    """
    for directory in (images_dir, labels_dir):
        if not directory.is_dir():
            raise FileNotFoundError(f"dataset folder {folder}: {directory.name}/ not found")
    images = _nifti_files(images_dir, folder, endings)
    labels = _nifti_files(labels_dir, folder, endings)
    shown_endings = " / ".join(endings)
    if not images:
        raise FileNotFoundError(
            f"dataset folder {folder}: no NIfTI image ({shown_endings}) in "
            f"{_rel(folder, images_dir)}/"
        )

    problems: list[str] = []
    chosen: dict[str, Path] = {}  # case -> the image file used (channel 0)
    seen_cases: dict[str, Path] = {}  # case -> some image file of it (for lonely channels)
    for stem, image in images.items():
        match = _CHANNEL_FILE.match(stem)
        if not channel_files and stem in labels:
            case, channel = stem, "0000"
        elif match and (channel_files or match["case"] in labels):
            case, channel = match["case"], match["channel"]
        elif channel_files:
            problems.append(
                f"{_rel(folder, image)} is not named <case>_<4-digit channel>{_ending(image)} "
                "(nnU-Net channel file)"
            )
            continue
        else:
            case = match["case"] if match and match["channel"] == "0000" else stem
            expected = labels_dir / f"{case}{_ending(image)}"
            problems.append(f"{_rel(folder, image)} has no label {_rel(folder, expected)}")
            continue
        seen_cases.setdefault(case, image)
        if channel != "0000":
            continue
        if case in chosen:
            problems.append(
                f"{_rel(folder, chosen[case])} and {_rel(folder, image)} are both images of "
                f"case {case!r}"
            )
            continue
        chosen[case] = image
    for case, image in seen_cases.items():
        if case not in chosen:
            expected = images_dir / f"{case}_0000{_ending(image)}"
            problems.append(
                f"{_rel(folder, image)}: case {case!r} has no channel-0 image "
                f"{_rel(folder, expected)}"
            )
    if channel_files:
        for case, image in chosen.items():
            if case not in labels:
                expected = labels_dir / f"{case}{_ending(image)}"
                problems.append(f"{_rel(folder, image)} has no label {_rel(folder, expected)}")
    for case, label in labels.items():
        if case not in seen_cases:
            image_name = f"{case}_0000{_ending(label)}" if channel_files else label.name
            problems.append(
                f"{_rel(folder, label)} has no image {_rel(folder, images_dir / image_name)}"
            )
    _raise_problems(folder, problems, FileNotFoundError)
    return [(case, chosen[case], labels[case]) for case in sorted(chosen)]


def _check_headers(folder: Path, cases: list[_Case]) -> dict[str, int]:
    """Read every header (cheap) and check shapes; return ``{case: channels}`` of the images."""
    problems: list[str] = []
    channels: dict[str, int] = {}
    for case, image, label in cases:
        shapes = []
        for path in (image, label):
            try:
                # nib.load is typed FileBasedImage; NIfTI files load as a SpatialImage.
                img = cast(SpatialImage, nib.load(str(path)))
                shapes.append(tuple(int(n) for n in img.shape))
            except Exception as err:  # nibabel raises many types (ImageFileError, EOFError...)
                problems.append(f"cannot read {_rel(folder, path)}: {type(err).__name__}: {err}")
        if len(shapes) != 2:
            continue
        image_shape, label_shape = shapes
        while len(label_shape) > 3 and label_shape[-1] == 1:
            label_shape = label_shape[:-1]
        n_channels = image_shape[3] if len(image_shape) == 4 else 1
        spatial = image_shape[:3] if len(image_shape) == 4 else image_shape
        if spatial != label_shape:
            problems.append(
                f"shape mismatch: image {_rel(folder, image)} is {image_shape} "
                f"but label {_rel(folder, label)} is {label_shape}"
            )
        channels[case] = n_channels
    _raise_problems(folder, problems, ValueError)
    return channels


def _first_channel_file(image: Path, directory: str) -> Path:
    """Write channel 0 of a 4D image as a 3D ``.nii`` in ``directory`` (same voxel sizes)."""
    img = cast(SpatialImage, nib.load(str(image)))  # typed FileBasedImage; NIfTI is spatial
    data = np.asarray(img.dataobj[..., 0], dtype=np.float32)  # scl_slope / inter applied
    out = nib.Nifti1Image(data, img.affine)
    out.header.set_zooms(tuple(float(z) for z in img.header.get_zooms()[:3]))
    path = Path(directory) / f"{nifti_stem(image)}_channel0.nii"
    nib.save(out, str(path))
    return path


def _load_cases(
    folder: Path,
    cases: list[_Case],
    *,
    func: str,
    modality: str | None,
    label_map: Mapping[int, str] | None,
    ignore_value: int | None,
    name: str | None,
    skip_empty: bool,
    options: Mapping[str, Any],
) -> Dataset:
    unknown = sorted(set(options) - _NIFTI_OPTIONS)
    if unknown:
        raise TypeError(
            f"{func}: unknown option(s) {unknown}; accepted: modality, label_map, name, "
            f"skip_empty, {', '.join(sorted(_NIFTI_OPTIONS))}"
        )
    names = parse_label_map(label_map, func)
    channels = _check_headers(folder, cases)
    kwargs: dict[str, Any] = dict(options)
    if modality is not None:
        kwargs["modality"] = modality
    ignored = target_name(ignore_value, names) if ignore_value is not None else None

    samples: list[Sample] = []
    for case, image, label in cases:
        try:
            if channels[case] > 1:
                with tempfile.TemporaryDirectory(prefix="medseg_env_") as tmp:
                    ds = load_nifti(
                        _first_channel_file(image, tmp),
                        label,
                        label_map=names,
                        name=image.name,
                        source_id=case,
                        **kwargs,
                    )
            else:
                ds = load_nifti(
                    image, label, label_map=names, name=image.name, source_id=case, **kwargs
                )
        except ValueError as err:
            # A case whose label has no target (a negative case) is legitimate in a benchmark.
            if skip_empty and str(err).startswith("no target in"):
                continue
            raise
        samples.extend(s for s in ds.samples if s.target != ignored)
    if not samples:
        raise ValueError(
            f"dataset folder {folder}: no target in any of the {len(cases)} label file(s) "
            f"(options: {dict(kwargs)})"
        )
    return Dataset(samples, name=name or folder.name)


# --- the layouts ---------------------------------------------------------------------------------


def load_msd(
    folder: str | os.PathLike[str],
    *,
    modality: str | None = None,
    label_map: Mapping[int, str] | None = None,
    name: str | None = None,
    skip_empty: bool = True,
    **options: Any,
) -> Dataset:
    """Load a Medical Segmentation Decathlon task folder (see the module docstring).

    4D multi-channel images (BRATS, prostate) give channel 0 only, the first modality of
    ``dataset.json`` (BRATS: FLAIR; prostate: T2).

    Args:
        folder: holds ``imagesTr/``, ``labelsTr/`` and ``dataset.json``.
        modality: overrides ``dataset.json``'s ``modality["0"]`` (mapped to CT / MR).
        label_map: ``{value: name}``; overrides ``dataset.json``'s ``labels``.
        name: dataset name (default: the folder name).
        skip_empty: skip cases whose label has no target (else raise).
        **options: for :func:`load_nifti`: ``axis``, ``window``, ``min_area``, ``slice_step``,
            ``max_slices_per_target``, ``transpose``.

    Raises:
        FileNotFoundError: missing folder, empty ``imagesTr/``, an image without label or a
            label without image (the message names the files).
        ValueError: malformed ``dataset.json`` (names the key), unreadable file, shape mismatch.
    """
    folder = Path(folder)
    where, data = _read_dataset_json(folder)
    json_modality = _json_modality(data, where, ("modality",))
    json_labels = _msd_labels(data, where)
    cases = _pair_cases(folder, folder / "imagesTr", folder / "labelsTr", channel_files=False)
    return _load_cases(
        folder,
        cases,
        func="load_msd",
        modality=modality or json_modality,
        label_map=json_labels if label_map is None else label_map,
        ignore_value=None,
        name=name,
        skip_empty=skip_empty,
        options=options,
    )


def load_nnunet(
    folder: str | os.PathLike[str],
    *,
    modality: str | None = None,
    label_map: Mapping[int, str] | None = None,
    name: str | None = None,
    skip_empty: bool = True,
    **options: Any,
) -> Dataset:
    """Load an nnU-Net v2 raw dataset folder (see the module docstring); channel ``_0000``.

    Args and raises as :func:`load_msd`; the modality defaults to ``channel_names["0"]``
    (``"modality"`` is accepted too, as nnU-Net does), and ``file_ending`` must be ``.nii.gz``
    or ``.nii`` (only NIfTI is supported; both are accepted when it is absent).
    """
    folder = Path(folder)
    where, data = _read_dataset_json(folder)
    json_modality = _json_modality(data, where, ("channel_names", "modality"))
    json_labels, ignore_value = _nnunet_labels(data, where)
    endings: tuple[str, ...] = _NIFTI_ENDINGS
    if "file_ending" in data:
        ending = data["file_ending"]
        if not isinstance(ending, str) or ending.lower() not in _NIFTI_ENDINGS:
            raise ValueError(
                f"{where}: key 'file_ending' is {ending!r}; only NIfTI (.nii.gz or .nii) is "
                "supported (convert the images, or use load_folder for 2D image files)"
            )
        endings = (ending.lower(),)
    cases = _pair_cases(
        folder, folder / "imagesTr", folder / "labelsTr", endings=endings, channel_files=True
    )
    return _load_cases(
        folder,
        cases,
        func="load_nnunet",
        modality=modality or json_modality,
        label_map=json_labels if label_map is None else label_map,
        ignore_value=ignore_value,
        name=name,
        skip_empty=skip_empty,
        options=options,
    )


def _plain_dirs(folder: Path) -> tuple[Path, Path] | None:
    for images, labels in (("images", "labels"), ("imagesTr", "labelsTr")):
        if (folder / images).is_dir() and (folder / labels).is_dir():
            return folder / images, folder / labels
    return None


def load_nifti_folder(
    folder: str | os.PathLike[str],
    *,
    modality: str | None = None,
    label_map: Mapping[int, str] | None = None,
    name: str | None = None,
    skip_empty: bool = True,
    **options: Any,
) -> Dataset:
    """Load ``images/`` + ``labels/`` NIfTI pairs with the same names (no ``dataset.json``).

    An image may be named ``<case>_0000.nii.gz`` for label ``<case>.nii.gz``. With no
    metadata, :func:`load_nifti`'s defaults apply (modality ``"CT"``, ``soft_tissue`` window,
    names ``"label_<value>"``): pass ``modality=`` and ``label_map=`` for your data. Args and
    raises as :func:`load_msd`.
    """
    folder = Path(folder)
    dirs = _plain_dirs(folder)
    if dirs is None:
        raise FileNotFoundError(f"dataset folder {folder}: no images/ + labels/ sub-folders")
    cases = _pair_cases(folder, *dirs, channel_files=False)
    return _load_cases(
        folder,
        cases,
        func="load_nifti_folder",
        modality=modality,
        label_map=label_map,
        ignore_value=None,
        name=name,
        skip_empty=skip_empty,
        options=options,
    )


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "msd": load_msd,
    "nnunet": load_nnunet,
    "nifti_folder": load_nifti_folder,
}


def detect_layout(folder: str | os.PathLike[str]) -> str | None:
    """``"msd"``, ``"nnunet"``, ``"nifti_folder"`` or ``None`` (none of these).

    ``imagesTr/`` + ``labelsTr/`` + ``dataset.json`` is nnU-Net v2 when the JSON has
    ``channel_names`` or ``file_ending`` or maps label names to values, else MSD; without
    ``dataset.json`` it is read as a plain ``nifti_folder``, like ``images/`` + ``labels/``.

    Raises:
        ValueError: ``dataset.json`` is unreadable or not a JSON object.
    """
    folder = Path(folder)
    if (folder / "imagesTr").is_dir() and (folder / "labelsTr").is_dir():
        if (folder / "dataset.json").is_file():
            _, data = _read_dataset_json(folder)
            labels = data.get("labels")
            by_name = isinstance(labels, Mapping) and any(
                not isinstance(v, str) for v in labels.values()
            )
            if "channel_names" in data or "file_ending" in data or by_name:
                return "nnunet"
            return "msd"
        return "nifti_folder"
    if _plain_dirs(folder) is not None:
        return "nifti_folder"
    return None


def load_layout(
    folder: str | os.PathLike[str], layout: str | None = None, **kwargs: Any
) -> Dataset:
    """Load a dataset folder in one of :data:`LAYOUTS` (detected if ``layout`` is ``None``).

    ``kwargs`` go to :func:`load_msd` / :func:`load_nnunet` / :func:`load_nifti_folder`.
    """
    folder = Path(folder)
    if layout is None:
        layout = detect_layout(folder)
        if layout is None:
            raise ValueError(
                f"{folder} is not a dataset folder: expected imagesTr/ + labelsTr/ "
                "(+ dataset.json: MSD or nnU-Net v2) or images/ + labels/ NIfTI pairs"
            )
    if layout not in _LOADERS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return _LOADERS[layout](folder, **kwargs)

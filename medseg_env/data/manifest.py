"""Datasets by name or by path, and the JSON manifest format.

:func:`load_dataset` accepts a :class:`Dataset`, a registered name (``"demo"``,
``"demo-heldout"``, or one added with :func:`register_dataset`), a ``(image, label)`` pair of
NIfTI paths, or a path:

* a manifest (``.json``; ``.yaml`` / ``.yml`` if PyYAML is installed),
* a ``.npz`` file or a directory of ``.npz`` files,
* a directory holding ``manifest.json``, or ``images/`` and ``masks/`` sub-folders,
* a dataset folder as downloaded (see :mod:`medseg_env.data.layouts`): a Medical Segmentation
  Decathlon task (``imagesTr/`` + ``labelsTr/`` + ``dataset.json``), an nnU-Net v2 raw dataset
  (``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/`` + ``dataset.json``) or ``images/`` +
  ``labels/`` NIfTI pairs (these come after the three kinds of directory above),
* a NIfTI image whose label sits next to it as ``<stem>_label``, ``_seg``, ``_mask`` or
  ``_gt`` ``.nii[.gz]``, or in nnU-Net layout (``imagesTr/<case>_0000.nii.gz`` with
  ``labelsTr/<case>.nii.gz``).

Manifest format (relative paths resolve against the manifest's folder)::

    {
      "name": "liver_ct",                 # optional; default: the manifest file stem
      "heldout": false,                   # optional; true: kept for the final evaluation
      "format": "nifti",                  # "nifti" | "npz" | "folder"  (required)
      "modality": "CT",                   # optional loader options, for every item...
      "window": "abdomen",                # preset, [level, width] or null (percentiles)
      "label_map": {"1": "liver", "2": "tumour"},
      "min_area": 16,
      "items": [                          # required, non-empty
        {"image": "img/case1.nii.gz", "label": "lbl/case1.nii.gz"},
        {"image": "img/case2.nii.gz", "label": "lbl/case2.nii.gz", "id": "case2",
         "window": "liver"}               # ...and per-item overrides
      ]
    }

Item keys by format: ``nifti``: ``image``, ``label`` (optional ``id``: the source id);
``npz``: ``path`` (a file or a directory); ``folder``: ``images``, ``masks`` (directories).
Options by format: ``nifti``: modality, window, label_map, axis, min_area, slice_step,
max_slices_per_target, transpose; ``npz``: modality, window, label_map, min_area, slice_step,
max_slices_per_target, skip_empty; ``folder``: modality, window, label_map, min_area,
mask_suffix, skip_empty. Unknown keys are errors (they are usually typos). Every path is
checked before anything is loaded, and the items' sample ids must not collide.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from medseg_env.data.dataset import Dataset, parse_label_map
from medseg_env.data.folder import load_folder
from medseg_env.data.intensity import WINDOW_PRESETS, resolve_window
from medseg_env.data.layouts import detect_layout, load_layout
from medseg_env.data.nifti import load_nifti, nifti_stem
from medseg_env.data.npz import load_npz, npz_samples
from medseg_env.data.sample import Sample
from medseg_env.registry import Registry, callable_entries

_ITEM_PATHS = {"nifti": ("image", "label"), "npz": ("path",), "folder": ("images", "masks")}
_COMMON = {"modality", "window", "label_map", "min_area"}
_OPTIONS = {
    "nifti": _COMMON | {"axis", "slice_step", "max_slices_per_target", "transpose"},
    "npz": _COMMON | {"slice_step", "max_slices_per_target", "skip_empty"},
    "folder": _COMMON | {"mask_suffix", "skip_empty"},
}
_LABEL_SUFFIXES = ("_label", "_labels", "_seg", "_mask", "_gt")


class DatasetNotFoundError(FileNotFoundError, ValueError):
    """Neither a registered dataset name nor an existing path (catchable as either base)."""


DATASETS: Registry[Callable[..., Dataset]] = Registry(
    "dataset", "medseg_env.datasets", callable_entries("dataset", "a callable loader")
)


def register_dataset(name: str, loader: Callable[..., Dataset], *, overwrite: bool = False) -> None:
    """Make ``load_dataset(name, **kwargs)`` call ``loader(**kwargs)``.

    Third-party packages can do the same through the ``medseg_env.datasets`` entry-point group.
    """
    DATASETS.register(name, loader, overwrite=overwrite)


def available_datasets() -> list[str]:
    """Registered dataset names, in registration order."""
    return DATASETS.names()


# --- manifests -------------------------------------------------------------------------------


def _parse_manifest_text(text: str, where: str, yaml_syntax: bool) -> dict[str, Any]:
    try:
        if yaml_syntax:
            try:
                import yaml
            except ImportError:
                raise ValueError(f"{where}: reading YAML manifests needs PyYAML") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"manifest {where} is not valid: {err}") from err
    except Exception as err:  # yaml.YAMLError and friends
        raise ValueError(f"manifest {where} is not valid: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"manifest {where}: the top level must be an object")
    return data


# --- option values ---------------------------------------------------------------------------
#
# Every option value is checked for its type and range here, before any file is read, so that a
# manifest mistake names the manifest, the item and the key instead of surfacing as a raw
# TypeError deep in a loader, or (for a string "false" where a boolean belongs) not at all.
# JSON types are taken strictly: an integer option takes an integer (not 16.0, "16" or true),
# a flag takes true / false (not "false"). The window and the label map go through the loaders'
# own validators (resolve_window, parse_label_map), so the rules cannot drift apart.


def _json_type(value: Any) -> str:
    """How the manifest's author wrote ``value``, in JSON words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a floating-point number" if math.isfinite(value) else "a non-finite number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"  # YAML dates and the like


def _show(value: Any) -> str:
    """``value`` as JSON (as written in the manifest), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _non_empty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _window_problem(value: Any, fmt: str) -> str | None:
    """None if ``value`` is a valid ``window`` for this format, else what is wrong."""
    expected = (
        "a preset name ("
        + ", ".join(sorted(WINDOW_PRESETS))
        + (', or "auto"' if fmt != "folder" else "")
        + "), [level, width] with width > 0, or null (percentile normalisation)"
    )
    if value is None or (value == "auto" and fmt != "folder"):
        return None
    if isinstance(value, str):
        pass  # resolve_window names the presets
    elif not (isinstance(value, list) and len(value) == 2 and all(map(_is_number, value))):
        return f"must be {expected}"
    try:
        resolve_window(value if isinstance(value, str) else (value[0], value[1]))
    except ValueError as err:
        return str(err)
    return None


def _label_map_problem(value: Any, prefix: str) -> str | None:
    expected = 'an object of label values to names, e.g. {"1": "liver", "2": "tumour"}'
    if not isinstance(value, dict):
        return f"must be {expected}"
    for key, name in value.items():
        if not (isinstance(key, str) or _is_int(key)):
            return f"has key {_show(key)} ({_json_type(key)}); expected {expected}"
        if not _non_empty_str(name):
            return (
                f"entry {_show(key)}: {_show(name)} ({_json_type(name)}) is not a name; "
                f"expected {expected}"
            )
    try:  # integer keys >= 1: the loaders' own rule
        parse_label_map(value, prefix)
    except ValueError as err:
        return str(err).removeprefix(f"{prefix}: ")
    return None


def _expect(ok: bool, expected: str) -> str | None:
    return None if ok else f"must be {expected}"


_INT_1 = "an integer >= 1"
_FLAG = "true or false (JSON booleans, not strings)"
# key -> (value, format) -> None if valid, else what is wrong with it.
_OPTION_CHECKS: dict[str, Callable[[Any, str], str | None]] = {
    "modality": lambda v, _: _expect(_non_empty_str(v), 'a non-empty string, e.g. "CT" or "MR"'),
    "min_area": lambda v, _: _expect(_is_int(v) and v >= 1, _INT_1),
    "axis": lambda v, _: _expect(_is_int(v) and v in (0, 1, 2), "0, 1 or 2 (an integer)"),
    "slice_step": lambda v, _: _expect(_is_int(v) and v >= 1, _INT_1),
    "max_slices_per_target": lambda v, _: _expect(
        v is None or (_is_int(v) and v >= 1), f"{_INT_1}, or null (keep every slice)"
    ),
    "transpose": lambda v, _: _expect(isinstance(v, bool), _FLAG),
    "skip_empty": lambda v, _: _expect(isinstance(v, bool), _FLAG),
    "mask_suffix": lambda v, _: _expect(
        isinstance(v, str) and "/" not in v and "\\" not in v,
        'a string without path separators, e.g. "_mask" (or "")',
    ),
    "name": lambda v, _: _expect(_non_empty_str(v), "a non-empty string"),
    "description": lambda v, _: _expect(isinstance(v, str), "a string"),
    "id": lambda v, _: _expect(_non_empty_str(v), "a non-empty string"),
    "window": _window_problem,
}


def _check_options(values: dict[str, Any], fmt: str, prefix: str) -> None:
    """Check every known option of ``values``; raise a ValueError naming the first bad one."""
    for key, value in values.items():
        if key == "label_map":
            problem = _label_map_problem(value, prefix)
        elif key in _OPTION_CHECKS:
            problem = _OPTION_CHECKS[key](value, fmt)
        else:
            continue
        if problem is not None:
            raise ValueError(
                f"{prefix}: {key!r} = {_show(value)} ({_json_type(value)}) {problem}"
                if problem.startswith("must be")
                else f"{prefix}: {key!r} = {_show(value)}: {problem}"
            )


def _check_manifest(data: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """Validate the structure and every option value (not the files); return the format and the
    merged item options."""
    fmt = data.get("format")
    if fmt not in _ITEM_PATHS:
        raise ValueError(
            f"manifest {where}: format must be one of {sorted(_ITEM_PATHS)}; got {fmt!r}"
        )
    top_keys = {"name", "format", "items", "description", "heldout"} | _OPTIONS[fmt]
    unknown = sorted(set(data) - top_keys)
    if unknown:
        raise ValueError(f"manifest {where}: unknown key(s) {unknown} for format {fmt!r}")
    if not isinstance(data.get("heldout", False), bool):
        raise ValueError(
            f"manifest {where}: 'heldout' = {_show(data['heldout'])} "
            f"({_json_type(data['heldout'])}) must be true or false"
        )
    _check_options(data, fmt, f"manifest {where}")
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise ValueError(f"manifest {where}: 'items' must be a non-empty list")
    defaults = {k: v for k, v in data.items() if k in _OPTIONS[fmt]}
    merged = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"manifest {where}: item {i} must be an object; got {item!r}")
        allowed = set(_ITEM_PATHS[fmt]) | _OPTIONS[fmt] | ({"id"} if fmt == "nifti" else set())
        bad = sorted(set(item) - allowed)
        if bad:
            raise ValueError(f"manifest {where}: item {i} has unknown key(s) {bad}")
        missing = [k for k in _ITEM_PATHS[fmt] if not _non_empty_str(item.get(k))]
        if missing:
            raise ValueError(
                f"manifest {where}: item {i} lacks path key(s) {missing} (non-empty strings)"
            )
        _check_options(item, fmt, f"manifest {where}: item {i}")
        options = {**defaults, **item}
        if isinstance(options.get("window"), list):
            options["window"] = tuple(options["window"])
        merged.append(options)
    return fmt, merged


def _resolve(base: Traversable, rel: str) -> Traversable:
    path = Path(rel)
    if path.is_absolute():
        return path
    return base.joinpath(*path.parts)


def _manifest_dataset(data: dict[str, Any], base: Traversable, where: str, name: str) -> Dataset:
    fmt, items = _check_manifest(data, where)
    # Check every file first: a missing item fails before anything is read.
    missing = []
    for item in items:
        for key in _ITEM_PATHS[fmt]:
            target = _resolve(base, item[key])
            if not (target.is_file() or target.is_dir()):
                missing.append(f"{key}={item[key]!r}")
    if missing:
        raise FileNotFoundError(f"manifest {where}: missing item path(s): {', '.join(missing)}")

    samples: list[Sample] = []
    for item in items:
        opts = {k: v for k, v in item.items() if k not in _ITEM_PATHS[fmt] and k != "id"}
        if fmt == "npz" and not isinstance(base, Path):
            samples.extend(_traversable_npz(_resolve(base, item["path"]), **opts))
            continue
        if not isinstance(base, Path):
            raise ValueError(f"manifest {where}: format {fmt!r} needs files on disk")
        if fmt == "nifti":
            ds = load_nifti(
                base / item["image"], base / item["label"], source_id=item.get("id"), **opts
            )
        elif fmt == "npz":
            ds = load_npz(base / item["path"], **opts)
        else:
            ds = load_folder(base / item["images"], base / item["masks"], **opts)
        samples.extend(ds.samples)
    return Dataset(samples, name=name, heldout=data.get("heldout", False))


def _traversable_npz(entry: Traversable, **opts: Any) -> list[Sample]:
    """An npz file inside a package (maybe zipped): read through ``open``, never a path."""
    if entry.is_dir():
        files = sorted(
            (e for e in entry.iterdir() if e.name.endswith(".npz")), key=lambda e: e.name
        )
    else:
        files = [entry]
    skip_empty = opts.pop("skip_empty", False)
    out: list[Sample] = []
    for f in files:
        with f.open("rb") as fh:
            buffer = io.BytesIO(fh.read())
        found = npz_samples(buffer, stem=f.name[: -len(".npz")], where=str(f), **opts)
        if not found and not skip_empty:
            raise ValueError(f"no target in {f}")
        out.extend(found)
    return out


def load_manifest(path: str | os.PathLike[str]) -> Dataset:
    """Load the dataset a manifest file describes (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read manifest {path}: {err}") from err
    data = _parse_manifest_text(text, str(path), path.suffix.lower() in (".yaml", ".yml"))
    name = data.get("name") or path.stem
    return _manifest_dataset(data, path.parent, str(path), str(name))


# --- the bundled demo ----------------------------------------------------------------------------


def _bundled_dataset(folder: str, name: str) -> Dataset:
    """The dataset whose ``manifest.json`` sits in the package folder ``medseg_env.data.<folder>``.

    Read with ``importlib.resources`` (works from a wheel, writes nothing).
    """
    base = resources.files("medseg_env.data").joinpath(folder)
    manifest = base.joinpath("manifest.json")
    where = f"medseg_env/data/{folder}/manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"the {name} dataset is not installed ({where} missing)")
    data = _parse_manifest_text(manifest.read_text(encoding="utf-8"), where, False)
    return _manifest_dataset(data, base, where, str(data.get("name") or name))


def demo_dataset() -> Dataset:
    """The bundled demo: MR brain / breast and CT lung tumour slices plus microscopy nuclei.

    Read with ``importlib.resources`` (works from a wheel, writes nothing); see
    ``medseg_env/data/demo/PROVENANCE.md`` for sources and licences.
    """
    return _bundled_dataset("demo", "demo")


def demo_heldout_dataset() -> Dataset:
    """The bundled held-out split: MR brain and CT lung tumour slices plus microscopy nuclei.

    Other cases than :func:`demo_dataset` (pyradiomics brain2 / lung2, the bottom half of the
    nuclei image), never used to train the project's click-tuned model; see
    ``medseg_env/data/demo_heldout/PROVENANCE.md`` for sources and licences.
    """
    return _bundled_dataset("demo_heldout", "demo-heldout")


register_dataset("demo", demo_dataset)
register_dataset("demo-heldout", demo_heldout_dataset)


# --- load_dataset --------------------------------------------------------------------------------


def _find_nifti_label(image: Path) -> Path:
    stem = nifti_stem(image)
    ext = image.name[len(stem) :]
    tried = [image.with_name(f"{stem}{suffix}{ext}") for suffix in _LABEL_SUFFIXES]
    if image.parent.name.startswith("images") and stem.endswith("_0000"):
        labels_dir = image.parent.with_name("labels" + image.parent.name[len("images") :])
        tried.append(labels_dir / f"{stem[: -len('_0000')]}{ext}")
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no label found for NIfTI image {image}; tried {', '.join(str(t) for t in tried)}. "
        "Pass (image, label) or a manifest instead."
    )


def load_dataset(
    spec: Dataset | str | os.PathLike[str] | tuple[str, str], **kwargs: Any
) -> Dataset:
    """Resolve ``spec`` (see the module docstring) to a :class:`Dataset`.

    ``kwargs`` go to the loader picked (e.g. ``modality=``, ``window=``, ``label_map=``);
    manifests take their options from the file and accept none.

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError`` and a ``ValueError``) unknown name or
            path; the message lists the registered names.
    """
    if isinstance(spec, Dataset):
        if kwargs:
            raise ValueError("load_dataset: options cannot be applied to an existing Dataset")
        return spec
    if isinstance(spec, tuple | list):
        if len(spec) != 2:
            raise ValueError(f"load_dataset: expected an (image, label) pair; got {spec!r}")
        return load_nifti(spec[0], spec[1], **kwargs)
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(f"load_dataset: unsupported spec type {type(spec).__name__}")
    if isinstance(spec, str) and spec in DATASETS:
        return DATASETS.get(spec)(**kwargs)

    path = Path(spec)
    suffix = path.name.lower()
    if path.is_file():
        if suffix.endswith((".json", ".yaml", ".yml")):
            if kwargs:
                raise ValueError(
                    f"load_dataset: manifest {path} takes no options ({sorted(kwargs)})"
                )
            return load_manifest(path)
        if suffix.endswith(".npz"):
            return load_npz(path, **kwargs)
        if suffix.endswith((".nii", ".nii.gz")):
            return load_nifti(path, _find_nifti_label(path), **kwargs)
        raise ValueError(f"load_dataset: cannot tell the format of {path} (.json, .npz, .nii[.gz])")
    if path.is_dir():
        for manifest_name in ("manifest.json", "manifest.yaml", "manifest.yml"):
            if (path / manifest_name).is_file():
                if kwargs:
                    raise ValueError(f"load_dataset: manifest in {path} takes no options")
                return load_manifest(path / manifest_name)
        if (path / "images").is_dir() and (path / "masks").is_dir():
            return load_folder(path / "images", path / "masks", **kwargs)
        if any(path.glob("*.npz")):
            return load_npz(path, **kwargs)
        layout = detect_layout(path)
        if layout is not None:
            return load_layout(path, layout, **kwargs)
        raise ValueError(
            f"load_dataset: directory {path} has no manifest.json, no images/ + masks/ "
            "sub-folders, no .npz files, and is not an MSD or nnU-Net v2 folder (imagesTr/ + "
            "labelsTr/ + dataset.json) nor images/ + labels/ NIfTI pairs"
        )
    raise DatasetNotFoundError(
        f"unknown dataset {str(spec)!r}: not a registered name "
        f"({', '.join(available_datasets())}) and no such file or directory"
    )

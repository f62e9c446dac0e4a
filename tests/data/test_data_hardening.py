"""Issue 10, findings 3 and 8 (data): manifest option values are type-checked before anything is
loaded, non-finite intensities warn, animated images are refused like multi-page TIFFs, and the
npz loader never advises loading pickled data."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg_env.data import load_folder, load_manifest, load_nifti, load_npz
from medseg_env.data.folder import read_image_file

# --- manifest option values (finding 3) ----------------------------------------------------------

NIFTI_ITEM = {"image": "missing.nii.gz", "label": "missing_label.nii.gz"}
NPZ_ITEM = {"path": "missing.npz"}
FOLDER_ITEM = {"images": "no-images", "masks": "no-masks"}


def write_manifest(folder: Path, doc: dict[str, Any]) -> Path:
    path = folder / "m.json"
    path.write_text(json.dumps(doc))
    return path


# (id, format, top-level options, per-item options, words the message must hold besides the
# manifest path). The item paths do not exist: every check must come before any file is touched,
# so the old code's "missing item path(s)" FileNotFoundError (or a silent success) fails these.
BAD_OPTIONS = [
    (
        "transpose-string-false",
        "nifti",
        {"transpose": "false"},
        {},
        ["'transpose'", '"false"', "a string", "true or false"],
    ),
    (
        "min_area-string",
        "npz",
        {"min_area": "16"},
        {},
        ["'min_area'", '"16"', "a string", "integer >= 1"],
    ),
    (
        "modality-number",
        "nifti",
        {"modality": 5},
        {},
        ["'modality'", "= 5", "an integer", "non-empty string"],
    ),
    ("axis-string", "nifti", {"axis": "2"}, {}, ["'axis'", '"2"', "a string", "0, 1 or 2"]),
    (
        "slice_step-fraction",
        "npz",
        {"slice_step": 1.5},
        {},
        ["'slice_step'", "1.5", "integer >= 1"],
    ),
    ("axis-out-of-range", "nifti", {"axis": 3}, {}, ["'axis'", "= 3", "0, 1 or 2"]),
    (
        "min_area-bool",
        "folder",
        {"min_area": True},
        {},
        ["'min_area'", "true", "a boolean", "integer >= 1"],
    ),
    ("min_area-float", "npz", {"min_area": 16.0}, {}, ["'min_area'", "16.0", "integer >= 1"]),
    ("min_area-zero", "npz", {"min_area": 0}, {}, ["'min_area'", "= 0", "integer >= 1"]),
    (
        "max_slices-zero",
        "nifti",
        {"max_slices_per_target": 0},
        {},
        ["'max_slices_per_target'", "integer >= 1, or null"],
    ),
    (
        "skip_empty-string",
        "folder",
        {"skip_empty": "no"},
        {},
        ["'skip_empty'", '"no"', "true or false"],
    ),
    ("window-zero-width", "nifti", {"window": [40, 0]}, {}, ["'window'", "[40, 0]", "width > 0"]),
    (
        "window-string-level",
        "npz",
        {"window": ["40", 400]},
        {},
        ["'window'", '["40", 400]', "[level, width]"],
    ),
    ("window-one-number", "nifti", {"window": [40]}, {}, ["'window'", "[40]", "[level, width]"]),
    (
        "window-bad-preset",
        "nifti",
        {"window": "spleen"},
        {},
        ["'window'", "unknown CT window preset 'spleen'"],
    ),
    (
        "window-auto-in-folder",
        "folder",
        {"window": "auto"},
        {},
        ["'window'", "unknown CT window preset 'auto'"],
    ),
    (
        "label_map-list",
        "npz",
        {"label_map": ["liver"]},
        {},
        ["'label_map'", "an array", "an object of label values"],
    ),
    (
        "label_map-word-key",
        "npz",
        {"label_map": {"liver": "liver"}},
        {},
        ["'label_map'", "key 'liver' is not an integer"],
    ),
    (
        "label_map-zero-key",
        "npz",
        {"label_map": {"0": "background"}},
        {},
        ["'label_map'", "entry '0'"],
    ),
    (
        "label_map-number-name",
        "nifti",
        {"label_map": {"1": 5}},
        {},
        ["'label_map'", 'entry "1": 5', "not a name"],
    ),
    ("label_map-empty-name", "nifti", {"label_map": {"1": " "}}, {}, ["'label_map'", "not a name"]),
    ("mask_suffix-number", "folder", {"mask_suffix": 5}, {}, ["'mask_suffix'", "= 5", "a string"]),
    (
        "mask_suffix-path",
        "folder",
        {"mask_suffix": "x/_mask"},
        {},
        ["'mask_suffix'", "path separators"],
    ),
    ("name-number", "npz", {"name": 5}, {}, ["'name'", "non-empty string"]),
    ("name-empty", "npz", {"name": ""}, {}, ["'name'", "non-empty string"]),
    ("description-list", "npz", {"description": ["a"]}, {}, ["'description'", "a string"]),
    ("item-id-number", "nifti", {}, {"id": 7}, ["item 1: 'id'", "= 7", "non-empty string"]),
    (
        "item-transpose-string",
        "nifti",
        {},
        {"transpose": "true"},
        ["item 1: 'transpose'", '"true"', "true or false"],
    ),
    (
        "item-skip_empty-number",
        "npz",
        {},
        {"skip_empty": 1},
        ["item 1: 'skip_empty'", "= 1", "true or false"],
    ),
    (
        "item-window-null-level",
        "npz",
        {},
        {"window": [None, 400]},
        ["item 1: 'window'", "[null, 400]"],
    ),
]


@pytest.mark.parametrize(
    "fmt, top, item, words", [case[1:] for case in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS]
)
def test_a_bad_manifest_option_names_manifest_item_key_and_value(
    tmp_path: Path, fmt: str, top: dict[str, Any], item: dict[str, Any], words: list[str]
) -> None:
    base = {"nifti": NIFTI_ITEM, "npz": NPZ_ITEM, "folder": FOLDER_ITEM}[fmt]
    doc = {"format": fmt, **top, "items": [dict(base), {**base, **item}]}
    path = write_manifest(tmp_path, doc)
    with pytest.raises(ValueError) as info:
        load_manifest(path)
    message = str(info.value)
    assert not isinstance(info.value, FileNotFoundError), message  # checked before any path
    assert message.startswith(f"manifest {path}: "), message
    if not item:  # a top-level option: no item is blamed
        assert "item" not in message.split(":")[1], message
    for word in words:
        assert word in message, (word, message)


def _nifti_case(folder: Path) -> None:
    lab = np.zeros((12, 10, 3), np.uint8)
    lab[2:8, 1:4, 1] = 1  # taller than wide: a transpose shows in the mask's shape
    img = np.where(lab > 0, 40, -1000).astype(np.int16)
    nib.save(nib.Nifti1Image(img, np.eye(4)), folder / "case.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), folder / "case_label.nii.gz")


def test_transpose_string_false_no_longer_transposes_silently(tmp_path: Path) -> None:
    """The reproducer: "transpose": "false" used to transpose every image and mask."""
    _nifti_case(tmp_path)
    item = {"image": "case.nii.gz", "label": "case_label.nii.gz"}
    path = write_manifest(tmp_path, {"format": "nifti", "transpose": "false", "items": [item]})
    with pytest.raises(ValueError, match=r"'transpose' = \"false\" \(a string\) must be true or"):
        load_manifest(path)
    # The JSON booleans work, and false really is the stored orientation.
    plain = load_nifti(tmp_path / "case.nii.gz", tmp_path / "case_label.nii.gz")
    for flag, shape in ((False, (12, 10)), (True, (10, 12))):
        path.write_text(json.dumps({"format": "nifti", "transpose": flag, "items": [item]}))
        ds = load_manifest(path)
        assert ds[0].image.shape[:2] == shape and len(ds) == len(plain)
    # Every option, well typed, still loads.
    item = {**item, "id": "c"}
    doc = {
        "format": "nifti",
        "name": "typed",
        "description": "every option, well typed",
        "modality": "CT",
        "window": [40, 400],
        "label_map": {"1": "liver"},
        "min_area": 1,
        "axis": 2,
        "slice_step": 1,
        "max_slices_per_target": None,
        "transpose": False,
        "items": [item, {**item, "id": "d", "window": "auto", "max_slices_per_target": 1}],
    }
    ds = load_manifest(write_manifest(tmp_path, doc))
    assert ds.name == "typed" and [s.sample_id for s in ds] == ["c/z001/liver", "d/z001/liver"]


# --- NaN and inf intensities (finding 8) ---------------------------------------------------------


def _float_image_with(nan: int, posinf: int, neginf: int, shape=(16, 16)) -> np.ndarray:
    img = np.linspace(0, 100, shape[0] * shape[1], dtype=np.float32).reshape(shape)
    flat = img.reshape(-1)
    flat[:nan] = np.nan
    flat[nan : nan + posinf] = np.inf
    flat[nan + posinf : nan + posinf + neginf] = -np.inf
    return img


def _target(shape=(16, 16)) -> np.ndarray:
    gts = np.zeros(shape, np.uint8)
    gts[4:12, 4:12] = 1
    return gts


def test_npz_with_nan_and_inf_warns_with_file_and_count(tmp_path: Path) -> None:
    path = tmp_path / "scan.npz"
    np.savez(path, imgs=_float_image_with(3, 2, 1), gts=_target())
    with pytest.warns(
        RuntimeWarning,
        match=r"scan\.npz: 6 of 256 pixel values are not finite \(3 NaN, 3 infinite\)",
    ):
        ds = load_npz(path)
    assert ds[0].image[0, 0, 0] == 0 and ds[0].image[0, 3, 0] == 255  # NaN black, +inf white
    np.savez(path, imgs=_float_image_with(0, 0, 0), gts=_target())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite images: no warning
        load_npz(path)


def test_folder_float_tiff_with_nan_warns(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", _float_image_with(5, 0, 0))
    Image.fromarray(_target()).save(tmp_path / "masks" / "a.png")
    with pytest.warns(
        RuntimeWarning, match=r"a\.tif: 5 of 256 pixel values are not finite \(5 NaN"
    ):
        load_folder(tmp_path / "images", tmp_path / "masks")
    with pytest.warns(RuntimeWarning, match=r"a\.tif: 5 of 256"):  # windowed path too
        load_folder(tmp_path / "images", tmp_path / "masks", window="abdomen")


def test_nifti_with_nan_warns(tmp_path: Path) -> None:
    img = np.stack([_float_image_with(0, 4, 0)] * 2, axis=2)
    lab = np.stack([_target()] * 2, axis=2)
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "v_label.nii.gz")
    with pytest.warns(
        RuntimeWarning,
        match=r"v\.nii\.gz: 8 of 512 pixel values are not finite \(0 NaN, 8 infinite\)",
    ):
        load_nifti(tmp_path / "v.nii.gz", tmp_path / "v_label.nii.gz", modality="MR")


# --- animated images (finding 8) -----------------------------------------------------------------


def _folder_with_animated(tmp_path: Path, which: str) -> tuple[Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (0, 100, 200)]
    still = Image.fromarray(_target())
    if which == "image":
        frames[0].save(images / "a.png", save_all=True, append_images=frames[1:])
        still.save(masks / "a.png")
    else:
        Image.fromarray(np.full((16, 16), 50, np.uint8)).save(images / "a.png")
        masked = [Image.fromarray(_target() * k) for k in (1, 2)]
        masked[0].save(masks / "a.png", save_all=True, append_images=masked[1:])
    return images, masks


@pytest.mark.parametrize("which", ["image", "mask"])
def test_an_animated_png_is_refused_like_a_multipage_tiff(tmp_path: Path, which: str) -> None:
    images, masks = _folder_with_animated(tmp_path, which)
    folder = images if which == "image" else masks
    frames = 3 if which == "image" else 2
    expected = re.escape(f"{folder / 'a.png'}: expected a 2D grey or RGB(A) image; got a multi-")
    expected += rf"frame PNG image \({frames} frames\)"
    with pytest.raises(ValueError, match=expected):
        load_folder(images, masks)

    # The multi-page TIFF it is consistent with.
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    with pytest.raises(ValueError, match=re.escape(f"{stack}: expected a 2D grey or RGB(A) image")):
        read_image_file(stack)


def test_an_animated_gif_names_its_frame_count(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 80, 160, 240)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match=r"a\.gif: .*multi-frame GIF image \(4 frames\)"):
        read_image_file(tmp_path / "a.gif")
    frames[0].save(tmp_path / "one.png")  # a still image is fine
    assert read_image_file(tmp_path / "one.png").shape == (8, 8)


# --- npz: no advice to load pickles (finding 8) --------------------------------------------------


def _message_chain(err: BaseException) -> str:
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def test_a_text_file_named_npz_gets_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "notes.npz"
    path.write_text("imgs,gts\n1,2\n")
    with pytest.raises(ValueError, match=r"notes\.npz: not an \.npz archive") as info:
        load_npz(path)
    chain = _message_chain(info.value)
    assert "allow_pickle" not in chain and "unsafe" not in chain, chain


def test_an_npz_holding_objects_is_refused_without_pickle_advice(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, imgs=np.array([{"a": 1}], dtype=object), gts=_target())
    with pytest.raises(
        ValueError, match=r"objects\.npz: array 'imgs' holds Python objects.*never loaded"
    ) as info:
        load_npz(path)
    chain = _message_chain(info.value)
    assert "allow_pickle" not in chain and "unsafe" not in chain, chain


def test_an_empty_file_named_npz_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npz: not an \.npz archive.*file is empty"):
        load_npz(tmp_path / "empty.npz")

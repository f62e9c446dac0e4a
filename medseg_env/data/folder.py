"""Folders of 2D image files with matching mask files -> samples.

``images_dir/<stem>.<ext>`` pairs with ``masks_dir/<stem><mask_suffix>.<ext>``; extensions may
differ (``a.jpg`` with ``a.png``). Supported: PNG, JPEG, BMP (read with Pillow) and TIFF
(read with tifffile); 8- or 16-bit (or float TIFF), grey or RGB(A).

Masks are label maps: every nonzero value is one target, named by ``label_map`` or
``"label_<value>"``. A binary mask saved as 0/255 therefore gives one target ``"label_255"``
(pass ``label_map={255: "lesion"}`` to name it). Avoid JPEG masks: compression noise creates
spurious values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from medseg_env.data.dataset import Dataset, as_label_array, parse_label_map, samples_from_slices
from medseg_env.data.intensity import (
    Window,
    grey_to_rgb,
    intensity_to_uint8,
    resolve_window,
    to_rgb_uint8,
)
from medseg_env.data.sample import Sample

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
_TIFF = frozenset({".tif", ".tiff"})


class _MultiFrame(Exception):
    """An animated image: refused with its own message (not "cannot read")."""


def read_image_file(path: Path, *, palette_as_index: bool = False) -> np.ndarray:
    """Read a 2D image file as an array: ``(H, W)`` or ``(H, W, C)``, dtype as stored.

    Palette images are expanded to RGB, unless ``palette_as_index`` (masks: the palette index
    is the label).

    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable file or not a 2D image (a multi-page TIFF, an animated PNG...).
    """
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        if path.suffix.lower() in _TIFF:
            arr = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as opened:
                # Animated PNG / GIF / WebP: refused like a multi-page TIFF, not cut to frame 1.
                # (MPO, a camera JPEG with extra views, keeps its primary image as any viewer.)
                frames = getattr(opened, "n_frames", 1)
                if frames > 1 and opened.format != "MPO":
                    raise _MultiFrame(
                        f"{path}: expected a 2D grey or RGB(A) image; got a multi-frame "
                        f"{opened.format} image ({frames} frames)"
                    )
                opened.load()
                img: Image.Image = opened
                if img.mode == "P" and not palette_as_index:
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    img = img.convert("RGB")
                elif img.mode == "LA":
                    img = img.getchannel("L")
                elif img.mode == "PA":
                    img = img.convert("RGB") if not palette_as_index else img.getchannel("P")
                arr = np.array(img)
    except _MultiFrame as err:
        raise ValueError(str(err)) from None
    except (OSError, ValueError, UnidentifiedImageError, tifffile.TiffFileError) as err:
        raise ValueError(f"cannot read image file {path}: {type(err).__name__}: {err}") from err
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]  # (1, H, W) single-page TIFFs
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or 0 in arr.shape:
        raise ValueError(f"{path}: expected a 2D grey or RGB(A) image; got array shape {arr.shape}")
    return arr


def _mask_labels(path: Path) -> np.ndarray:
    """A mask file as an ``(H, W)`` ``int64`` label map (grey saved as RGB is accepted)."""
    arr = read_image_file(path, palette_as_index=True)
    if arr.ndim == 3:
        rgb = arr[:, :, :3]
        if not (
            np.array_equal(rgb[:, :, 0], rgb[:, :, 1])
            and np.array_equal(rgb[:, :, 0], rgb[:, :, 2])
        ):
            raise ValueError(
                f"mask {path} is a colour image; expected a grey / palette label map "
                "(one integer value per target)"
            )
        arr = rgb[:, :, 0]
    return as_label_array(arr, f"mask {path}")


def _index(directory: Path, suffix: str, what: str) -> dict[str, Path]:
    """``{stem without suffix: file}`` for the image files of a directory."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {directory}")
    out: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = p.stem
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[: -len(suffix)]
        if stem in out:
            raise ValueError(
                f"{what} directory {directory}: {out[stem].name} and {p.name} share a stem"
            )
        out[stem] = p
    return out


def load_folder(
    images_dir: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str],
    *,
    modality: str = "unknown",
    window: Window | None = None,
    label_map: Mapping[int, str] | None = None,
    min_area: int = 16,
    mask_suffix: str = "",
    skip_empty: bool = False,
    name: str | None = None,
) -> Dataset:
    """Pair images and masks by file stem and make one sample per nonzero mask value.

    Args:
        images_dir: image files (other files and hidden files are ignored).
        masks_dir: mask files named ``<image stem><mask_suffix>.<ext>``.
        modality: stored in every sample.
        window: for grey non-``uint8`` images only: CT preset or ``(level, width)`` applied
            to the raw values; ``None`` (default) = per-image 0.5-99.5 % percentile
            normalisation. ``uint8`` images are used as they are.
        label_map: ``{mask value: target name}``.
        min_area: skip targets with fewer pixels.
        mask_suffix: e.g. ``"_mask"`` for ``a.png`` / ``a_mask.png``.
        skip_empty: skip images whose mask has no target instead of raising.
        name: dataset name (default: the images directory name).

    Raises:
        FileNotFoundError: a directory is missing, is empty, or a file has no partner (the
            message names it).
        ValueError: unreadable file, image / mask size mismatch, or a mask without target.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    win = resolve_window(window) if window is not None else None
    names = parse_label_map(label_map, "load_folder")
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1; got {min_area!r}")
    images = _index(images_dir, "", "images")
    masks = _index(masks_dir, mask_suffix, "masks")
    if not images:
        raise FileNotFoundError(
            f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {images_dir}"
        )
    lonely_images = sorted(set(images) - set(masks))
    if lonely_images:
        raise FileNotFoundError(
            f"no mask in {masks_dir} for image(s) "
            f"{', '.join(images[s].name for s in lonely_images[:5])}"
            f" (expected <stem>{mask_suffix}.<ext>)"
        )
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_masks:
        raise FileNotFoundError(
            f"no image in {images_dir} for mask(s) "
            f"{', '.join(masks[s].name for s in lonely_masks[:5])}"
        )

    samples: list[Sample] = []
    for stem, image_path in images.items():
        raw = read_image_file(image_path)
        labels = _mask_labels(masks[stem])
        if raw.shape[:2] != labels.shape:
            raise ValueError(
                f"size mismatch: image {image_path} is {raw.shape[:2]} "
                f"but mask {masks[stem]} is {labels.shape}"
            )
        if win is not None and raw.ndim == 2 and raw.dtype != np.uint8:
            rgb = grey_to_rgb(intensity_to_uint8(raw, win, where=str(image_path)))
        else:
            rgb = to_rgb_uint8(raw, where=str(image_path))

        def image_of(_k: int, rgb: np.ndarray = rgb) -> np.ndarray:  # bound now, read later
            return rgb

        found = samples_from_slices(
            image_of,
            labels[None],
            slice_ids=[""],
            source_id=stem,
            modality=modality,
            spacing=(1.0, 1.0),
            label_map=names,
            min_area=min_area,
        )
        if not found and not skip_empty:
            raise ValueError(
                f"no target in mask {masks[stem]}: no nonzero value covers >= {min_area} pixels"
            )
        samples.extend(found)
    if not samples:
        raise ValueError(f"no target in any mask of {masks_dir} (min_area={min_area})")
    return Dataset(samples, name=name or images_dir.name)

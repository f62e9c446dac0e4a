"""Build the bundled demo dataset (or the held-out split) from public sample data.

Sources (see PROVENANCE.md next to this file):

* pyradiomics 3.1.0 sdist, ``data/{brain1,brain2,breast1,lung1,lung2}_{image,label}.nrrd``.
  Get it with ``TMPDIR=/tmp/pr pip download --no-deps --no-clean pyradiomics==3.1.0``: pip
  fails on the package metadata but leaves the unpacked tree under ``$TMPDIR/pip-*``.
* stardist 0.9.2 wheel, ``stardist/data/images/{img2d,mask2d}.tif`` (2018 Data Science Bowl
  nuclei). Get it with ``pip download --no-deps stardist==0.9.2`` and unzip the wheel.

Splits:

* ``demo`` (default): brain1 (MR), lung1 (CT), breast1 (MR) and the nuclei image rows 0-255.
* ``heldout``: brain2 (MR), lung2 (CT) and nuclei rows 256-511, never used for model
  training; bundled separately as ``medseg_env/data/demo_heldout`` (``--name demo-heldout``).

Output: one MedSAM-style ``.npz`` per 2D image (``imgs`` (H, W, 3) uint8, ``gts`` (H, W)
uint16 label map, ``spacing`` (2,) float64 mm, ``modality``, ``label_names`` JSON,
``source_id``) plus ``manifest.json``. Files are byte-for-byte reproducible.

Usage::

    python medseg_env/data/demo/build_demo.py --pyradiomics DIR --stardist DIR \
        --out medseg_env/data/demo [--split demo|heldout] [--name NAME] [--clean]
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.transform import resize

try:
    from medseg_env.data.dataset import select_spread
    from medseg_env.data.intensity import WINDOW_PRESETS, percentile_range, rescale_to_uint8
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from medseg_env.data.dataset import select_spread
    from medseg_env.data.intensity import WINDOW_PRESETS, percentile_range, rescale_to_uint8

SIZE = 256  # output side of the tumour images (pixels)
MAX_SLICES = 6  # per tumour case
MIN_TUMOUR_AREA = 30  # pixels, measured at the output size
TILE = 128  # nuclei tile side
MIN_NUCLEUS_AREA = 20  # pixels; smaller fragments (cut by the tile border) are dropped
NUCLEI_ROWS = {"demo": (0, 256), "heldout": (256, 512)}


@dataclass(frozen=True)
class Case:
    modality: str
    window: str | None  # CT preset; None = percentile normalisation over the volume
    crop: int | None  # side of the square crop (source pixels), centred on the body


CASES = {
    "brain1": Case("MR", None, None),
    "breast1": Case("MR", None, None),
    "lung1": Case("CT", "lung", 384),
    "brain2": Case("MR", None, None),
    "lung2": Case("CT", "lung", 384),
}
SPLIT_CASES = {"demo": ("brain1", "lung1", "breast1"), "heldout": ("brain2", "lung2")}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so rebuilds are identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def find_file(root: Path, name: str, subdirs: tuple[str, ...]) -> Path:
    for sub in subdirs:
        candidate = root / sub / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name} not found under {root} (looked in {', '.join(subdirs)})")


def square_box(body: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner of a ``side``-square centred on the body, kept inside the image."""
    rows, cols = np.nonzero(body)
    centre = ((rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2)
    top, left = (
        int(np.clip(c - side // 2, 0, n - side)) for c, n in zip(centre, body.shape, strict=True)
    )
    return top, left


def tumour_case(
    case_id: str, pyradiomics: Path, max_slices: int = MAX_SLICES
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Up to ``max_slices`` axial slices of one pyradiomics case, as (file stem, npz arrays).

    The demo keeps a spread of ``MAX_SLICES``; the click-model training passes a large
    ``max_slices`` to get every tumour slice.
    """
    import nrrd  # pynrrd; only needed here

    case = CASES[case_id]
    subdirs = ("data", ".")
    vol, header = nrrd.read(str(find_file(pyradiomics, f"{case_id}_image.nrrd", subdirs)))
    lab, _ = nrrd.read(str(find_file(pyradiomics, f"{case_id}_label.nrrd", subdirs)))
    if vol.shape != lab.shape or vol.ndim != 3:
        raise ValueError(f"{case_id}: image {vol.shape} / label {lab.shape} mismatch")
    # NRRD arrays are (x, y, z): an axial slice is vol[:, :, z].T, rows = y, cols = x.
    steps = np.linalg.norm(np.asarray(header["space directions"], dtype=float), axis=1)
    row_mm, col_mm = float(steps[1]), float(steps[0])

    # One intensity mapping per volume: CT window in HU, else 0.5-99.5 % percentiles.
    if case.window is not None:
        level, width = WINDOW_PRESETS[case.window]
        low, high = level - width / 2, level + width / 2
        body_threshold = -400.0  # HU: anything denser than lung / air
    else:
        low, high = percentile_range(vol)
        body_threshold = low + 0.1 * (high - low)
    fill = float(vol.min())

    zs = [int(z) for z in np.nonzero((lab > 0).any(axis=(0, 1)))[0]]
    body = np.zeros(vol.shape[1::-1], dtype=bool)
    for z in zs:
        body |= vol[:, :, z].T > body_threshold
    labelled, n = ndimage.label(body)
    if n:  # largest component: drops the CT table and noise
        body = labelled == 1 + int(np.argmax(ndimage.sum(body, labelled, range(1, n + 1))))

    h, w = body.shape
    side = min(case.crop or max(h, w), max(h, w))
    top, left = square_box(body, side) if side <= min(h, w) else (0, 0)
    scale = SIZE / side

    slices = []
    for z in zs:
        img = vol[:, :, z].T.astype(np.float32)
        seg = (lab[:, :, z].T > 0).astype(np.uint8)
        if side <= min(h, w):
            img = img[top : top + side, left : left + side]
            seg = seg[top : top + side, left : left + side]
        else:  # smaller than the square (breast1 is 120 x 45): pad, centred
            pad = [((side - s) // 2, side - s - (side - s) // 2) for s in img.shape]
            img = np.pad(img, pad, constant_values=fill)
            seg = np.pad(seg, pad)
        img = resize(img, (SIZE, SIZE), order=1, anti_aliasing=scale < 1, preserve_range=True)
        seg = resize(seg, (SIZE, SIZE), order=0, anti_aliasing=False, preserve_range=True)
        slices.append((z, rescale_to_uint8(img, low, high), seg.astype(np.uint16)))

    candidates = [(z, g, s) for z, g, s in slices if int((s > 0).sum()) >= MIN_TUMOUR_AREA]
    chosen = select_spread(
        [c[0] for c in candidates], [int((c[2] > 0).sum()) for c in candidates], max_slices
    )
    out = []
    for z, grey, seg in candidates:
        if z not in chosen:
            continue
        arrays = {
            "imgs": np.repeat(grey[:, :, None], 3, axis=2),
            "gts": seg,
            "spacing": np.array([row_mm / scale, col_mm / scale]),
            "modality": np.array(case.modality),
            "label_names": np.array(json.dumps({"1": "tumour"})),
            "source_id": np.array(case_id),
        }
        out.append((f"{case_id}_z{z:03d}", arrays))
    return out


def nuclei_tiles(stardist: Path, split: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """TILE x TILE tiles of the split's half of the stardist nuclei image."""
    import tifffile

    subdirs = ("stardist/data/images", "data/images", "images", ".")
    img = tifffile.imread(find_file(stardist, "img2d.tif", subdirs))
    mask = tifffile.imread(find_file(stardist, "mask2d.tif", subdirs))
    if img.shape != mask.shape or img.ndim != 2:
        raise ValueError(f"nuclei image {img.shape} / mask {mask.shape} mismatch")
    r0, r1 = NUCLEI_ROWS[split]
    # Percentiles over this split's half only: nothing of the other half leaks in.
    low, high = percentile_range(img[r0:r1])
    grey = rescale_to_uint8(img[r0:r1], low, high)
    out = []
    for tr in range(0, r1 - r0, TILE):
        for tc in range(0, img.shape[1], TILE):
            seg = mask[r0 + tr : r0 + tr + TILE, tc : tc + TILE].astype(np.uint16)
            values, counts = np.unique(seg[seg > 0], return_counts=True)
            small = values[counts < MIN_NUCLEUS_AREA]
            seg[np.isin(seg, small)] = 0
            kept = [int(v) for v in values if v not in small]
            if not kept:
                continue
            tile = grey[tr : tr + TILE, tc : tc + TILE]
            arrays = {
                "imgs": np.repeat(tile[:, :, None], 3, axis=2),
                "gts": seg,
                "spacing": np.array([1.0, 1.0]),
                "modality": np.array("microscopy"),
                "label_names": np.array(json.dumps({str(v): "nucleus" for v in kept})),
                "source_id": np.array("nuclei"),
            }
            out.append((f"nuclei_r{r0 + tr:03d}_c{tc:03d}", arrays))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pyradiomics", type=Path, required=True, help="pyradiomics sdist tree")
    parser.add_argument("--stardist", type=Path, required=True, help="unpacked stardist wheel")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--split", choices=sorted(SPLIT_CASES), default="demo")
    parser.add_argument("--name", help="dataset name in manifest.json (default: the split)")
    parser.add_argument("--clean", action="store_true", help="delete old *.npz in --out first")
    args = parser.parse_args(argv)

    items = []
    for case_id in SPLIT_CASES[args.split]:
        items += tumour_case(case_id, args.pyradiomics)
    items += nuclei_tiles(args.stardist, args.split)

    args.out.mkdir(parents=True, exist_ok=True)
    new = {f"{stem}.npz" for stem, _ in items}
    stale = sorted(p for p in args.out.glob("*.npz") if p.name not in new)
    if stale and not args.clean:
        parser.error(f"{args.out} holds other .npz files ({stale[0].name}, ...); use --clean")
    for p in stale:
        p.unlink()
    for stem, arrays in items:
        save_npz(args.out / f"{stem}.npz", arrays)
    manifest = {
        "name": args.name or args.split,
        # the flag every trainer and exporter checks (medseg_env.data.refuse_heldout)
        **({"heldout": True} if args.split == "heldout" else {}),
        "format": "npz",
        "description": f"built by build_demo.py --split {args.split}; see PROVENANCE.md",
        "items": [{"path": f"{stem}.npz"} for stem, _ in items],
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    # Samples = targets: one per nonzero label value of each image.
    per_source: Counter[str] = Counter()
    per_images: Counter[str] = Counter()
    for _, arrays in items:
        source = str(arrays["source_id"])
        per_images[source] += 1
        per_source[source] += len(np.unique(arrays["gts"][arrays["gts"] > 0]))
    size = sum((args.out / f"{stem}.npz").stat().st_size for stem, _ in items)
    print(f"split {args.split!r} -> {args.out}")
    for source in per_source:
        print(f"  {source:10s} {per_images[source]:3d} images {per_source[source]:4d} samples")
    print(
        f"  total      {len(items):3d} images {sum(per_source.values()):4d} samples, "
        f"{size / 1e6:.2f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

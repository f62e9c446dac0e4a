"""The training images and their targets, and the guard that keeps the held-out split out.

Real images only from the sources below, plus procedural shapes; the held-out split
(pyradiomics ``brain2``, ``lung2`` and the stardist nuclei rows 256-511) is never read, and
``check_no_heldout`` refuses a training set that holds any of it (``HeldOutLeakError``, a
``ValueError``). The recipe reads raw sources, not a registered dataset, so it cannot check
``Dataset.heldout`` itself: its held-out sources are the ones ``build_demo.py`` cuts the
flagged ``demo-heldout`` dataset from (``SPLIT_CASES``, ``NUCLEI_ROWS``), never a list of its
own, and its training cases and rows are the ``demo`` side of the same tables:

* pyradiomics ``brain1``, ``lung1``, ``breast1``: every tumour slice, preprocessed exactly as
  the demo (``medseg_env/data/demo/build_demo.py``), with the 8 flips / 90° rotations, random
  zoom crops around the tumour and zoomed-out copies (smaller lesions);
* stardist nuclei image rows 0-255: random 96-160 px crops resized to 128×128, each nucleus a
  target;
* the MNI152 2009a template (nilearn wheel): T1 slices with grey / white matter (> 127 of
  0-255) connected components in random crops;
* procedural shapes: ellipses / blobs with textured fore- and background.

Every random draw comes from the generators passed in, in a fixed order, so a seed gives the
same images (and hence the same embedding cache entries) on every run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from medseg_env.data.demo import build_demo
from medseg_env.data.intensity import percentile_range, rescale_to_uint8

INPUT = 256  # LiteMedSAM's encoder input side


def _rows(split: str) -> str:
    """The stardist rows of one side of the demo split, ``"256-511"``."""
    first, end = build_demo.NUCLEI_ROWS[split]
    return f"{first}-{end - 1}"


HELDOUT_SOURCES = frozenset(
    [f"pyradiomics:{case}" for case in build_demo.SPLIT_CASES["heldout"]]
    + [f"stardist:rows{_rows('heldout')}"]
)
# any source naming one of these is held out (look-alikes such as "pyradiomics:lung2_zoom" too)
HELDOUT_MARKERS = (*build_demo.SPLIT_CASES["heldout"], _rows("heldout"))
TRAIN_CASES = build_demo.SPLIT_CASES["demo"]
NUCLEI_ROWS = build_demo.NUCLEI_ROWS["demo"]
EVERY_SLICE = 10_000  # build_demo's max_slices for training: every slice, not the demo's 6
DIHEDRAL_ORDER = (0, 5, 2, 7, 1, 4, 3, 6)  # variant-major: a partial cache stays varied


@dataclass
class Item:
    """One training image (one encode) and its targets."""

    name: str
    source: str  # e.g. "pyradiomics:brain1"; checked against HELDOUT_SOURCES
    image: np.ndarray  # (H, W, 3) uint8, H, W <= INPUT
    targets: list[np.ndarray] = field(default_factory=list)  # (H, W) bool masks


class HeldOutLeakError(ValueError):
    """A training set holds images from the held-out split."""


def check_no_heldout(items: list[Item]) -> None:
    """Raise ``HeldOutLeakError`` naming the leaked sources: training never sees a held-out
    case. A real exception, not an ``assert``, so that ``python -O`` keeps the check."""
    leaked = sorted(
        {
            it.source
            for it in items
            if it.source in HELDOUT_SOURCES or any(m in it.source for m in HELDOUT_MARKERS)
        }
    )
    if leaked:
        raise HeldOutLeakError(f"held-out sources in the training set: {leaked}")


def dihedral(arr: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips / 90° rotations (k in 0..7) of the first two axes."""
    out = np.rot90(arr, k % 4, axes=(0, 1))
    if k >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


# --- pyradiomics tumour slices ---------------------------------------------------------------


def zoom_out(
    grey: np.ndarray, seg: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The slice shrunk by 0.45-0.8 and pasted at a random place on a background-filled canvas,
    so that lesions come at the small sizes of e.g. brain2 (40-230 px) as well."""
    h, w = grey.shape
    scale = rng.uniform(0.45, 0.8)
    nh, nw = round(h * scale), round(w * scale)
    g = resize(grey.astype(np.float32), (nh, nw), order=1, preserve_range=True, anti_aliasing=True)
    s = resize(seg.astype(np.float32), (nh, nw), order=1, preserve_range=True) > 0.5
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    canvas = np.full((h, w), np.median(border), np.float32)
    canvas_seg = np.zeros((h, w), bool)
    r, c = int(rng.integers(0, h - nh + 1)), int(rng.integers(0, w - nw + 1))
    canvas[r : r + nh, c : c + nw] = g
    canvas_seg[r : r + nh, c : c + nw] = s
    return np.clip(canvas, 0, 255).astype(np.uint8), canvas_seg


def zoom_crop(
    grey: np.ndarray, seg: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """A random 96-199 px square near the tumour, resized to ``INPUT``; None when the tumour
    keeps under 30 px in it."""
    side = int(rng.integers(96, 200))
    rows, cols = np.nonzero(seg)
    cr = int(np.clip(rows.mean() + rng.integers(-20, 21) - side // 2, 0, 256 - side))
    cc = int(np.clip(cols.mean() + rng.integers(-20, 21) - side // 2, 0, 256 - side))
    window = (slice(cr, cr + side), slice(cc, cc + side))
    g = resize(grey[window].astype(np.float32), (INPUT, INPUT), order=1, preserve_range=True)
    s = resize(seg[window].astype(np.float32), (INPUT, INPUT), order=0, preserve_range=True) > 0.5
    if s.sum() < 30:
        return None
    return np.clip(g, 0, 255).astype(np.uint8), s


def tumour_view(name: str, case: str, grey: np.ndarray, seg: np.ndarray, k: int) -> Item:
    """A pyradiomics training item: dihedral view ``k`` of a grey slice and its tumour mask."""
    return Item(name, f"pyradiomics:{case}", rgb(dihedral(grey, k)), [dihedral(seg, k)])


def tumour_slices(case: str, pyradiomics: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(stem, grey, tumour mask)`` of every tumour slice of a case, as the demo builds it."""
    slices = build_demo.tumour_case(case, pyradiomics, max_slices=EVERY_SLICE)
    return [(stem, arrays["imgs"][:, :, 0], arrays["gts"] > 0) for stem, arrays in slices]


def tumour_items(
    pyradiomics: Path,
    rng: np.random.Generator,
    zooms: int,
    zoom_outs: int,
    out_rng: np.random.Generator,
) -> list[Item]:
    """Every tumour slice of the training cases, demo preprocessing, dihedral + zoom variants.

    Zoom-outs draw from their own ``out_rng``, so turning them on leaves every other image
    (and hence the embedding cache) as it was."""
    items = []
    for case in TRAIN_CASES:
        slices = tumour_slices(case, pyradiomics)
        for k in DIHEDRAL_ORDER:
            for stem, grey, seg in slices:
                items.append(tumour_view(f"{stem}_d{k}", case, grey, seg, k))
        for stem, grey, seg in slices:
            for z in range(zooms):  # zoom crops centred near the tumour
                crop = zoom_crop(grey, seg, rng)
                if crop is None:
                    continue
                k = int(rng.integers(8))
                items.append(tumour_view(f"{stem}_zoom{z}", case, *crop, k))
        for stem, grey, seg in slices:
            for z in range(zoom_outs):  # shrunk slices: smaller lesions
                g, m = zoom_out(grey, seg, out_rng)
                if m.sum() < 20:
                    continue
                k = int(out_rng.integers(8))
                items.append(tumour_view(f"{stem}_zoomout{z}", case, g, m, k))
    return items


# --- stardist nuclei, MNI152, procedural shapes ----------------------------------------------


def nuclei_items(stardist: Path, rng: np.random.Generator, n: int) -> list[Item]:
    """Random crops of the top half (``NUCLEI_ROWS``, 0-255) of the stardist nuclei image."""
    import tifffile

    base = stardist / "stardist" / "data" / "images"
    rows = slice(*NUCLEI_ROWS)  # the demo side only: rows 256-511 are held out
    img = tifffile.imread(base / "img2d.tif")[rows]
    mask = tifffile.imread(base / "mask2d.tif")[rows]
    low, high = percentile_range(img)
    grey = rescale_to_uint8(img, low, high)
    items = []
    for i in range(n):
        side = int(rng.integers(96, 161))
        r = int(rng.integers(0, img.shape[0] - side + 1))
        c = int(rng.integers(0, img.shape[1] - side + 1))
        window = (slice(r, r + side), slice(c, c + side))
        g = resize(
            grey[window].astype(np.float32),
            (128, 128),
            order=1,
            preserve_range=True,
            anti_aliasing=side > 128,
        )
        lab = resize(
            mask[window], (128, 128), order=0, preserve_range=True, anti_aliasing=False
        ).astype(np.int32)
        k = int(rng.integers(8))
        g, lab = dihedral(np.clip(g, 0, 255).astype(np.uint8), k), dihedral(lab, k)
        targets = [lab == v for v in np.unique(lab[lab > 0]) if (lab == v).sum() >= 20]
        if targets:
            items.append(
                Item(f"nuclei_crop{i:03d}", f"stardist:rows{_rows('demo')}", rgb(g), targets)
            )
    return items


def mni_volumes(nilearn: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 2009a T1 and its grey / white matter masks (> 127 of 0-255)."""
    import nibabel as nib

    data = nilearn / "nilearn" / "datasets" / "data"

    def load(kind: str) -> np.ndarray:
        path = data / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
        return np.asarray(nib.load(path).dataobj, np.float32)  # type: ignore[attr-defined]

    return load("t1"), load("gm") > 127, load("wm") > 127


def component_targets(masks: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """The 3 largest connected components of each crop-sized mask, resized to ``INPUT``,
    kept when they cover 300 px to half the image."""
    targets = []
    for m in masks:
        m = resize(m.astype(np.float32), (INPUT, INPUT), order=0, preserve_range=True) > 0.5
        lab, nlab = ndimage.label(m)
        if nlab:
            sizes = ndimage.sum(m, lab, range(1, nlab + 1))
            for j in np.argsort(sizes)[::-1][:3]:
                if 300 <= sizes[j] <= 0.5 * m.size:
                    targets.append(lab == j + 1)
    return targets


def mni_items(nilearn: Path, rng: np.random.Generator, n: int) -> list[Item]:
    """MNI152 T1 slices (axial / coronal), crops with GM / WM connected components as targets."""
    t1, gm, wm = mni_volumes(nilearn)
    low, high = percentile_range(t1[t1 > 0])
    items = []
    for i in range(n):
        axis = int(rng.integers(0, 3))
        idx = int(rng.integers(int(0.3 * t1.shape[axis]), int(0.7 * t1.shape[axis])))
        sl: list[slice | int] = [slice(None)] * 3
        sl[axis] = idx
        img, g, w = (np.rot90(v[tuple(sl)]) for v in (t1, gm, wm))
        side = int(rng.integers(64, 161))
        r = int(rng.integers(0, img.shape[0] - side + 1))
        c = int(rng.integers(0, img.shape[1] - side + 1))
        win = (slice(r, r + side), slice(c, c + side))
        grey = resize(img[win], (INPUT, INPUT), order=1, preserve_range=True)
        targets = component_targets((g[win], w[win]))
        if targets:
            image = rgb(rescale_to_uint8(grey, low, high))
            items.append(Item(f"mni_{i:03d}", "nilearn:mni152", image, targets))
    return items


def blob(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, occupied: np.ndarray
) -> np.ndarray:
    """A wobbly ellipse of random size, place and angle, minus the ``occupied`` pixels."""
    cy, cx = rng.uniform(30, INPUT - 30, 2)
    a, b = rng.uniform(8, 50, 2)
    th = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
    v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
    ang = np.arctan2(v, u)
    wob = 1 + 0.25 * rng.uniform() * np.sin(int(rng.integers(2, 6)) * ang + rng.uniform(0, 6))
    return ((u**2 + v**2) < wob**2) & ~occupied


def shape_items(rng: np.random.Generator, n: int) -> list[Item]:
    """Procedural images: 2-4 smooth blobs of varied contrast on a textured background."""
    items = []
    yy, xx = np.mgrid[0:INPUT, 0:INPUT].astype(np.float32)
    for i in range(n):
        bg = ndimage.gaussian_filter(rng.normal(0, 1, (INPUT, INPUT)), rng.uniform(2, 8))
        img = 0.5 + 0.15 * bg / (bg.std() + 1e-6)
        targets = []
        occupied = np.zeros((INPUT, INPUT), bool)
        for _ in range(int(rng.integers(2, 5))):
            m = blob(rng, xx, yy, occupied)
            if m.sum() < 60:
                continue
            occupied |= ndimage.binary_dilation(m, iterations=3)
            tex = ndimage.gaussian_filter(rng.normal(0, 1, (INPUT, INPUT)), 1.5)
            img = np.where(m, img + rng.choice([-1, 1]) * rng.uniform(0.1, 0.4) + 0.05 * tex, img)
            targets.append(m)
        img = ndimage.gaussian_filter(img, 0.7) + rng.normal(0, 0.03, img.shape)
        if targets:
            items.append(
                Item(f"shape_{i:03d}", "procedural", rgb(rescale_to_uint8(img, 0, 1)), targets)
            )
    return items


# --- the training set ------------------------------------------------------------------------


def encode_order(items: list[Item]) -> list[Item]:
    """Every source advancing at the same pace, so that training on a partial cache
    (``--cached-only``, when the encoding budget runs out) still sees all sources."""
    pos: dict[str, int] = {}
    keys = []
    for it in items:
        pos[it.source] = pos.get(it.source, 0) + 1
        keys.append(pos[it.source])
    order = sorted(range(len(items)), key=lambda i: (keys[i] / pos[items[i].source], i))
    return [items[i] for i in order]


def build_items(args: argparse.Namespace) -> list[Item]:
    """The training set of the CLI options (sources, counts, ``--seed`` / ``--data-seed``),
    checked free of held-out images, in encode order."""
    seed = args.seed if args.data_seed is None else args.data_seed
    rng = np.random.default_rng(seed)
    out_rng = np.random.default_rng((seed, 1))
    items = tumour_items(args.pyradiomics, rng, args.zooms, args.zoom_outs, out_rng)
    items += nuclei_items(args.stardist, rng, args.nuclei)
    if args.nilearn is not None and args.mni > 0:
        items += mni_items(args.nilearn, rng, args.mni)
    items += shape_items(rng, args.shapes)
    check_no_heldout(items)
    return encode_order(items)


def read_item_names(path: Path) -> list[str]:
    """Image names from a run's ``items.json`` or from a weights file's metadata."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            return json.loads(fh.metadata()["items"])
    return json.loads(path.read_text())

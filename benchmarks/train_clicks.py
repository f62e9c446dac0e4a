"""Fine-tune LiteMedSAM's prompt encoder + mask decoder for click prompts (image encoder frozen).

Recipe (SAM's interactive training, Kirillov et al. 2023, §A): each sample starts with a box
(probability ``--p-box``) or a click, then gets 3-8 rounds of corrective clicks taken from the
error of the model's own previous prediction (the RITM simulator, ``medseg_agents.clickers``,
with a random choice among near-maximal error pixels for variety). The previous low-res logits
are fed back as ``mask_input`` (detached between rounds). Every round gets a BCE + Dice loss,
later rounds weighted up, and the box's own answer weighted by ``--box-weight`` (so that
box-only quality is kept). Two terms make the model obey the clicks rather than copy the
fed-back mask, which it otherwise learns to do: a BCE on the logits at every clicked pixel
against the click's label (``--click-weight``), and dropping the mask input for a sample in a
round with probability ``--p-no-mask``. The image embeddings are computed once and cached
(fp16), so training is decoder passes only.

The shipped weights are two runs. Stage 1 is this script's defaults. Stage 2 warm-starts from
stage 1 (``--init``, same images via ``--data-seed 0`` and stage 1's cache) with short episodes,
a loss on every round, more box starts and nuclei, a lighter click term and
``--regress-weight``: a hinge on a round's soft Dice falling below the previous round's, so
that a corrective click on an already good mask does not make it worse (see
``medseg_env/segmenters/weights/MODEL_CARD.md`` for the exact command and its results).

Training data (real images only from the sources below, plus procedural shapes); the
held-out split (pyradiomics ``brain2``, ``lung2`` and the stardist nuclei rows 256-511) is
never read, and ``assert_no_heldout`` checks it:

* pyradiomics ``brain1``, ``lung1``, ``breast1``: every tumour slice, preprocessed exactly as
  the demo (``medseg_env/data/demo/build_demo.py``), with the 8 flips / 90° rotations, random
  zoom crops around the tumour and zoomed-out copies (smaller lesions);
* stardist nuclei image rows 0-255: random 96-160 px crops resized to 128×128, each nucleus a
  target;
* the MNI152 2009a template (nilearn wheel): T1 slices with grey / white matter (> 127 of
  0-255) connected components in random crops;
* procedural shapes: ellipses / blobs with textured fore- and background.

Usage::

    python -m medseg_bench.train_clicks --out DIR --pyradiomics /tmp/src/pyradiomics \
        --stardist /tmp/src/sd --nilearn /tmp/src/nl [--seed 0] [--iters 500] [--encode-only]

Writes ``DIR/litemedsam_clicks.safetensors`` (prompt encoder + mask decoder state, prefixed
``prompt_encoder.`` / ``mask_decoder.``), ``DIR/checkpoint_XXXX.safetensors`` every
``--ckpt-every`` iterations, ``DIR/train_log.jsonl`` and ``DIR/config.json``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.transform import resize

from medseg_agents.clickers import next_click, padded_distance
from medseg_env.data.intensity import percentile_range, rescale_to_uint8

INPUT = 256  # LiteMedSAM's encoder input side
HELDOUT_SOURCES = frozenset({"pyradiomics:brain2", "pyradiomics:lung2", "stardist:rows256-511"})
TRAIN_CASES = ("brain1", "lung1", "breast1")


@dataclass
class Item:
    """One training image (one encode) and its targets."""

    name: str
    source: str  # e.g. "pyradiomics:brain1"; checked against HELDOUT_SOURCES
    image: np.ndarray  # (H, W, 3) uint8, H, W <= INPUT
    targets: list[np.ndarray] = field(default_factory=list)  # (H, W) bool masks


def assert_no_heldout(items: list[Item]) -> None:
    """Training must never see a held-out case."""
    sources = {it.source for it in items}
    leaked = sources & HELDOUT_SOURCES
    assert not leaked, f"held-out sources in the training set: {sorted(leaked)}"
    for it in items:
        assert "brain2" not in it.source and "lung2" not in it.source, it.source
        assert "256-511" not in it.source, it.source


def dihedral(arr: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips / 90° rotations (k in 0..7) of the first two axes."""
    out = np.rot90(arr, k % 4, axes=(0, 1))
    if k >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


# --- sources ---------------------------------------------------------------------------------


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


def tumour_view(name: str, case: str, grey: np.ndarray, seg: np.ndarray, k: int) -> Item:
    """A pyradiomics training item: dihedral view ``k`` of a grey slice and its tumour mask."""
    return Item(name, f"pyradiomics:{case}", rgb(dihedral(grey, k)), [dihedral(seg, k)])


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
    from medseg_env.data.demo import build_demo

    items = []
    old = build_demo.MAX_SLICES
    build_demo.MAX_SLICES = 10_000  # every slice, not the demo's spread of 6
    try:
        for case in TRAIN_CASES:
            slices = build_demo.tumour_case(case, pyradiomics)
            for k in (0, 5, 2, 7, 1, 4, 3, 6):  # variant-major: a partial cache stays varied
                for stem, arrays in slices:
                    grey, seg = arrays["imgs"][:, :, 0], arrays["gts"] > 0
                    items.append(tumour_view(f"{stem}_d{k}", case, grey, seg, k))
            for stem, arrays in slices:
                grey, seg = arrays["imgs"][:, :, 0], arrays["gts"] > 0
                for z in range(zooms):  # zoom crops centred near the tumour
                    side = int(rng.integers(96, 200))
                    rows, cols = np.nonzero(seg)
                    cr = int(
                        np.clip(rows.mean() + rng.integers(-20, 21) - side // 2, 0, 256 - side)
                    )
                    cc = int(
                        np.clip(cols.mean() + rng.integers(-20, 21) - side // 2, 0, 256 - side)
                    )
                    g = resize(
                        grey[cr : cr + side, cc : cc + side].astype(np.float32),
                        (INPUT, INPUT),
                        order=1,
                        preserve_range=True,
                    )
                    s = (
                        resize(
                            seg[cr : cr + side, cc : cc + side].astype(np.float32),
                            (INPUT, INPUT),
                            order=0,
                            preserve_range=True,
                        )
                        > 0.5
                    )
                    if s.sum() < 30:
                        continue
                    k = int(rng.integers(8))
                    g = np.clip(g, 0, 255).astype(np.uint8)
                    items.append(tumour_view(f"{stem}_zoom{z}", case, g, s, k))
            for stem, arrays in slices:
                for z in range(zoom_outs):  # shrunk slices: smaller lesions
                    g, m = zoom_out(arrays["imgs"][:, :, 0], arrays["gts"] > 0, out_rng)
                    if m.sum() < 20:
                        continue
                    k = int(out_rng.integers(8))
                    items.append(tumour_view(f"{stem}_zoomout{z}", case, g, m, k))
    finally:
        build_demo.MAX_SLICES = old
    return items


def nuclei_items(stardist: Path, rng: np.random.Generator, n: int) -> list[Item]:
    """Random crops of the top half (rows 0-255) of the stardist nuclei image."""
    import tifffile

    base = stardist / "stardist" / "data" / "images"
    img = tifffile.imread(base / "img2d.tif")[:256]  # top half only: rows 256-511 are held out
    mask = tifffile.imread(base / "mask2d.tif")[:256]
    low, high = percentile_range(img)
    grey = rescale_to_uint8(img, low, high)
    items = []
    for i in range(n):
        side = int(rng.integers(96, 161))
        r = int(rng.integers(0, 256 - side + 1))
        c = int(rng.integers(0, img.shape[1] - side + 1))
        g = resize(
            grey[r : r + side, c : c + side].astype(np.float32),
            (128, 128),
            order=1,
            preserve_range=True,
            anti_aliasing=side > 128,
        )
        lab = resize(
            mask[r : r + side, c : c + side],
            (128, 128),
            order=0,
            preserve_range=True,
            anti_aliasing=False,
        ).astype(np.int32)
        k = int(rng.integers(8))
        g, lab = dihedral(np.clip(g, 0, 255).astype(np.uint8), k), dihedral(lab, k)
        targets = [lab == v for v in np.unique(lab[lab > 0]) if (lab == v).sum() >= 20]
        if targets:
            items.append(Item(f"nuclei_crop{i:03d}", "stardist:rows0-255", rgb(g), targets))
    return items


def mni_items(nilearn: Path, rng: np.random.Generator, n: int) -> list[Item]:
    """MNI152 T1 slices (axial / coronal), crops with GM / WM connected components as targets."""
    import nibabel as nib

    data = nilearn / "nilearn" / "datasets" / "data"
    load = lambda k: np.asarray(  # noqa: E731
        nib.load(data / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz").dataobj, np.float32
    )
    t1, gm, wm = load("t1"), load("gm") > 127, load("wm") > 127
    low, high = percentile_range(t1[t1 > 0])
    items = []
    for i in range(n):
        axis = int(rng.integers(0, 3))
        idx = int(rng.integers(int(0.3 * t1.shape[axis]), int(0.7 * t1.shape[axis])))
        sl = [slice(None)] * 3
        sl[axis] = idx
        img, g, w = (np.rot90(v[tuple(sl)]) for v in (t1, gm, wm))
        side = int(rng.integers(64, 161))
        r = int(rng.integers(0, img.shape[0] - side + 1))
        c = int(rng.integers(0, img.shape[1] - side + 1))
        win = (slice(r, r + side), slice(c, c + side))
        grey = resize(img[win], (INPUT, INPUT), order=1, preserve_range=True)
        targets = []
        for m in (g[win], w[win]):
            m = resize(m.astype(np.float32), (INPUT, INPUT), order=0, preserve_range=True) > 0.5
            lab, nlab = ndimage.label(m)
            if nlab:
                sizes = ndimage.sum(m, lab, range(1, nlab + 1))
                for j in np.argsort(sizes)[::-1][:3]:  # the 3 largest components
                    if 300 <= sizes[j] <= 0.5 * m.size:
                        targets.append(lab == j + 1)
        if targets:
            items.append(
                Item(
                    f"mni_{i:03d}",
                    "nilearn:mni152",
                    rgb(rescale_to_uint8(grey, low, high)),
                    targets,
                )
            )
    return items


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
            cy, cx = rng.uniform(30, INPUT - 30, 2)
            a, b = rng.uniform(8, 50, 2)
            th = rng.uniform(0, np.pi)
            u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
            v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
            ang = np.arctan2(v, u)
            wob = 1 + 0.25 * rng.uniform() * np.sin(
                int(rng.integers(2, 6)) * ang + rng.uniform(0, 6)
            )
            m = (u**2 + v**2) < wob**2
            m &= ~occupied
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


def build_items(args: argparse.Namespace) -> list[Item]:
    seed = args.seed if args.data_seed is None else args.data_seed
    rng = np.random.default_rng(seed)
    out_rng = np.random.default_rng((seed, 1))
    items = tumour_items(args.pyradiomics, rng, args.zooms, args.zoom_outs, out_rng)
    items += nuclei_items(args.stardist, rng, args.nuclei)
    if args.nilearn is not None and args.mni > 0:
        items += mni_items(args.nilearn, rng, args.mni)
    items += shape_items(rng, args.shapes)
    assert_no_heldout(items)
    # Encode order: every source advances at the same pace, so that training on a partial
    # cache (--cached-only, when the encoding budget runs out) still sees all sources.
    pos: dict[str, int] = {}
    keys = []
    for it in items:
        pos[it.source] = pos.get(it.source, 0) + 1
        keys.append(pos[it.source])
    total = {s: n for s, n in pos.items()}
    order = sorted(range(len(items)), key=lambda i: (keys[i] / total[items[i].source], i))
    return [items[i] for i in order]


# --- embeddings ------------------------------------------------------------------------------


def image_digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:20]


def encode_all(items: list[Item], cache_dir: Path, device: torch.device) -> torch.Tensor:
    """``(N, 256, 64, 64)`` fp16 embeddings, one file per image content in ``cache_dir``."""
    from safetensors.torch import load_file, save_file

    from medseg_env.segmenters import LiteMedSAM

    cache_dir.mkdir(parents=True, exist_ok=True)
    seg = None
    feats = []
    t0 = time.time()
    for i, it in enumerate(items):
        path = cache_dir / f"{image_digest(it.image)}.safetensors"
        if path.is_file():
            feats.append(load_file(str(path))["f"])
            continue
        if seg is None:
            seg = LiteMedSAM(device=device)
        f = seg._encode(it.image).features.to(torch.float16).contiguous()
        save_file({"f": f}, str(path))
        feats.append(f)
        print(f"encoded {i + 1}/{len(items)} {it.name} ({time.time() - t0:.0f}s)", flush=True)
    return torch.cat(feats)


# --- training --------------------------------------------------------------------------------


def random_error_click(
    pred: np.ndarray, gt: np.ndarray, clicked: np.ndarray, rng: np.random.Generator, p_exact: float
) -> tuple[int, int, bool]:
    """The RITM click (probability ``p_exact``), else a random pixel of the chosen error
    region whose distance to its border is at least half the maximum (varied but still deep)."""
    click = next_click(pred, gt, clicked)
    if click is None:  # perfect mask: re-click the deepest object pixel (a harmless no-op)
        dt = padded_distance(gt)
        r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
        return int(r), int(c), True
    if rng.uniform() < p_exact:
        return click
    positive = click[2]
    region = (gt & ~pred) if positive else (pred & ~gt)
    dt = padded_distance(region)
    dt[clicked] = 0
    rows, cols = np.nonzero(dt >= 0.5 * dt.max())
    j = int(rng.integers(len(rows)))
    return int(rows[j]), int(cols[j]), positive


def jitter_box(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The target's box (x0, y0, x1, y1, continuous pixel coords) with up to 5 % jitter."""
    rows, cols = np.nonzero(mask)
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    w, h = box[2] - box[0], box[3] - box[1]
    noise = rng.uniform(-0.05, 0.05, 4) * np.array([w, h, w, h])
    box = box + np.clip(noise, -5, 5)
    hh, ww = mask.shape
    box[[0, 2]] = np.clip(box[[0, 2]], 0, ww)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, hh)
    return box


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample soft Dice of ``sigmoid(logits)`` against ``target``, ``(B,)``, in [0, 1]."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    return (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE + soft-Dice loss, ``(B,)``."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2, 3))
    return bce + (1 - soft_dice(logits, target))


def regression_loss(dice: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Mean hinge ``max(0, previous - dice)``: a corrective click must not make the mask worse
    (``previous`` is the last round's soft Dice, detached; zero on the first round)."""
    if previous is None:
        return dice.sum() * 0
    return F.relu(previous - dice).mean()


def click_loss(
    logits: torch.Tensor, pts: list[list[tuple[float, float, int]]], gts: list[np.ndarray]
) -> torch.Tensor:
    """BCE of the low-res logits at every click so far against the click's label, averaged over
    the clicks: the mask must agree with each click, not only with the fed-back mask."""
    terms = []
    for b, (clicks, g) in enumerate(zip(pts, gts, strict=True)):
        if not clicks:
            continue
        scale = INPUT / max(g.shape)
        arr = np.array(clicks, np.float32)
        cols = np.clip((arr[:, 0] * scale).astype(np.int64), 0, INPUT - 1)
        rows = np.clip((arr[:, 1] * scale).astype(np.int64), 0, INPUT - 1)
        values = logits[b, 0, torch.from_numpy(rows), torch.from_numpy(cols)]
        labels = torch.from_numpy(arr[:, 2]).to(values)
        terms.append(F.binary_cross_entropy_with_logits(values, labels))
    return torch.stack(terms).mean() if terms else logits.sum() * 0


def target_frame(mask: np.ndarray) -> torch.Tensor:
    """GT in the model's padded 256×256 low-res frame."""
    h, w = mask.shape
    s = INPUT / max(h, w)
    nh, nw = round(h * s), round(w * s)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    if (nh, nw) != (h, w):
        m = F.interpolate(m, (nh, nw), mode="nearest")
    return F.pad(m, (0, INPUT - nw, 0, INPUT - nh))[0]


def weights_metadata(args: argparse.Namespace, names: list[str]) -> dict[str, str]:
    """What a weights file records about its run: base model, seed, recipe and image list."""
    keys = (
        "seed",
        "data_seed",
        "iters",
        "batch",
        "lr",
        "min_rounds",
        "max_rounds",
        "last_weight",
        "p_box",
        "p_exact",
        "p_grad",
        "p_no_mask",
        "click_weight",
        "warmup",
        "zoom_outs",
        "box_weight",
        "family_weights",
        "regress_weight",
    )
    recipe = {k: getattr(args, k) for k in keys}
    meta = {"base": "litemedsam", "recipe": json.dumps(recipe), "items": json.dumps(names)}
    if args.init is not None:  # a warm start: which weights it started from
        from medseg_env.segmenters.checkpoints import file_sha256

        meta["init_sha256"] = file_sha256(args.init)
    return meta


FAMILY_WEIGHTS = {"pyradiomics": 0.5, "stardist": 0.2, "nilearn": 0.1, "procedural": 0.2}


def family_weights(text: str) -> dict[str, float]:
    """``"stardist=0.35,pyradiomics=0.4"`` → the default shares with those replaced."""
    out = dict(FAMILY_WEIGHTS)
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in out:
            raise argparse.ArgumentTypeError(
                f"unknown source family {name!r}; expected one of {sorted(out)}"
            )
        out[name] = float(value)
    return out


def read_item_names(path: Path) -> list[str]:
    """Image names from a run's ``items.json`` or from a weights file's metadata."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            return json.loads(fh.metadata()["items"])
    return json.loads(path.read_text())


def train(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from medseg_env.segmenters.base import Prompts
    from medseg_env.segmenters.litemedsam import load_litemedsam_modules
    from medseg_env.segmenters.litemedsam_clicks import click_state, load_click_state
    from medseg_env.segmenters.sam_family import SamFamilySegmenter, resolve_device

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    items = build_items(args)
    n_targets = sum(len(it.targets) for it in items)
    print(f"{len(items)} images, {n_targets} targets", flush=True)
    if args.cached_only:  # the encoding budget ran out: train on the encoded images only
        items = [
            it for it in items if (args.cache / f"{image_digest(it.image)}.safetensors").is_file()
        ]
        print(f"cached only: {len(items)} images, {sum(len(it.targets) for it in items)} targets")
    if args.items is not None:  # an exact earlier image list (e.g. a run's items.json)
        names = read_item_names(args.items)
        by_name = {it.name: it for it in items}
        items = [by_name[n] for n in names]
    (args.out / "items.json").write_text(json.dumps([it.name for it in items], indent=0) + "\n")
    feats = encode_all(items, args.cache, device)
    if args.encode_only:
        return

    net = load_litemedsam_modules()
    pe = copy.deepcopy(net.prompt_encoder).to(device).train()
    md = copy.deepcopy(net.mask_decoder).to(device).train()
    if args.init is not None:  # warm start (a second stage) from an earlier run's weights
        from safetensors.torch import load_file

        load_click_state(load_file(str(args.init)), pe, md)
    # A helper for prompt / frame conversions identical to inference (encoder unused).
    helper = SamFamilySegmenter(
        net.image_encoder, pe, md, input_size=INPUT, normalization="minmax", model_id="train"
    )
    pe.train(), md.train()
    params = [p for p in list(pe.parameters()) + list(md.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: (
            min(1.0, (i + 1) / max(args.warmup, 1))
            * 0.5
            * (1 + math.cos(math.pi * min(i, args.iters) / args.iters))
        ),
    )
    # Targets weighted so each source family gets a fair share of the batches.
    pairs = [(i, j) for i, it in enumerate(items) for j in range(len(it.targets))]
    fam = [items[i].source.split(":")[0] for i, _ in pairs]
    fam_w = args.family_weights
    counts = {f: fam.count(f) for f in set(fam)}
    w = np.array([fam_w[f] / counts[f] for f in fam])
    w /= w.sum()
    frames = {}

    # Once: it hashes the --init file, and nothing in it changes between checkpoints.
    metadata = weights_metadata(args, [it.name for it in items])

    def save(path: Path) -> None:
        save_file(click_state(pe, md), str(path), metadata=metadata)

    (args.out / "config.json").write_text(
        json.dumps(
            {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, indent=1
        )
        + "\n"
    )
    log = (args.out / "train_log.jsonl").open("w")
    t0 = time.time()
    for it_no in range(args.iters):
        batch = [pairs[k] for k in rng.choice(len(pairs), args.batch, p=w)]
        n_rounds = 1 + int(rng.integers(args.min_rounds, args.max_rounds + 1))
        gts = [items[i].targets[j] for i, j in batch]
        tgt = []
        for (i, j), g in zip(batch, gts, strict=True):
            if (i, j) not in frames:
                frames[(i, j)] = target_frame(g)
            tgt.append(frames[(i, j)])
        tgt = torch.stack(tgt).to(device)
        emb = torch.stack([feats[i] for i, _ in batch]).float().to(device)
        use_box = rng.uniform(size=len(batch)) < args.p_box
        boxes = [jitter_box(g, rng) if b else None for g, b in zip(gts, use_box, strict=True)]
        pts: list[list[tuple[float, float, int]]] = [[] for _ in batch]
        clicked = [np.zeros_like(g) for g in gts]
        preds = [np.zeros_like(g) for g in gts]
        prev = prev_dice = None
        losses = []
        opt.zero_grad()
        # Gradients on the first and the last round and on a random part of the others:
        # the rest run without autograd (~3x cheaper) but still move the state along.
        grad = (rng.uniform(size=n_rounds) < args.p_grad) | (
            np.arange(n_rounds) % (n_rounds - 1) == 0
        )
        weights = np.linspace(1.0, args.last_weight, n_rounds) * grad
        weights /= weights.sum()
        for r in range(n_rounds):
            for b, g in enumerate(gts):
                if r == 0 and boxes[b] is not None:
                    continue
                row, col, pos = random_error_click(preds[b], g, clicked[b], rng, args.p_exact)
                clicked[b][row, col] = True
                pts[b].append((col + 0.5, row + 0.5, int(pos)))
            sparse, dense = [], []
            for b, g in enumerate(gts):
                arr = np.array(pts[b], np.float32).reshape(-1, 3)
                prompts = Prompts(arr[:, :2], arr[:, 2].astype(np.int64), boxes[b])
                points, box_t = helper.prompt_tensors(prompts, g.shape)
                mask_in = prev[b : b + 1] if prev is not None else None
                if mask_in is not None and args.p_no_mask > 0 and rng.uniform() < args.p_no_mask:
                    mask_in = None  # the clicks alone must carry the answer now and then
                s, d = pe(points=points, boxes=box_t, masks=mask_in)
                sparse.append(s)
                dense.append(d)
            with torch.set_grad_enabled(bool(grad[r])):
                low_res, _ = md(
                    image_embeddings=emb,
                    image_pe=pe.get_dense_pe(),
                    sparse_prompt_embeddings=torch.cat(sparse),
                    dense_prompt_embeddings=torch.cat(dense),
                    multimask_output=False,
                )
                per_sample = dice_bce(low_res, tgt)
                if r == 0 and args.box_weight != 1.0:  # the box-only answer, weighted apart
                    per_sample = per_sample * torch.from_numpy(
                        np.where(use_box, args.box_weight, 1.0).astype(np.float32)
                    ).to(per_sample)
                loss = per_sample.mean()
                if args.click_weight > 0:
                    loss = loss + args.click_weight * click_loss(low_res, pts, gts)
                dice = soft_dice(low_res, tgt)
                if args.regress_weight > 0:
                    loss = loss + args.regress_weight * regression_loss(dice, prev_dice)
            if grad[r]:
                (loss * float(weights[r])).backward()
            losses.append(loss.item())
            prev, prev_dice = low_res.detach(), dice.detach()
            with torch.no_grad():
                for b, g in enumerate(gts):
                    preds[b] = (helper.upscale(prev[b : b + 1], g.shape) > 0)[0, 0].cpu().numpy()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        rec = {
            "iter": it_no + 1,
            "rounds": n_rounds,
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "lr": sched.get_last_lr()[0],
            "elapsed_s": round(time.time() - t0, 1),
        }
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if (it_no + 1) % 10 == 0:
            print(json.dumps(rec), flush=True)
        if (it_no + 1) % args.ckpt_every == 0:
            save(args.out / f"checkpoint_{it_no + 1:04d}.safetensors")
    save(args.out / "litemedsam_clicks.safetensors")
    print(f"done in {time.time() - t0:.0f}s -> {args.out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pyradiomics", type=Path, default=Path("/tmp/src/pyradiomics"))
    p.add_argument("--stardist", type=Path, default=Path("/tmp/src/sd"))
    p.add_argument("--nilearn", type=Path, default=Path("/tmp/src/nl"))
    p.add_argument("--cache", type=Path, default=None, help="embedding cache (default OUT/emb)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed of the image crops and views (default --seed); a warm-start stage keeps the "
        "first run's images by passing its seed here",
    )
    p.add_argument("--zooms", type=int, default=3, help="zoom crops per tumour slice")
    p.add_argument(
        "--zoom-outs", type=int, default=2, help="shrunk copies per tumour slice (small lesions)"
    )
    p.add_argument("--nuclei", type=int, default=40, help="nuclei crops")
    p.add_argument("--mni", type=int, default=16, help="MNI152 crops")
    p.add_argument("--shapes", type=int, default=20, help="procedural images")
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--min-rounds", type=int, default=3, help="corrective rounds, min")
    p.add_argument("--max-rounds", type=int, default=8, help="corrective rounds, max")
    p.add_argument("--p-grad", type=float, default=0.3, help="P(loss on a middle round)")
    p.add_argument("--last-weight", type=float, default=3.0, help="loss weight of the last round")
    p.add_argument("--p-box", type=float, default=0.4, help="probability to start with a box")
    p.add_argument("--p-exact", type=float, default=0.5, help="probability of the exact RITM click")
    p.add_argument(
        "--p-no-mask", type=float, default=0.2, help="P(a round gets no fed-back mask input)"
    )
    p.add_argument(
        "--click-weight", type=float, default=1.0, help="weight of the BCE at the clicked pixels"
    )
    p.add_argument(
        "--regress-weight",
        type=float,
        default=0.0,
        help="weight of the hinge on a round's soft Dice falling below the previous round's",
    )
    p.add_argument(
        "--box-weight", type=float, default=3.0, help="loss factor of a box's first answer"
    )
    p.add_argument(
        "--family-weights",
        type=family_weights,
        default=dict(FAMILY_WEIGHTS),
        help="batch share of each source family, e.g. stardist=0.35 (others keep their default)",
    )
    p.add_argument("--warmup", type=int, default=20, help="linear lr warm-up iterations")
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--encode-only", action="store_true")
    p.add_argument("--init", type=Path, default=None, help="start from these weights")
    p.add_argument("--cached-only", action="store_true", help="skip images not in --cache")
    p.add_argument(
        "--items",
        type=Path,
        default=None,
        help="use exactly these images: a run's items.json or a weights file (its metadata)",
    )
    args = p.parse_args(argv)
    if args.cache is None:
        args.cache = args.out / "emb"
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

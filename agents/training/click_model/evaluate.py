"""Evaluate the original LiteMedSAM and the click-tuned model on the held-out split.

Held-out split (never seen in training, see ``medseg_agents.training.click_model.data``):
pyradiomics ``brain2`` and ``lung2`` (tumour slices, preprocessed as the demo) and the stardist
nuclei image rows 256-511 (128×128 tiles, each nucleus a target). It is bundled as the dataset
``demo-heldout`` (``medseg_env/data/demo_heldout``, the default ``--heldout``), written by
``python medseg_env/data/demo/build_demo.py --split heldout --name demo-heldout --out DIR``.

Protocols, per target, with the RITM clicker (``medseg_agents.clickers.next_click``; a click
goes to the pixel centre ``(col + 0.5, row + 0.5)``); each predict gets all prompts so far plus
the previous low-res logits (the env's behaviour):

* clicks only: up to ``--budget`` clicks (stopping early once at least ``--curve`` clicks are
  done and IoU >= 0.9, as nothing after that changes NoC); Dice after 1/3/5 clicks and
  NoC@85/90 (``medseg_env.metrics.noc`` on IoU, budget ``--budget``);
* box only: the exact ground-truth box;
* box + 3 corrective clicks.

Usage::

    python -m medseg_agents.training.click_model.evaluate --weights FILE --out DIR [--heldout DIR]

Writes ``DIR/eval_clicks.json``, ``DIR/eval_clicks.md`` and ``DIR/eval_clicks.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from medseg_agents.clickers import next_click
from medseg_env.geometry import box_edges_from_mask
from medseg_env.metrics import dice_iou, noc
from medseg_env.segmenters import EmbeddingCache, LiteMedSAM, LiteMedSAMClicks
from medseg_env.segmenters.checkpoints import file_sha256
from medseg_env.segmenters.litemedsam import load_litemedsam_modules
from medseg_env.segmenters.sam_family import SamFamilySegmenter
from medseg_env.segmenters.types import Embedding, Prompts

GROUPS = {"brain2": "tumour", "lung2": "tumour", "nuclei": "nuclei"}


def bundled_heldout() -> Path:
    """The installed ``demo-heldout`` folder (``medseg_env/data/demo_heldout``)."""
    return Path(str(resources.files("medseg_env.data").joinpath("demo_heldout")))


# --- targets ---------------------------------------------------------------------------------


def load_heldout(folder: Path, max_nuclei: int, seed: int) -> list[dict]:
    """Targets of the held-out npz files: ``{"name", "group", "image", "gt"}``."""
    targets = []
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as z:
            source = str(z["source_id"])
            image, labels = z["imgs"], z["gts"]
        if source not in GROUPS:
            raise ValueError(f"{path.name}: source {source!r} is not a held-out source")
        if source == "nuclei" and int(path.stem.split("_r")[1][:3]) < 256:
            raise ValueError(f"{path.name}: nuclei rows < 256 are training data")
        for v in np.unique(labels[labels > 0]):
            targets.append(
                {
                    "name": f"{path.stem}#{int(v)}",
                    "group": GROUPS[source],
                    "image": image,
                    "gt": labels == v,
                }
            )
    nuclei = [t for t in targets if t["group"] == "nuclei"]
    if max_nuclei and len(nuclei) > max_nuclei:  # a fixed random subset, for time
        keep = set(np.random.default_rng(seed).choice(len(nuclei), max_nuclei, replace=False))
        drop = {id(t) for i, t in enumerate(nuclei) if i not in keep}
        targets = [t for t in targets if id(t) not in drop]
    return targets


def encode_targets(seg: LiteMedSAM, targets: list[dict]) -> dict[str, torch.Tensor]:
    """Image features per file stem: one encode per image (both models share the encoder)."""
    feats = {}
    for t in targets:
        key = t["name"].split("#")[0]
        if key not in feats:
            feats[key] = seg.encode(t["image"]).features
    return feats


# --- protocols -------------------------------------------------------------------------------


def run_clicks(
    seg: SamFamilySegmenter,
    emb: Embedding,
    gt: np.ndarray,
    prompts: Prompts,
    pred: np.ndarray,
    logits,
    n: int,
    stop_after: int | None = None,
) -> tuple[list[float], list[float]]:
    """Add up to ``n`` RITM clicks; returns the Dice and IoU after each."""
    dices, ious = [], []
    clicked = np.zeros_like(gt)
    for t in range(1, n + 1):
        click = next_click(pred, gt, clicked)
        if click is None:  # perfect mask: nothing left to correct
            dices += [1.0] * (n - t + 1)
            ious += [1.0] * (n - t + 1)
            break
        row, col, positive = click
        clicked[row, col] = True
        prompts = prompts.with_point(col + 0.5, row + 0.5, positive)
        out = seg.predict(emb, prompts, logits)
        pred, logits = out.mask, out.logits
        d, i = dice_iou(pred, gt)
        dices.append(d)
        ious.append(i)
        if stop_after is not None and t >= stop_after and i >= 0.9:
            break
    return dices, ious


def evaluate_target(seg: SamFamilySegmenter, target: dict, features, args) -> dict:
    """The three protocols on one target."""
    gt = target["gt"]
    emb = Embedding(features, gt.shape, seg.model_id)
    empty = np.zeros_like(gt)
    d_clicks, i_clicks = run_clicks(
        seg, emb, gt, Prompts(), empty, None, args.budget, stop_after=args.curve
    )
    box_prompts = Prompts(box=box_edges_from_mask(gt))
    out = seg.predict(emb, box_prompts, None)
    d_box, _ = dice_iou(out.mask, gt)
    d_box_clicks, _ = run_clicks(seg, emb, gt, box_prompts, out.mask, out.logits, 3)
    return {
        "target": target["name"],
        "group": target["group"],
        "area": int(gt.sum()),
        "clicks_dice": d_clicks,
        "clicks_iou": i_clicks,
        "box_dice": d_box,
        "box_clicks_dice": d_box_clicks,
    }


def evaluate_model(seg: SamFamilySegmenter, targets: list[dict], feats: dict, args) -> list[dict]:
    return [evaluate_target(seg, t, feats[t["name"].split("#")[0]], args) for t in targets]


# --- summary ---------------------------------------------------------------------------------


def at(curve: list[float], k: int) -> float:
    """The value after click ``k``; a curve that stopped early (IoU >= 0.9) keeps its last."""
    return curve[min(k, len(curve)) - 1]


def summarise(records: list[dict], budget: int) -> dict:
    out = {}
    for group in sorted({r["group"] for r in records}):
        rs = [r for r in records if r["group"] == group]
        out[group] = {
            "targets": len(rs),
            **{
                f"dice@{k}": float(np.mean([at(r["clicks_dice"], k) for r in rs]))
                for k in (1, 3, 5)
            },
            "noc@85": float(np.mean([noc(r["clicks_iou"], 0.85, budget) for r in rs])),
            "noc@90": float(np.mean([noc(r["clicks_iou"], 0.90, budget) for r in rs])),
            "nof@90": int(sum(max(r["clicks_iou"]) < 0.9 for r in rs)),
            "box": float(np.mean([r["box_dice"] for r in rs])),
            "box+3": float(np.mean([r["box_clicks_dice"][-1] for r in rs])),
            "curve": [float(np.mean([at(r["clicks_dice"], k) for r in rs])) for k in range(1, 11)],
        }
    return out


def markdown(summary: dict, budget: int) -> str:
    lines = [
        "| group | model | n | Dice@1 | Dice@3 | Dice@5 | NoC@85 | NoC@90 | NoF@90 | box "
        "| box+3 clicks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in sorted(next(iter(summary.values()))):
        for model, s in summary.items():
            g = s[group]
            lines.append(
                f"| {group} | {model} | {g['targets']} | {g['dice@1']:.3f} | {g['dice@3']:.3f} | "
                f"{g['dice@5']:.3f} | {g['noc@85']:.2f} | {g['noc@90']:.2f} | {g['nof@90']} | "
                f"{g['box']:.3f} | {g['box+3']:.3f} |"
            )
    lines.append(
        f"\nNoC / NoF on IoU with a budget of {budget} clicks; Dice is the mean over targets."
    )
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted(next(iter(summary.values())))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        for model, s in summary.items():
            curve = s[group]["curve"]
            line = ax.plot(range(1, len(curve) + 1), curve, marker="o", label=f"{model}: clicks")[0]
            ax.axhline(s[group]["box"], color=line.get_color(), ls=":", label=f"{model}: box")
            ax.scatter(
                [3],
                [s[group]["box+3"]],
                color=line.get_color(),
                marker="*",
                s=120,
                label=f"{model}: box + 3 clicks",
            )
        ax.set(title=f"held-out {group}", xlabel="clicks", ylabel="mean Dice", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# --- command line ----------------------------------------------------------------------------


def build_models(
    device: str, weights: Path | None, cache: EmbeddingCache
) -> tuple[LiteMedSAM, SamFamilySegmenter, LiteMedSAMClicks]:
    """The encoder (the original model, with ``cache``), the original model with its point
    restriction lifted (its own defaults otherwise: mask input, best-of-3 for a lone click)
    and the click-tuned model (``weights``, or the shipped ones)."""
    net = load_litemedsam_modules()
    original = LiteMedSAM(device=device, cache=cache)
    original_any = SamFamilySegmenter(
        net.get_submodule("image_encoder"),
        net.get_submodule("prompt_encoder"),
        net.get_submodule("mask_decoder"),
        input_size=256,
        normalization="minmax",
        model_id=original.model_id,
        device=device,
    )
    if weights is None:
        tuned = LiteMedSAMClicks(device=device)
    else:
        tuned = LiteMedSAMClicks(device=device, weights=weights, sha256=file_sha256(weights))
    return original, original_any, tuned


def write_results(args, tuned_model_id: str, summary: dict, results: dict) -> str:
    """``eval_clicks.json`` / ``.md`` / ``.png`` in ``args.out``; returns the table."""
    meta = {
        "weights": str(args.weights or "shipped"),
        "tuned_model_id": tuned_model_id,
        "budget": args.budget,
        "max_nuclei": args.max_nuclei,
        "seed": args.seed,
    }
    (args.out / "eval_clicks.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "records": results}, indent=1) + "\n"
    )
    table = markdown(summary, args.budget)
    (args.out / "eval_clicks.md").write_text(table)
    plot(summary, args.out / "eval_clicks.png")
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medseg-train click-model-eval", description=__doc__.split("\n\n")[0]
    )
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``medseg-train click-model-eval``."""
    p.add_argument(
        "--weights", type=Path, default=None, help="fine-tuned weights (default shipped)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--heldout",
        type=Path,
        default=bundled_heldout(),
        help="held-out npz folder (default: the bundled demo-heldout dataset)",
    )
    p.add_argument("--budget", type=int, default=20, help="click budget for NoC")
    p.add_argument("--curve", type=int, default=10, help="clicks always run before stopping")
    p.add_argument("--max-nuclei", type=int, default=40, help="nuclei subset (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=None, help="held-out embedding cache (on disk)")
    p.add_argument("--device", default="cpu")


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Evaluate both models and write the results (see the module docstring)."""
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    targets = load_heldout(args.heldout, args.max_nuclei, args.seed)
    original, original_any, tuned = build_models(
        args.device, args.weights, EmbeddingCache(disk_dir=args.cache)
    )
    t0 = time.time()
    feats = encode_targets(original, targets)
    print(
        f"{len(targets)} targets, {len(feats)} images encoded in {time.time() - t0:.0f}s",
        flush=True,
    )
    results, summary = {}, {}
    for label, seg in (("litemedsam", original_any), ("litemedsam_clicks", tuned)):
        t1 = time.time()
        results[label] = evaluate_model(seg, targets, feats, args)
        summary[label] = summarise(results[label], args.budget)
        print(f"{label}: {time.time() - t1:.0f}s", json.dumps(summary[label]), flush=True)
    print(write_results(args, tuned.model_id, summary, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

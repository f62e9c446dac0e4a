"""The training loop: SAM's interactive recipe on cached embeddings (decoder passes only).

Each iteration samples a batch of targets (each source family its share), starts every sample
with a jittered box or a click, then runs rounds of corrective clicks taken from the error of
the model's own previous prediction, feeding the previous low-res logits back as
``mask_input``. ``train(args)`` runs it for the options of
``medseg_agents.training.click_model.train`` and writes the weights, checkpoints,
``train_log.jsonl``, ``items.json`` and ``config.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from medseg_agents.simulation import Click
from medseg_env.segmenters.litemedsam import load_litemedsam_modules
from medseg_env.segmenters.litemedsam_clicks import click_state, load_click_state
from medseg_env.segmenters.sam_family import SamFamilySegmenter, resolve_device

from .data import INPUT, Item, build_items, read_item_names
from .embeddings import encode_all, image_encoder, is_cached
from .losses import click_loss, dice_bce, regression_loss, soft_dice, target_frame
from .prompting import click_prompts, jitter_box, random_error_click

RECIPE_KEYS = (
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


# --- setup -----------------------------------------------------------------------------------


@dataclass
class Model:
    """The trained modules and a segmenter around them for prompt / frame conversions."""

    prompt_encoder: torch.nn.Module
    mask_decoder: torch.nn.Module
    helper: SamFamilySegmenter
    params: list[torch.nn.Parameter]


def build_model(init: Path | None, device: torch.device) -> Model:
    """Copies of LiteMedSAM's prompt encoder and mask decoder in training mode, optionally
    warm-started (a second stage) from an earlier run's weights."""
    net = load_litemedsam_modules()
    pe = copy.deepcopy(net.get_submodule("prompt_encoder")).to(device).train()
    md = copy.deepcopy(net.get_submodule("mask_decoder")).to(device).train()
    if init is not None:
        from safetensors.torch import load_file

        load_click_state(load_file(str(init)), pe, md)
    # A helper for prompt / frame conversions identical to inference (encoder unused).
    helper = SamFamilySegmenter(
        net.get_submodule("image_encoder"),
        pe,
        md,
        input_size=INPUT,
        normalization="minmax",
        model_id="train",
    )
    pe.train(), md.train()  # the helper put them in eval mode
    params = [p for p in list(pe.parameters()) + list(md.parameters()) if p.requires_grad]
    return Model(pe, md, helper, params)


def make_optimizer(
    params: list[torch.nn.Parameter], lr: float, warmup: int, iters: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Adam with a linear warm-up over ``warmup`` iterations, then cosine decay to 0."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: (
            min(1.0, (i + 1) / max(warmup, 1))
            * 0.5
            * (1 + math.cos(math.pi * min(i, iters) / iters))
        ),
    )
    return opt, sched


@dataclass
class TrainingSet:
    """The images, their embeddings, and the targets with their sampling probabilities."""

    items: list[Item]
    feats: torch.Tensor  # (N, 256, 64, 64) fp16
    pairs: list[tuple[int, int]]  # (item, target) index pairs
    probs: np.ndarray  # sampling probability of each pair
    frames: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, items: list[Item], feats: torch.Tensor, shares: dict[str, float]) -> TrainingSet:
        """Targets weighted so each source family gets its ``shares`` of the batches."""
        pairs = [(i, j) for i, it in enumerate(items) for j in range(len(it.targets))]
        fam = [items[i].source.split(":")[0] for i, _ in pairs]
        counts = {f: fam.count(f) for f in set(fam)}
        w = np.array([shares[f] / counts[f] for f in fam])
        w /= w.sum()
        return cls(items, feats, pairs, w)

    def target(self, pair: tuple[int, int]) -> torch.Tensor:
        """A target in the low-res frame (computed once)."""
        if pair not in self.frames:
            i, j = pair
            self.frames[pair] = target_frame(self.items[i].targets[j])
        return self.frames[pair]


# --- one iteration ---------------------------------------------------------------------------


@dataclass
class Episode:
    """A batch's state across its rounds of prompting."""

    gts: list[np.ndarray]
    target: torch.Tensor  # (B, 1, INPUT, INPUT)
    embeddings: torch.Tensor  # (B, 256, 64, 64) fp32
    use_box: np.ndarray  # (B,) bool: the sample starts with a box
    boxes: list[np.ndarray | None]
    pts: list[list[Click]]
    clicked: list[np.ndarray]
    preds: list[np.ndarray]
    prev: torch.Tensor | None = None  # the last round's low-res logits, detached
    prev_dice: torch.Tensor | None = None


def start_episode(
    data: TrainingSet,
    batch: list[tuple[int, int]],
    rng: np.random.Generator,
    p_box: float,
    device: torch.device,
) -> Episode:
    """Targets and embeddings of a batch; the samples that start with a box get it."""
    gts = [data.items[i].targets[j] for i, j in batch]
    target = torch.stack([data.target(pair) for pair in batch]).to(device)
    emb = torch.stack([data.feats[i] for i, _ in batch]).float().to(device)
    use_box = rng.uniform(size=len(batch)) < p_box
    boxes = [jitter_box(g, rng) if b else None for g, b in zip(gts, use_box, strict=True)]
    pts: list[list[Click]] = [[] for _ in batch]
    clicked = [np.zeros_like(g) for g in gts]
    preds = [np.zeros_like(g) for g in gts]
    return Episode(gts, target, emb, use_box, boxes, pts, clicked, preds)


def add_clicks(ep: Episode, r: int, rng: np.random.Generator, p_exact: float) -> None:
    """One corrective click per sample (none on a box's first round)."""
    for b, g in enumerate(ep.gts):
        if r == 0 and ep.boxes[b] is not None:
            continue
        row, col, pos = random_error_click(ep.preds[b], g, ep.clicked[b], rng, p_exact)
        ep.clicked[b][row, col] = True
        ep.pts[b].append((row, col, pos))


def prompt_embeddings(
    model: Model, ep: Episode, rng: np.random.Generator, p_no_mask: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's sparse and dense prompt embeddings: every prompt so far plus the fed-back
    logits, which a sample loses with probability ``p_no_mask``."""
    sparse, dense = [], []
    for b, g in enumerate(ep.gts):
        prompts = click_prompts(ep.pts[b], ep.boxes[b])
        points, box_t = model.helper.prompt_tensors(prompts, g.shape)
        mask_in = ep.prev[b : b + 1] if ep.prev is not None else None
        if mask_in is not None and p_no_mask > 0 and rng.uniform() < p_no_mask:
            mask_in = None  # the clicks alone must carry the answer now and then
        s, d = model.prompt_encoder(points=points, boxes=box_t, masks=mask_in)
        sparse.append(s)
        dense.append(d)
    return torch.cat(sparse), torch.cat(dense)


def round_loss(
    low_res: torch.Tensor, ep: Episode, r: int, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor]:
    """A round's loss and per-sample soft Dice: BCE + Dice (a box's own answer weighted by
    ``box_weight``), plus the click and no-regression terms when weighted in."""
    per_sample = dice_bce(low_res, ep.target)
    if r == 0 and args.box_weight != 1.0:  # the box-only answer, weighted apart
        per_sample = per_sample * torch.from_numpy(
            np.where(ep.use_box, args.box_weight, 1.0).astype(np.float32)
        ).to(per_sample)
    loss = per_sample.mean()
    if args.click_weight > 0:
        loss = loss + args.click_weight * click_loss(low_res, ep.pts, ep.gts)
    dice = soft_dice(low_res, ep.target)
    if args.regress_weight > 0:
        loss = loss + args.regress_weight * regression_loss(dice, ep.prev_dice)
    return loss, dice


def run_round(
    model: Model,
    ep: Episode,
    r: int,
    grad: bool,
    weight: float,
    rng: np.random.Generator,
    args: argparse.Namespace,
) -> float:
    """Click, decode and score one round; with ``grad``, backpropagate its loss times
    ``weight`` (a round without autograd still moves the episode along)."""
    add_clicks(ep, r, rng, args.p_exact)
    sparse, dense = prompt_embeddings(model, ep, rng, args.p_no_mask)
    get_dense_pe = cast(Callable[[], torch.Tensor], model.prompt_encoder.get_dense_pe)
    with torch.set_grad_enabled(grad):
        low_res, _ = model.mask_decoder(
            image_embeddings=ep.embeddings,
            image_pe=get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        loss, dice = round_loss(low_res, ep, r, args)
    if grad:
        (loss * weight).backward()
    ep.prev, ep.prev_dice = low_res.detach(), dice.detach()
    with torch.no_grad():
        for b, g in enumerate(ep.gts):
            ep.preds[b] = (
                (model.helper.upscale(ep.prev[b : b + 1], g.shape) > 0)[0, 0].cpu().numpy()
            )
    return loss.item()


def round_weights(
    n_rounds: int, rng: np.random.Generator, args: argparse.Namespace
) -> tuple[np.ndarray, np.ndarray]:
    """Which rounds get gradients, and each round's loss weight (linear from 1 to
    ``last_weight``, 0 without gradients, normalised). The first and last rounds always get
    gradients, the middle ones with probability ``p_grad``: the rest run without autograd
    (~3x cheaper) but still move the state along."""
    grad = (rng.uniform(size=n_rounds) < args.p_grad) | (np.arange(n_rounds) % (n_rounds - 1) == 0)
    weights = np.linspace(1.0, args.last_weight, n_rounds) * grad
    weights /= weights.sum()
    return grad, weights


def train_iteration(
    model: Model,
    opt: torch.optim.Optimizer,
    data: TrainingSet,
    rng: np.random.Generator,
    args: argparse.Namespace,
    device: torch.device,
) -> list[float]:
    """One optimiser step on a batch of episodes; returns the loss of each round."""
    batch = [data.pairs[k] for k in rng.choice(len(data.pairs), args.batch, p=data.probs)]
    n_rounds = 1 + int(rng.integers(args.min_rounds, args.max_rounds + 1))
    ep = start_episode(data, batch, rng, args.p_box, device)
    opt.zero_grad()
    grad, weights = round_weights(n_rounds, rng, args)
    losses = [
        run_round(model, ep, r, bool(grad[r]), float(weights[r]), rng, args)
        for r in range(n_rounds)
    ]
    torch.nn.utils.clip_grad_norm_(model.params, 1.0)
    opt.step()
    return losses


# --- outputs ---------------------------------------------------------------------------------


def weights_metadata(args: argparse.Namespace, names: list[str]) -> dict[str, str]:
    """What a weights file records about its run: base model, seed, recipe and image list."""
    recipe = {k: getattr(args, k) for k in RECIPE_KEYS}
    meta = {"base": "litemedsam", "recipe": json.dumps(recipe), "items": json.dumps(names)}
    if args.init is not None:  # a warm start: which weights it started from
        from medseg_env.segmenters.checkpoints import file_sha256

        meta["init_sha256"] = file_sha256(args.init)
    return meta


def save_weights(model: Model, path: Path, metadata: dict[str, str]) -> None:
    """The prompt encoder + mask decoder state (``click_state``) as safetensors."""
    from safetensors.torch import save_file

    save_file(click_state(model.prompt_encoder, model.mask_decoder), str(path), metadata=metadata)


def write_config(args: argparse.Namespace) -> None:
    """``OUT/config.json``: every option of the run."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n")


# --- the run ---------------------------------------------------------------------------------


def select_items(items: list[Item], args: argparse.Namespace, encoder) -> list[Item]:
    """The images to train on: only those in the cache with ``--cached-only`` (the encoding
    budget ran out), exactly those of ``--items`` (an earlier run's list) when given."""
    if args.cached_only:
        items = [it for it in items if is_cached(encoder, it)]
        print(f"cached only: {len(items)} images, {sum(len(it.targets) for it in items)} targets")
    if args.items is not None:
        by_name = {it.name: it for it in items}
        items = [by_name[n] for n in read_item_names(args.items)]
    return items


def train(args: argparse.Namespace) -> None:
    """Build the images, encode them, train, and write the run's files to ``args.out``."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    items = build_items(args)
    print(f"{len(items)} images, {sum(len(it.targets) for it in items)} targets", flush=True)
    encoder = image_encoder(args.cache, device)
    items = select_items(items, args, encoder)
    (args.out / "items.json").write_text(json.dumps([it.name for it in items], indent=0) + "\n")
    feats = encode_all(items, encoder)
    if args.encode_only:
        return

    model = build_model(args.init, device)
    opt, sched = make_optimizer(model.params, args.lr, args.warmup, args.iters)
    data = TrainingSet.of(items, feats, args.family_weights)
    # Once: it hashes the --init file, and nothing in it changes between checkpoints.
    metadata = weights_metadata(args, [it.name for it in items])
    write_config(args)
    t0 = time.time()
    with (args.out / "train_log.jsonl").open("w") as log:
        for it_no in range(1, args.iters + 1):
            losses = train_iteration(model, opt, data, rng, args, device)
            sched.step()
            rec = {
                "iter": it_no,
                "rounds": len(losses),
                "loss_first": losses[0],
                "loss_last": losses[-1],
                "lr": sched.get_last_lr()[0],
                "elapsed_s": round(time.time() - t0, 1),
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if it_no % 10 == 0:
                print(json.dumps(rec), flush=True)
            if it_no % args.ckpt_every == 0:
                save_weights(model, args.out / f"checkpoint_{it_no:04d}.safetensors", metadata)
    save_weights(model, args.out / "litemedsam_clicks.safetensors", metadata)
    print(f"done in {time.time() - t0:.0f}s -> {args.out}", flush=True)

"""Teach the tiny offline Qwen3-VL to act in ``MedSeg-Text-v0``: SFT on expert turns, then GRPO.

``medseg-train learn-text --out DIR`` runs, on the CPU:

a. builds the tiny random Qwen3-VL (``medseg_agents.testing.tiny_qwen``);
b. takes expert turns on the training images of ``demo`` (``demo-heldout`` is never
   touched): with ``--sft-data DIR``, the trajectories of ``medseg-train export-sft
   --protocol medsam_agent_rl`` (its split keeps images whole; the images it did not use are
   held out here), converted to the adapter's layout; else ``HybridExpert`` plays them here
   through ``MedSegToolEnv`` on a seeded split by image. Either way the replies are the
   protocol's rendering of the expert's actions, the tool results the adapter's (overlay +
   later-turn text), and after the last result the expert ends its turn with an empty reply,
   as TRL's loop needs;
c. measures the well-formed reply rate (replies the protocol parses into a call / replies) on
   greedy episodes of the held-out images before SFT, then fine-tunes on the expert turns
   until that rate reaches ``--target`` (checked every ``--eval-every`` steps). SFT is a plain
   PyTorch loop over ``ChatLayout`` token sequences (the loss on the model's tokens only): the
   same tokens TRL's GRPO loop builds (tool-role overlays, the template's tool list), which
   TRL's ``SFTTrainer`` would only give with a template that marks assistant spans;
d. runs ``--grpo-steps`` GRPO steps with TRL's ``GRPOTrainer`` and ``MedSegToolEnv`` (real
   sampling, env steps, the ``medsam_agent`` reward; format and Dice logged);
e. writes ``sft.csv``, ``grpo.csv``, ``eval.csv``, ``curves.png`` and ``summary.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from medseg_env.data import Dataset, load_dataset
from medseg_env.env import MedSegEnv
from medseg_env.text import get_protocol

from ..oracle import HybridExpert
from .sft.format import TRL_FILE, read_entries, read_export_doc, read_rows
from .trl.tokens import ChatLayout, Turns
from .trl.trl_env import (
    EPISODE_OVER_TEXT,
    MedSegToolEnv,
    grpo_rows,
    reward_setup,
    tool_env_factory,
    tool_rounds,
    tool_system_prompt,
)

Content = list[dict[str, Any]]


# ---------------------------------------------------------------------- data
def image_name(sample_id: str) -> str:
    """The source image of a sample (``nuclei_r000_c128/nucleus_42`` → ``nuclei_r000_c128``)."""
    return sample_id.split("/", 1)[0]


def split_by_image(
    dataset: Dataset, holdout_frac: float = 0.25, seed: int = 0
) -> tuple[list[int], list[int]]:
    """``(train, held_out)`` sample indices, whole images held out.

    Per source (``source_id``), ``round(holdout_frac × images)`` images, at least one when the
    source has two or more and never all, are drawn with ``seed``; their samples are held out.
    """
    by_source: dict[str, dict[str, list[int]]] = {}
    for index in range(len(dataset)):
        sample = dataset[index]
        images = by_source.setdefault(sample.source_id, {})
        images.setdefault(image_name(sample.sample_id), []).append(index)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    held: list[int] = []
    for source in sorted(by_source):
        names = sorted(by_source[source])
        n = len(names)
        hold = 0 if n < 2 else min(max(int(round(holdout_frac * n)), 1), n - 1)
        picked = {int(k) for k in rng.permutation(n)[:hold]}
        for k, name in enumerate(names):
            (held if k in picked else train).extend(by_source[source][name])
    return sorted(train), sorted(held)


def shrink(content: Content, max_pixels: int) -> Content:
    """The content with its images resized (bicubic) to the processor's pixel budget.

    Kept in memory for thousands of turns; the processor would resize them to the same size
    (its own resize agrees within one grey level).
    """
    out = []
    for part in content:
        image = part.get("image")
        if isinstance(image, Image.Image) and image.width * image.height > max_pixels:
            scale = (max_pixels / (image.width * image.height)) ** 0.5
            size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
            part = {**part, "image": image.resize(size, Image.Resampling.BICUBIC)}
        out.append(part)
    return out


@dataclass
class Episode:
    """An expert episode in the adapter's terms: the first content, then (reply, tool, result)."""

    sample_index: int
    seed: int
    first: Content
    steps: list[tuple[str, str, Content]]
    final_reply: str
    dice: float
    reward: float


def expert_episode(
    env: MedSegToolEnv, expert: HybridExpert, index: int, seed: int, max_pixels: int
) -> Episode:
    """``HybridExpert`` plays one episode through the adapter's own tools."""
    first = env.reset(sample_index=index, seed=seed)
    expert.seed(seed)
    text = env.text_env
    base = cast(MedSegEnv, text.unwrapped)
    steps = []
    while not env.episode_over:
        obs = {"mask": base.current_mask[..., None].astype(np.uint8) * 255}
        action = expert.act(obs, env.info, text)
        call = text.to_call(action)
        reply = text.protocol.render(call)
        arguments = {k: list(v) if isinstance(v, tuple) else v for k, v in call.arguments.items()}
        result = getattr(env, call.name)(**arguments)
        steps.append((reply, call.name, shrink(result, max_pixels)))
    reward = env.get_reward()
    return Episode(index, seed, shrink(first, max_pixels), steps, "", env.dice, reward)


def load_export(folder: Path, protocol: str, max_pixels: int) -> tuple[list[Episode], set[str]]:
    """Expert episodes of a ``medseg-train export-sft`` folder in the adapter's layout, and the
    names of the images the export used (its side of the split, kept whole by image).

    The export's rows are MedSAM-Agent conversations (each overlay a user message); here each
    later user message becomes the tool result of the reply before it, and the final stop
    reply gets the adapter's end-of-episode result and an empty last reply, as in
    ``expert_episode``. The export must be of ``demo``'s ``train`` (or ``val``) side, under
    ``protocol``.
    """
    config = read_export_doc(folder)["config"]
    if config["protocol"] != get_protocol(protocol).name:
        raise ValueError(f"{folder}: exported under {config['protocol']!r}, not {protocol!r}")
    if config["dataset"] != "demo" or config["split"] == "all":
        raise ValueError(f"{folder}: need one side of a split of 'demo', got {config}")
    entries = read_entries(folder)
    parse = get_protocol(protocol).parse
    episodes = []
    for row in read_rows(folder / TRL_FILE):
        entry = entries[row["id"]]
        pictures = iter(row["images"])
        messages = []
        for message in row["messages"]:
            content = []
            for part in message["content"]:
                if part["type"] == "image":
                    image = Image.open(folder / next(pictures)).convert("RGB")
                    part = {"type": "image", "image": image}
                content.append(part)
            messages.append({"role": message["role"], "content": shrink(content, max_pixels)})
        if [m["role"] for m in messages[:2]] != ["system", "user"] or messages[-1]["role"] != (
            "assistant"
        ):
            raise ValueError(f"{folder}: row {row['id']} is not system, user, ..., assistant")
        steps = []
        for k in range(2, len(messages), 2):
            reply = "".join(p.get("text", "") for p in messages[k]["content"])
            call = parse(reply).call
            result = (
                messages[k + 1]["content"]
                if k + 1 < len(messages)
                else [{"type": "text", "text": EPISODE_OVER_TEXT}]
            )
            steps.append((reply, call.name if call else "tool", result))
        dice = float(entry["turns"][-1]["dice"])
        episodes.append(
            Episode(
                entry["sample_index"],
                entry["seed"],
                messages[1]["content"],
                steps,
                "",
                dice,
                float("nan"),
            )
        )
    return episodes, {image_name(e["sample_id"]) for e in entries.values()}


def first_messages(system: str, first: Content) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": first}]


def episode_turns(layout: ChatLayout, system: str, episode: Episode) -> Turns:
    """The episode as the token sequence GRPO would see, the replies marked as the model's."""
    turns = layout.prompt(first_messages(system, episode.first))
    for reply, name, result in episode.steps:
        layout.add_reply(turns, reply)
        layout.add_messages(turns, [{"role": "tool", "name": name, "content": result}])
    layout.add_reply(turns, episode.final_reply)
    return turns


# ---------------------------------------------------------------------- evaluation
def play(
    model: Any,
    layout: ChatLayout,
    envs: Sequence[MedSegToolEnv],
    episodes: Sequence[tuple[int, int]],
    system: str,
    *,
    max_new_tokens: int = 64,
) -> list[dict[str, Any]]:
    """Greedy episodes, ``len(envs)`` in lockstep; one record per episode.

    Each reply goes to the text env as it is (the protocol's parse decides whether it is
    well-formed); the tool result comes back as TRL would show it. The episode ends when the
    env says so.
    """
    was_training = model.training
    model.eval()
    records: list[dict[str, Any]] = []
    for start in range(0, len(episodes), len(envs)):
        chunk = episodes[start : start + len(envs)]
        active = []
        for env, (index, seed) in zip(envs, chunk, strict=False):
            first = env.reset(sample_index=index, seed=seed)
            record: dict[str, Any] = {"sample_index": index, "seed": seed, "replies": []}
            active.append((env, layout.prompt(first_messages(system, first)), record))
        while active:
            replies = layout.generate(
                model, [t for _, t, _ in active], max_new_tokens=max_new_tokens
            )
            still = []
            for (env, turns, record), ids in zip(active, replies, strict=True):
                text = layout.decode(ids)
                result = env.session.reply(text)
                parsed = env.info["parsed"]
                record["replies"].append({"text": text, "ok": parsed["call"] is not None})
                if env.episode_over:
                    record.update(dice=env.dice, reward=env.get_reward(), format_ok=env.format_ok)
                    records.append(record)
                    continue
                layout.add_reply(turns, ids)
                name = (parsed["call"] or {}).get("name", "tool")
                tool = {"role": "tool", "name": name, "content": result.user_content}
                layout.add_messages(turns, [tool])
                still.append((env, turns, record))
            active = still
    model.train(was_training)
    return records


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    replies = [r for rec in records for r in rec["replies"]]
    first = [rec["replies"][0] for rec in records if rec["replies"]]
    return {
        "episodes": len(records),
        "replies": len(replies),
        "wellformed": float(np.mean([r["ok"] for r in replies])) if replies else 0.0,
        "first_wellformed": float(np.mean([r["ok"] for r in first])) if first else 0.0,
        "dice": float(np.mean([rec["dice"] for rec in records])) if records else 0.0,
        "reward": float(np.mean([rec["reward"] for rec in records])) if records else 0.0,
        "turns": float(np.mean([len(rec["replies"]) for rec in records])) if records else 0.0,
    }


# ---------------------------------------------------------------------- SFT
def sft(
    model: Any,
    layout: ChatLayout,
    data: Sequence[Turns],
    *,
    max_steps: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    evaluate: Callable[[int], float],
    target: float,
    seed: int = 0,
    warmup: int = 20,
) -> tuple[list[dict[str, float]], int]:
    """AdamW on the model's tokens, until ``evaluate(step) >= target`` or ``max_steps``.

    Returns the per-step log and the number of steps taken.
    """
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    order: list[int] = []
    log: list[dict[str, float]] = []
    step = 0
    while step < max_steps:
        if len(order) < batch_size:
            order += [int(i) for i in rng.permutation(len(data))]
        batch, order = [data[i] for i in order[:batch_size]], order[batch_size:]
        step += 1
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / max(warmup, 1))
        inputs = layout.batch(batch, labels=True)
        loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        row = {"step": float(step), "loss": float(loss.detach())}
        if step % eval_every == 0 or step == max_steps:
            row["wellformed"] = evaluate(step)
            log.append(row)
            print(
                f"sft step {step}: loss {row['loss']:.3f}, well-formed {row['wellformed']:.1%}",
                flush=True,
            )
            if row["wellformed"] >= target:
                break
        else:
            log.append(row)
    return log, step


# ---------------------------------------------------------------------- GRPO
def grpo(
    model: Any,
    processor: Any,
    rows: list[dict[str, Any]],
    factory: Callable[[], MedSegToolEnv],
    *,
    out_dir: Path,
    steps: int,
    batch_size: int,
    num_generations: int,
    lr: float,
    max_completion_length: int,
    temperature: float,
    protocol: str,
    seed: int,
) -> list[dict[str, float]]:
    """``steps`` GRPO steps with TRL's ``GRPOTrainer`` and the adapter; TRL's per-step logs."""
    from datasets import Dataset as HFDataset  # type: ignore[import-untyped]
    from trl import GRPOConfig, GRPOTrainer

    funcs, weights = reward_setup()
    args = GRPOConfig(
        output_dir=str(out_dir / "grpo"),
        per_device_train_batch_size=batch_size,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        max_tool_calling_iterations=tool_rounds(protocol),
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        temperature=temperature,
        reward_weights=weights,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=seed,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=processor,
        reward_funcs=funcs,
        args=args,
        train_dataset=HFDataset.from_list(rows),
        # TRL types reset() as returning str | None; its code takes a list of parts too
        environment_factory=cast(Any, factory),
    )
    trainer.train()
    logs = [dict(h) for h in trainer.state.log_history if "reward" in h]
    return logs


# ---------------------------------------------------------------------- output
def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot(
    path: Path,
    sft_log: Sequence[dict[str, float]],
    grpo_log: Sequence[dict[str, Any]],
    before: float | None = None,
) -> None:
    """``curves.png``: SFT loss and held-out well-formed rate (``before``: at step 0); GRPO's
    reward, format and Dice per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    steps = [r["step"] for r in sft_log]
    left.plot(steps, [r["loss"] for r in sft_log], color="tab:blue", lw=0.8)
    left.set_xlabel("SFT step")
    left.set_ylabel("loss (model tokens)", color="tab:blue")
    left.set_yscale("log")
    twin = left.twinx()
    evals = [r for r in sft_log if "wellformed" in r]
    if before is not None:
        evals = [{"step": 0.0, "wellformed": before}, *evals]
    twin.plot([r["step"] for r in evals], [r["wellformed"] for r in evals], "o-", color="tab:red")
    twin.set_ylabel("well-formed replies, held-out", color="tab:red")
    twin.set_ylim(-0.02, 1.02)
    left.set_title("SFT on expert turns")
    x = list(range(1, len(grpo_log) + 1))
    for key, label in (
        ("reward", "reward (medsam_agent)"),
        ("rewards/format_reward/mean", "format"),
        ("rewards/dice_reward/mean", "Dice"),
    ):
        right.plot(x, [float(r.get(key, np.nan)) for r in grpo_log], marker=".", label=label)
    right.set_xlabel("GRPO step")
    right.set_ylim(-0.02, 1.02)
    right.legend()
    right.set_title("GRPO (TRL, MedSegToolEnv)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- main
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``medseg-train learn-text``."""
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--protocol", default="medsam_agent_rl")
    p.add_argument("--segmenter", default=None, help="MedSeg-v0 segmenter (the env's default)")
    p.add_argument(
        "--sft-data",
        type=Path,
        default=None,
        help="a `medseg-train export-sft` folder of demo's train side under --protocol "
        "(its images are the training part; the others are held out); default: play "
        "HybridExpert here on a seeded split by image",
    )
    p.add_argument("--holdout-frac", type=float, default=0.25, help="images held out per source")
    p.add_argument("--expert-seeds", type=int, default=10, help="expert episodes per sample")
    p.add_argument("--eval-seeds", type=int, default=1, help="held-out episodes per sample")
    p.add_argument("--eval-limit", type=int, default=None, help="at most this many episodes")
    p.add_argument("--sft-max-steps", type=int, default=1000)
    p.add_argument("--sft-batch", type=int, default=8)
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--target", type=float, default=0.95, help="well-formed rate to reach")
    p.add_argument("--grpo-steps", type=int, default=30)
    p.add_argument("--grpo-batch", type=int, default=8, help="rollouts per step")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--grpo-lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-completion-length", type=int, default=640)
    p.add_argument("--max-new-tokens", type=int, default=64, help="per reply, evaluation")
    p.add_argument("--play-batch", type=int, default=12, help="evaluation episodes in lockstep")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1; on a busy shared CPU, 2 threads made a step 45x slower)",
    )
    p.add_argument("--cache-dir", default=None, help="on-disk embedding cache (MEDSEG_CACHE_DIR)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="medseg-train learn-text", description=__doc__)
    add_arguments(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run ``medseg-train learn-text`` (see the module docstring)."""
    if args.cache_dir:
        os.environ["MEDSEG_CACHE_DIR"] = str(args.cache_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..testing.tiny_qwen import MAX_PIXELS, build_tiny_qwen_vl

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    t_all = time.perf_counter()

    # (a) the model
    t = time.perf_counter()
    model_dir = build_tiny_qwen_vl(out / "tiny-model", seed=args.seed)
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=torch.float32, local_files_only=True
    )
    env_options: dict[str, Any] = {"protocol": args.protocol, "dataset": "demo"}
    if args.segmenter:
        env_options["segmenter"] = args.segmenter
    factory = tool_env_factory(**env_options)
    envs = [factory() for _ in range(args.play_batch)]
    tools = [envs[0].add_bbox, envs[0].add_point, envs[0].stop_action]
    layout = ChatLayout(processor, tools=tools)
    system = tool_system_prompt(args.protocol)
    walls["setup_s"] = time.perf_counter() - t

    # (b) split and expert data
    t = time.perf_counter()
    dataset = load_dataset("demo")
    if args.sft_data is not None:
        episodes, used = load_export(args.sft_data, args.protocol, MAX_PIXELS)
        train = [i for i in range(len(dataset)) if image_name(dataset[i].sample_id) in used]
        held = [i for i in range(len(dataset)) if image_name(dataset[i].sample_id) not in used]
    else:
        train, held = split_by_image(dataset, args.holdout_frac, args.seed)
        expert = HybridExpert(seed=args.seed)
        episodes = []
        for k in range(args.expert_seeds):
            for index in train:
                episodes.append(expert_episode(envs[0], expert, index, 1000 + k, MAX_PIXELS))
            print(f"expert: {len(episodes)} episodes", flush=True)
    data = [episode_turns(layout, system, e) for e in episodes]
    walls["expert_data_s"] = time.perf_counter() - t
    data_info = {
        "train_samples": len(train),
        "train_images": len({image_name(dataset[i].sample_id) for i in train}),
        "heldout_samples": len(held),
        "heldout_images": len({image_name(dataset[i].sample_id) for i in held}),
        "heldout_sample_ids": [dataset[i].sample_id for i in held],
        "expert_episodes": len(episodes),
        "expert_turns": sum(len(e.steps) for e in episodes),
        "post_episode_replies": len(episodes),
        "expert_dice": float(np.mean([e.dice for e in episodes])),
        "expert_reward": (
            float(np.mean([e.reward for e in episodes]))
            if not any(np.isnan(e.reward) for e in episodes)
            else None  # an export records Dice, not the reward
        ),
        "sft_source": str(args.sft_data) if args.sft_data else "in-process HybridExpert",
        "sft_tokens": sum(len(d.ids) for d in data),
        "sft_model_tokens": sum(sum(d.model_mask) for d in data),
        "sft_images": sum(len(d.images) for d in data),
    }
    print(json.dumps({k: v for k, v in data_info.items() if k != "heldout_sample_ids"}), flush=True)

    # (c) well-formed rate before, SFT until the target
    held_episodes = [(i, 2000 + k) for k in range(args.eval_seeds) for i in held]
    if args.eval_limit is not None:
        held_episodes = held_episodes[: args.eval_limit]
    eval_rows: list[dict[str, Any]] = []

    def evaluate(step: int, phase: str = "sft") -> dict[str, Any]:
        t_eval = time.perf_counter()
        records = play(
            model, layout, envs, held_episodes, system, max_new_tokens=args.max_new_tokens
        )
        stats = summarize(records) | {"phase": phase, "step": step}
        stats["wall_s"] = time.perf_counter() - t_eval
        eval_rows.append(stats)
        (out / f"eval_{phase}_{step}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records)
        )
        return stats

    t = time.perf_counter()
    before = evaluate(0, "before_sft")
    print(f"before SFT: {before}", flush=True)
    walls["eval_before_s"] = time.perf_counter() - t
    t = time.perf_counter()
    sft_log, sft_steps = sft(
        model,
        layout,
        data,
        max_steps=args.sft_max_steps,
        batch_size=args.sft_batch,
        lr=args.sft_lr,
        eval_every=args.eval_every,
        evaluate=lambda step: evaluate(step)["wellformed"],
        target=args.target,
        seed=args.seed,
    )
    walls["sft_s"] = time.perf_counter() - t
    after_sft = eval_rows[-1]
    write_csv(out / "sft.csv", sft_log)

    # (d) GRPO with the TRL adapter
    t = time.perf_counter()
    rows = grpo_rows(train, seeds=[3000 + k for k in range(4)], protocol=args.protocol)
    np.random.default_rng(args.seed).shuffle(rows)  # type: ignore[arg-type]
    weights_before = [p.detach().clone() for p in model.parameters()]
    grpo_log = grpo(
        model,
        processor,
        rows,
        factory,
        out_dir=out,
        steps=args.grpo_steps,
        batch_size=args.grpo_batch,
        num_generations=args.num_generations,
        lr=args.grpo_lr,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        protocol=args.protocol,
        seed=args.seed,
    )
    squares = [
        ((p.detach() - b) ** 2).sum()
        for p, b in zip(model.parameters(), weights_before, strict=True)
    ]
    delta = float(torch.stack(squares).sum().sqrt())
    walls["grpo_s"] = time.perf_counter() - t
    write_csv(out / "grpo.csv", grpo_log)
    t = time.perf_counter()
    after_grpo = evaluate(len(grpo_log), "after_grpo")
    walls["eval_after_grpo_s"] = time.perf_counter() - t
    write_csv(out / "eval.csv", eval_rows)
    plot(out / "curves.png", sft_log, grpo_log, before["wellformed"])
    walls["total_s"] = time.perf_counter() - t_all

    def mean(key: str, part: slice) -> float:
        values = [float(r[key]) for r in grpo_log[part] if key in r]
        return float(np.mean(values)) if values else float("nan")

    third = max(1, len(grpo_log) // 3)
    summary = {
        "data": data_info,
        "wellformed_before_sft": before["wellformed"],
        "wellformed_after_sft": after_sft["wellformed"],
        "sft_steps": sft_steps,
        "sft_reached_target": after_sft["wellformed"] >= args.target,
        "heldout_after_sft": after_sft,
        "heldout_after_grpo": after_grpo,
        "grpo_steps": len(grpo_log),
        "grpo_weight_change_l2": delta,
        "grpo_first_third": {
            k: mean(k, slice(0, third))
            for k in ("reward", "rewards/format_reward/mean", "rewards/dice_reward/mean")
        },
        "grpo_last_third": {
            k: mean(k, slice(len(grpo_log) - third, None))
            for k in ("reward", "rewards/format_reward/mean", "rewards/dice_reward/mean")
        },
        "wall_s": walls,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "data"}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

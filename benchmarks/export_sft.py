"""``medseg-bench export-sft``: expert trajectories through ``MedSeg-Text-v0`` → SFT chat datasets.

The expert is ``HybridExpert`` (MedSAM-Agent's hybrid prompting with progress-constrained
sampling) in MedSAM-Agent's two styles, drawn per trajectory from ``mix``: ``box`` (a jittered
box, then corrective clicks) and ``click`` (click sequences, no box). Every corrective action
must raise the IoU by at least ``tau`` (up to ``resamples`` candidates a turn; else the expert
stops); the expert stops once the IoU reaches ``target_iou``. Its progress check previews the
action the reply text gives back (the expert's action rendered in the protocol's grid, parsed
and mapped to the canvas again), so the kept action is the one the model will learn.

Each trajectory is played through the text env of a registered protocol (``medsam_agent`` by
default) on one sample: the user turns and images are exactly the env's observation, the
assistant turns the protocol's ``render_action`` text of each expert action. The protocol's
last turn is kept for the stop: a trajectory has at most ``max_turns - 1`` prompts and always
ends with the protocol's stop reply (``stop_action``; SegAgent's ``Finish``). A trajectory in
which the expert finds no first prompt, or whose action the env refuses, is left out (the
journal keeps it as ``skipped`` with the reason).

**Output folder** (``--out``; default ``$MEDSEG_SFT_DIR/<hash>`` or
``${XDG_CACHE_HOME:-~/.cache}/medseg-env/sft/<hash>``, never the current directory):

- ``trl.jsonl``: TRL's conversational vision format, one row per trajectory:
  ``{"id", "messages": [{"role", "content": [{"type": "text", "text"} | {"type": "image"}]}],
  "images": ["images/<hash>.png", ...]}``; the ``n``-th ``{"type": "image"}`` placeholder is
  ``images[n]``, a path relative to the folder (see ``load_trl_dataset``).
- ``llamafactory.jsonl`` + ``dataset_info.json``: LLaMA-Factory's multimodal sharegpt format
  (``messages`` of ``role``/``content`` strings, one ``<image>`` token per image, ``images``
  paths relative to the folder, which is the ``dataset_dir``; the entry is ``medseg_sft``).
  Where a protocol writes a literal ``<image>`` right after its image (MedSAM-Agent's EVAL
  path), that text becomes the image's placeholder, so LLaMA-Factory tokenizes the image
  without the literal (as sharegpt data written for that format would read; the env shows
  both). Train on ``medsam_agent_rl`` exports, which have no literal, to avoid the question.
  Checked with LLaMA-Factory 0.9.5's own loader (``tests/mllm/test_llamafactory_loader.py``):
  use the ``qwen3_vl_nothink`` template for Qwen3-VL Instruct (``qwen3_vl`` inserts an empty
  think block before every reply), ``mask_history: true`` for the per-turn rows, and a
  ``cutoff_len`` above the longest row (a truncated row keeps its images but loses image
  tokens).
- ``--records turn`` (or ``both``): ``trl_turns.jsonl`` / ``llamafactory_turns.jsonl``, one row
  per turn: the messages the env showed at that turn (its history mode) and the reply. A
  protocol that keeps less history than a trajectory (SegAgent keeps none) should be trained
  on these: its per-trajectory rows show turns the model never sees.
- ``images/<hash>.png``: every image the protocol showed (turn 1 plain, later turns the mask
  overlay), named by the SHA-256 of its pixels, so each distinct image is stored once.
- ``trajectories.jsonl``: the journal (one line per finished trajectory: sample, seed, style,
  every turn's messages, reply, Dice, IoU and mask); ``export.json``: the config, the data's
  fingerprint and the segmenter's weights id; ``stats.json``: the counts.

**Replay check**: after every export (and with ``--verify`` alone), each exported trajectory's
assistant turns, read back from the written files, are parsed and replayed through a fresh
text env on the same sample and seed; every turn's mask must match the recorded one (Dice >=
0.99) and every reply the recorded one, every row must equal the row rebuilt from the replay
(texts and image names), and every image file must hold the pixels its name says. Any
failure raises ``ReplayCheckError`` naming the trajectories (the CLI exits with status 1).

**Splits**: ``split="train"`` (the default) or ``"val"`` exports one side of a seeded split of
the dataset into groups that never straddle it: ``split_by="image"`` (the default; the 2D
image a sample is cut from, by pixel content, so the targets of one image stay together) or
``"source"`` (``sample.source_id``: the case or file; on ``demo`` that is only 4 groups,
78 of the 90 targets in one). About ``val_fraction`` of the samples go to ``val``; the split
depends on ``split_seed`` and the data only (not on ``seed``), so a change of seed never moves
a val sample into train. ``limit`` exports the first ``limit`` trajectories of the plan. The
held-out ``demo-heldout`` is refused: it is reserved for the final evaluation.

**Determinism and resume**: every trajectory is seeded from (seed, dataset, sample id, index)
and written to the journal as it ends (fsynced; images first, atomically); a re-run of the
same config in the same folder skips the finished ones (a ``limit`` is not part of the config,
so a limited run is resumed by the full one). The same config, data and package versions give
byte-identical files. One run per folder (``runner.folder_lock``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib
import io
import json
import math
import os
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from medseg_agents.oracle import HybridExpert
from medseg_env import actions as A
from medseg_env.data import Dataset, load_dataset, split
from medseg_env.data.split import group_split, pixel_hash
from medseg_env.env import PROMPTING_MODES, MedSegEnv
from medseg_env.oracle import Oracle
from medseg_env.segmenters import shared_segmenter
from medseg_env.segmenters.types import PromptKind, Prompts
from medseg_env.text import get_protocol, registered_protocols
from medseg_env.wrappers.text_env import DEFAULT_TARGET_TEMPLATE, MedSegTextEnv, make_text_env

from .config import (
    DEFAULT_OBS_SIZE,
    DEFAULT_SEGMENTERS,
    BenchError,
    check_segmenter_spec,
    stable_int,
)
from .plan import data_fingerprint
from .records import atomic_write
from .runner import folder_lock

FORMAT = "medseg-sft/1"
CONFIG_FILE = "export.json"
STATS_FILE = "stats.json"
JOURNAL_FILE = "trajectories.jsonl"
IMAGE_DIR = "images"
TRL_FILE, TRL_TURNS_FILE = "trl.jsonl", "trl_turns.jsonl"
LF_FILE, LF_TURNS_FILE = "llamafactory.jsonl", "llamafactory_turns.jsonl"
LF_INFO_FILE = "dataset_info.json"
LF_NAME = "medseg_sft"
OUT_DIR_ENV = "MEDSEG_SFT_DIR"
#: Every dataset file an export may write: ``(format, records) -> file``.
DATA_FILES = {
    ("trl", "trajectory"): TRL_FILE,
    ("trl", "turn"): TRL_TURNS_FILE,
    ("llamafactory", "trajectory"): LF_FILE,
    ("llamafactory", "turn"): LF_TURNS_FILE,
}
STYLES = ("box", "click")
SPLITS = ("train", "val", "all")
SPLIT_BY = split.SPLIT_BY
FORMATS = ("trl", "llamafactory")
RECORDS = ("trajectory", "turn")
HELDOUT_DATASETS = frozenset({"demo-heldout"})
REPLAY_MIN_DICE = 0.99
IMAGE_TOKEN = "<image>"  # LLaMA-Factory's image placeholder


class ReplayCheckError(RuntimeError):
    """Exported trajectories that do not replay to their recorded masks (or rows, or images)."""


# ---------------------------------------------------------------------------------------------
# Config and plan
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportConfig:
    """Everything that decides the exported trajectories (hashed into the default folder).

    Attributes:
        dataset: a dataset name or path (``medseg_env.data.load_dataset``).
        split: ``"train"``, ``"val"`` or ``"all"`` (see the module docstring).
        val_fraction: the share of samples the ``val`` side aims at, in (0, 1).
        split_by: ``"image"`` or ``"source"``, the groups the split keeps whole.
        split_seed: seeds the split (independent of ``seed``).
        protocol: a registered text protocol.
        target_template: turn 1's target text (``MedSegTextEnv.target_template``).
        segmenter: a registered segmenter.
        prompting: the env's segmenter call (``MedSegEnv`` ``prompting``); ``""``: the
            protocol's own (``Protocol.segmenter_call``, what its model is scored with).
        obs_size: the env's canvas side, pixels.
        seed: seeds every trajectory (jitter, click draws, style).
        mix: ``((style, weight), ...)``: the share of each style (``box``, ``click``).
        per_sample: trajectories per sample (each with its own seed and style).
        tau: minimum IoU gain of a kept corrective action.
        target_iou: the expert stops at this IoU.
        resamples: candidates per turn before the expert gives up and stops.
        box_jitter: the first box's side jitter, as a fraction of the box size.
    """

    dataset: str = "demo"
    split: str = "train"
    val_fraction: float = 0.2
    split_by: str = "image"
    split_seed: int = 0
    protocol: str = "medsam_agent"
    target_template: str = DEFAULT_TARGET_TEMPLATE
    segmenter: str = DEFAULT_SEGMENTERS[0]
    prompting: str = ""
    obs_size: int = DEFAULT_OBS_SIZE
    seed: int = 0
    mix: tuple[tuple[str, float], ...] = (("box", 0.7), ("click", 0.3))
    per_sample: int = 1
    tau: float = 0.01
    target_iou: float = 0.9
    resamples: int = 5
    box_jitter: float = 0.1

    def __post_init__(self) -> None:
        mix = tuple((str(s), float(w)) for s, w in self.mix)
        object.__setattr__(self, "mix", mix)
        for name in ("val_fraction", "tau", "target_iou", "box_jitter"):
            object.__setattr__(self, name, float(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise ``BenchError`` for values that can never work."""
        if self.split not in SPLITS:
            raise BenchError(f"split must be one of {SPLITS}; got {self.split!r}")
        if self.split_by not in SPLIT_BY:
            raise BenchError(f"split_by must be one of {SPLIT_BY}; got {self.split_by!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise BenchError(f"val_fraction must be in (0, 1); got {self.val_fraction}")
        if self.protocol not in registered_protocols():
            raise BenchError(f"unknown protocol {self.protocol!r}; known: {registered_protocols()}")
        if self.prompting and self.prompting not in PROMPTING_MODES:
            raise BenchError(
                f"prompting must be one of {list(PROMPTING_MODES)}; got {self.prompting!r}"
            )
        check_segmenter_spec(self.segmenter)
        try:
            self.target_template.format(target="tumour", modality="CT")
        except (KeyError, IndexError, ValueError) as err:
            raise BenchError(
                f"target template {self.target_template!r} may only name {{target}} and "
                f"{{modality}} ({err!r})"
            ) from None
        if not self.mix:
            raise BenchError("mix must name at least one style")
        styles = [s for s, _ in self.mix]
        if len(set(styles)) != len(styles) or not set(styles) <= set(STYLES):
            raise BenchError(f"mix styles must be distinct, among {STYLES}; got {styles}")
        weights = [w for _, w in self.mix]
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise BenchError(f"mix weights must be >= 0 with a positive sum; got {weights}")
        for name, minimum in (("per_sample", 1), ("resamples", 1), ("obs_size", 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise BenchError(f"{name} must be an integer >= {minimum}; got {value!r}")
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise BenchError(f"tau must be >= 0; got {self.tau}")
        if not 0.0 < self.target_iou <= 1.0:
            raise BenchError(f"target_iou must be in (0, 1]; got {self.target_iou}")
        if not (math.isfinite(self.box_jitter) and self.box_jitter >= 0):
            raise BenchError(f"box_jitter must be >= 0; got {self.box_jitter}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mix"] = {s: w for s, w in self.mix}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BenchError(f"unknown export config key(s) {unknown}")
        values = dict(data)
        if "mix" in values:
            values["mix"] = tuple(dict(values["mix"]).items())
        return cls(**values)

    def hash(self) -> str:
        """12 hex digits of the SHA-256 of the canonical JSON."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``"box=0.7,click=0.3"`` -> ``(("box", 0.7), ("click", 0.3))``; a bare style weighs 1."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        style, sep, weight = item.partition("=")
        try:
            out.append((style.strip(), float(weight) if sep else 1.0))
        except ValueError:
            raise BenchError(f"--mix takes STYLE=WEIGHT,...; got {text!r}") from None
    return tuple(out)


@dataclass(frozen=True)
class TrajectorySpec:
    """One planned trajectory: ``k``-th of sample ``sample_index``."""

    id: str
    sample_index: int
    sample_id: str
    k: int
    seed: int
    style: str


def split_indices(dataset: Dataset, config: ExportConfig) -> list[int]:
    """The sample indices of ``config.split``, in dataset order.

    ``medseg_env.data.split.group_split`` with a generator seeded from ``split_seed`` and the
    dataset's name: no image (or source, with ``split_by="source"``) is on both sides.
    """
    if config.split == "all":
        return list(range(len(dataset)))
    rng = np.random.default_rng(stable_int("sft-split", config.split_seed, dataset.name))
    train, val = group_split(dataset, config.val_fraction, rng, config.split_by)
    return val if config.split == "val" else train


def make_plan(dataset: Dataset, config: ExportConfig) -> list[TrajectorySpec]:
    """Every trajectory of the config, sample-major in dataset order."""
    styles = [s for s, _ in config.mix]
    weights = np.array([w for _, w in config.mix], float)
    bounds = np.cumsum(weights / weights.sum())
    plan = []
    for i in split_indices(dataset, config):
        sample_id = dataset[i].sample_id
        for k in range(config.per_sample):
            seed = stable_int("sft", config.seed, config.dataset, sample_id, k)
            u = (stable_int("sft-style", config.seed, config.dataset, sample_id, k) >> 10) / 2**53
            style = styles[min(int(np.searchsorted(bounds, u, side="right")), len(styles) - 1)]
            plan.append(TrajectorySpec(f"{sample_id}#{k}", i, sample_id, k, seed, style))
    return plan


def default_out_dir(config: ExportConfig, model_id: str) -> Path:
    """``$MEDSEG_SFT_DIR/<name>``, else ``${XDG_CACHE_HOME:-~/.cache}/medseg-env/sft/<name>``:
    the config hash and 8 hex digits of the segmenter's weights id."""
    base = os.environ.get(OUT_DIR_ENV)
    if not base:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(cache) / "medseg-env" / "sft")
    suffix = hashlib.sha256(model_id.encode()).hexdigest()[:8]
    return Path(base).expanduser() / f"{config.hash()}-{suffix}"


def load_export_dataset(config: ExportConfig) -> Dataset:
    """The config's dataset; the held-out split is refused."""
    if config.dataset in HELDOUT_DATASETS:
        raise BenchError(
            f"{config.dataset!r} is the held-out split reserved for the final evaluation: "
            "never export from it (use 'demo', with --split train|val for a tuning split)"
        )
    try:
        dataset = load_dataset(config.dataset)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise BenchError(f"dataset {config.dataset!r}: {err}") from err
    if dataset.name in HELDOUT_DATASETS:
        raise BenchError(
            f"{config.dataset!r} holds the held-out split {dataset.name!r}, reserved for the "
            "final evaluation: never export from it"
        )
    return dataset


# ---------------------------------------------------------------------------------------------
# Playing a trajectory
# ---------------------------------------------------------------------------------------------


def _pixel_hash(image: np.ndarray | Image.Image) -> str:
    """24 hex digits of the SHA-256 of an image's mode, size and pixels."""
    if not isinstance(image, Image.Image):
        return pixel_hash(image)
    head = f"{image.mode}|{image.size}|"
    return hashlib.sha256(head.encode() + image.tobytes()).hexdigest()[:24]


def image_name(image: Image.Image) -> str:
    """The image's file, relative to the export folder."""
    return f"{IMAGE_DIR}/{_pixel_hash(image)}.png"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def encode_mask(mask: np.ndarray) -> str:
    """A bool mask as base64 of zlib-compressed packed bits (its shape is stored beside it)."""
    packed = np.packbits(np.asarray(mask, bool).reshape(-1))
    return base64.b64encode(zlib.compress(packed.tobytes(), 9)).decode("ascii")


def decode_mask(text: str, shape: Sequence[int]) -> np.ndarray:
    bits = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8)
    count = int(np.prod(shape))
    return np.unpackbits(bits)[:count].reshape(tuple(shape)).astype(bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def serialize(messages: Sequence[Mapping[str, Any]], images: dict[str, Image.Image]) -> list:
    """Chat messages with every PIL image replaced by its file name (collected in ``images``)."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for part in content:
            if part["type"] == "image":
                name = image_name(part["image"])
                images.setdefault(name, part["image"])
                parts.append({"type": "image", "image": name})
            elif part["type"] == "text":
                parts.append({"type": "text", "text": part["text"]})
            else:
                raise ValueError(f"unexpected content part {part['type']!r} (use images='pil')")
        out.append({"role": message["role"], "content": parts})
    return out


class _ReplyOracle:
    """The env's oracle, whose ``preview`` runs the action the reply text gives back.

    The expert's action goes through the protocol's grid (render, parse, back to the canvas)
    before its progress is measured, so the progress check holds for what the model learns.
    """

    def __init__(self, env: MedSegTextEnv) -> None:
        self._env = env
        self._oracle: Oracle = cast(MedSegEnv, env.unwrapped).oracle

    @property
    def ground_truth(self) -> np.ndarray:
        return self._oracle.ground_truth

    @property
    def prompts(self) -> Prompts:
        return self._oracle.prompts

    @property
    def obs_size(self) -> int:
        return self._oracle.obs_size

    @property
    def min_box_size(self) -> float:
        return self._oracle.min_box_size

    def supports(self, kind: PromptKind) -> bool:
        return self._oracle.supports(kind)

    def preview(self, action: A.Action) -> tuple[np.ndarray, str | None]:
        parsed = self._env.parse(self._env.render_action(action))
        if parsed.call is None:
            return self._oracle.preview(A.stop())[0], f"reply not parsed: {parsed.error}"
        return self._oracle.preview(self._env.to_action(parsed.call))


class _ExpertView(gym.Wrapper):
    """What the expert is handed as its env: the text env, with the reply-quantised oracle."""

    def __init__(self, env: MedSegTextEnv) -> None:
        super().__init__(env)
        self._reply_oracle = _ReplyOracle(env)

    @property
    def oracle(self) -> _ReplyOracle:
        return self._reply_oracle


def make_expert(config: ExportConfig, style: str) -> HybridExpert:
    return HybridExpert(
        box_jitter_frac=config.box_jitter,
        tau=config.tau,
        max_tries=config.resamples,
        target_iou=config.target_iou,
        first=style,
    )


def make_env(config: ExportConfig, dataset: Dataset) -> MedSegTextEnv:
    """A fresh text env of the config (the protocol's turn budget and segmenter call)."""
    protocol = get_protocol(config.protocol)
    return make_text_env(
        protocol=protocol,
        images="pil",
        target_template=config.target_template,
        dataset=dataset,
        segmenter=shared_segmenter(config.segmenter),
        obs_size=config.obs_size,
        prompting=config.prompting or protocol.segmenter_call,
    )


def _sample_fields(dataset: Dataset, spec: TrajectorySpec) -> dict[str, Any]:
    sample = dataset[spec.sample_index]
    return {
        "id": spec.id,
        "sample_index": spec.sample_index,
        "sample_id": spec.sample_id,
        "source_id": sample.source_id,
        "modality": sample.modality,
        "target": sample.target,
        "k": spec.k,
        "seed": spec.seed,
        "style": spec.style,
    }


def play(
    env: MedSegTextEnv, expert: HybridExpert, dataset: Dataset, spec: TrajectorySpec
) -> tuple[dict[str, Any], dict[str, Image.Image]]:
    """One trajectory: its journal entry and the images it shows (by file name)."""
    base = cast(MedSegEnv, env.unwrapped)
    view = _ExpertView(env)
    expert.seed(spec.seed)
    messages, info = env.reset(seed=spec.seed, options={"sample_index": spec.sample_index})
    entry = _sample_fields(dataset, spec)
    entry.update(mask_shape=list(base.current_mask.shape), skipped=None, turns=[])
    images: dict[str, Image.Image] = {}
    done = False
    while not done:
        last_turn = base.turn + 1 >= base.max_turns and base.max_turns > 1
        if last_turn:
            action = A.stop()
        else:
            mask = base.current_mask
            obs = {"mask": (mask[..., None] * np.uint8(255)).astype(np.uint8)}
            action = expert.act(obs, info, view)
        is_stop = A.validate(action)[0] == A.ActionKind.STOP
        if is_stop and int(info.get("num_prompts", 0)) == 0:
            entry.update(skipped="the expert found no first prompt that makes progress", turns=[])
            return entry, {}
        reply = env.render_action(action)
        shown = serialize(messages, images)
        messages, _, terminated, truncated, info = env.step(reply)
        if info["invalid_action"] is not None:
            reason = f"turn {base.turn}: the env refused the action ({info['invalid_action']})"
            entry.update(skipped=reason, turns=[])
            return entry, {}
        entry["turns"].append(
            {
                "prompt": shown,
                "reply": reply,
                "call": info["parsed"]["call"],
                "dice": float(info["dice"]),
                "iou": float(info["iou"]),
                "mask": encode_mask(base.current_mask),
            }
        )
        done = terminated or truncated
    return entry, images


# ---------------------------------------------------------------------------------------------
# Records: the chat rows of each format
# ---------------------------------------------------------------------------------------------


def _conversations(entry: Mapping[str, Any], records: str) -> list[tuple[str, list]]:
    """``(row id, messages)`` of a trajectory: one conversation, or one per turn.

    A trajectory's conversation is the system prompt, then every turn's new user message and
    reply; a turn's is exactly the messages the env showed then, plus the reply.
    """
    turns = entry["turns"]
    if records == "turn":
        return [
            (f"{entry['id']}/{t + 1}", [*turn["prompt"], _assistant(turn["reply"])])
            for t, turn in enumerate(turns)
        ]
    first = turns[0]["prompt"]
    if first[0]["role"] != "system":
        raise ValueError(f"{entry['id']}: the conversation does not start with the system prompt")
    messages = [first[0]]
    for turn in turns:
        user = turn["prompt"][-1]
        if user["role"] != "user":
            raise ValueError(f"{entry['id']}: a turn's last message is not a user message")
        messages += [user, _assistant(turn["reply"])]
    return [(entry["id"], messages)]


def _assistant(reply: str) -> dict[str, Any]:
    return {"role": "assistant", "content": reply}


def _parts(content: str | list) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def trl_row(row_id: str, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """TRL's conversational vision row: content lists with ``{"type": "image"}`` placeholders."""
    out_messages, images = [], []
    for message in messages:
        parts = []
        for part in _parts(message["content"]):
            if part["type"] == "image":
                images.append(part["image"])
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": part["text"]})
        out_messages.append({"role": message["role"], "content": parts})
    return {"id": row_id, "messages": out_messages, "images": images}


def llamafactory_row(row_id: str, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """LLaMA-Factory's sharegpt row: string contents with one ``<image>`` token per image.

    A text that starts with ``<image>`` right after an image already holds that image's token
    (MedSAM-Agent's EVAL user text); otherwise the token is written where the image was.
    """
    out_messages, images = [], []
    for message in messages:
        text, after_image = "", False
        for part in _parts(message["content"]):
            if part["type"] == "image":
                images.append(part["image"])
                text += IMAGE_TOKEN
                after_image = True
                continue
            chunk = part["text"]
            if after_image and chunk.startswith(IMAGE_TOKEN):
                chunk = chunk[len(IMAGE_TOKEN) :]
            text += chunk
            after_image = False
        out_messages.append({"role": message["role"], "content": text})
    tokens = sum(m["content"].count(IMAGE_TOKEN) for m in out_messages)
    if tokens != len(images):
        raise ValueError(
            f"{row_id}: {tokens} {IMAGE_TOKEN} tokens for {len(images)} images (a text holds a "
            f"literal {IMAGE_TOKEN}); LLaMA-Factory needs one token per image"
        )
    return {"id": row_id, "messages": out_messages, "images": images}


ROW_BUILDERS = {"trl": trl_row, "llamafactory": llamafactory_row}


def build_rows(entry: Mapping[str, Any], fmt: str, records: str) -> list[dict[str, Any]]:
    return [ROW_BUILDERS[fmt](rid, msgs) for rid, msgs in _conversations(entry, records)]


def dataset_info(files: Iterable[str]) -> dict[str, Any]:
    """The ``dataset_info.json`` entries of the LLaMA-Factory files (``data/README.md``)."""
    entry = {
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }
    names = {LF_FILE: LF_NAME, LF_TURNS_FILE: f"{LF_NAME}_turns"}
    return {names[f]: {"file_name": f, **entry} for f in files}


def _jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    lines = [json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows]
    return "".join(lines).encode("utf-8")


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------
# The journal
# ---------------------------------------------------------------------------------------------

_ENTRY_KEYS = frozenset(
    {"id", "sample_index", "sample_id", "source_id", "modality", "target", "k", "seed"}
    | {"style", "mask_shape", "skipped", "turns"}
)


def _check_entry(entry: Any, wanted: Mapping[str, TrajectorySpec], out: Path) -> str | None:
    """Why a journal line cannot be kept, or None."""
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        return "not a trajectory entry"
    spec = wanted.get(entry["id"])
    if spec is None:
        return f"trajectory {entry['id']!r} is not in this export's plan"
    got = (entry["sample_index"], entry["seed"], entry["style"])
    if got != (spec.sample_index, spec.seed, spec.style):
        planned = (spec.sample_index, spec.seed, spec.style)
        return f"(sample_index, seed, style) = {got}, planned {planned}"
    if entry["skipped"] is None:
        if not isinstance(entry["turns"], list) or not entry["turns"]:
            return "no turns"
        for turn in entry["turns"]:
            for message in turn["prompt"]:
                for part in _parts(message["content"]):
                    if part["type"] == "image" and not (out / part["image"]).is_file():
                        return f"its image {part['image']} is missing"
    return None


def load_journal(
    out: Path, plan: Sequence[TrajectorySpec], repair: bool = True
) -> dict[str, dict[str, Any]]:
    """The valid entries of the journal, by id; bad lines are dropped with a warning (their
    trajectories run again) and, with ``repair``, the journal is rewritten without them (and
    without a torn last line)."""
    path = out / JOURNAL_FILE
    if not path.is_file():
        return {}
    wanted = {s.id: s for s in plan}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    kept: list[bytes] = []
    entries: dict[str, dict[str, Any]] = {}
    changed = False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        terminated = i < len(lines) - 1
        try:
            entry = json.loads(line)
        except ValueError as err:
            changed = True
            if terminated:  # an unterminated last line is a write cut short: no warning
                warnings.warn(f"{path}:{i + 1}: dropping a non-JSON line ({err})", stacklevel=2)
            continue
        try:
            reason = _check_entry(entry, wanted, out)
        except (KeyError, TypeError, AttributeError) as err:
            reason = f"a malformed entry ({err!r})"
        if reason is None and entry["id"] in entries:
            reason = "a second entry of this trajectory (the first one is kept)"
        if reason is not None:
            warnings.warn(f"{path}:{i + 1}: dropping line ({reason}); it runs again", stacklevel=2)
            changed = True
            continue
        entries[entry["id"]] = entry
        kept.append(line + b"\n")
    if repair and (changed or (raw and not raw.endswith(b"\n"))):
        atomic_write(path, b"".join(kept))
    return entries


def _append(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _write_image(out: Path, name: str, image: Image.Image) -> None:
    path = out / name
    if not path.is_file():
        atomic_write(path, png_bytes(image))


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What ``export_sft`` did and wrote."""

    out_dir: Path
    config: ExportConfig
    planned: int
    exported: int
    skipped: int
    resumed: int
    executed: int
    turns: int
    images: int
    image_bytes: int
    files: dict[str, Path]
    file_bytes: int
    replay: ReplayReport

    def summary(self) -> str:
        return (
            f"{self.exported} trajectories ({self.turns} assistant turns) exported of "
            f"{self.planned} planned: {self.executed} run, {self.resumed} resumed, "
            f"{self.skipped} skipped (reasons in {STATS_FILE}); {self.images} image files "
            f"({self.image_bytes:,} bytes), {self.file_bytes:,} bytes with the rows. Replay check: "
            f"{self.replay.checked} trajectories ({self.replay.turns} turns) reproduced, min "
            f"Dice {self.replay.min_dice:.4f}."
        )


@dataclass
class ReplayReport:
    """What the replay check saw: trajectories and turns replayed, the lowest mask Dice."""

    checked: int = 0
    turns: int = 0
    rows: int = 0
    min_dice: float = 1.0
    failures: list[tuple[str, str]] = field(default_factory=list)


def export_sft(
    config: ExportConfig,
    out_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    formats: Sequence[str] = FORMATS,
    records: Sequence[str] = ("trajectory",),
    progress: bool = True,
) -> ExportResult:
    """Export (or resume) the config's trajectories to ``out_dir``, then replay-check them.

    Raises:
        BenchError: bad input or a folder of another export (nothing written).
        ReplayCheckError: an exported trajectory does not replay (the files stay, for a look).
    """
    formats, records = _check_outputs(formats, records, limit)
    dataset = load_export_dataset(config)
    plan = make_plan(dataset, config)
    if not plan:
        raise BenchError(f"the {config.split!r} split of {config.dataset!r} has no samples")
    protocol = get_protocol(config.protocol)
    if "trajectory" in records and protocol.history_turns is not None:
        if protocol.history_turns < protocol.max_turns - 1:
            warnings.warn(
                f"protocol {protocol.name!r} shows {protocol.history_turns} past turns: its "
                "per-trajectory rows hold turns the model never sees; use records='turn'",
                stacklevel=2,
            )
    model_id = shared_segmenter(config.segmenter).model_id
    out = Path(out_dir) if out_dir is not None else default_out_dir(config, model_id)
    doc = {
        "format": FORMAT,
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "data": data_fingerprint(dataset, range(len(dataset))),
        "model": model_id,
    }
    _check_out_dir(out, doc)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        _check_out_dir(out, doc)
        atomic_write(out / CONFIG_FILE, dump_json(doc))
        (out / IMAGE_DIR).mkdir(exist_ok=True)
        entries = load_journal(out, plan)
        chosen = plan[:limit] if limit is not None else plan
        todo = [s for s in chosen if s.id not in entries]
        resumed = len(chosen) - len(todo)
        _run(config, dataset, out, todo, entries, resumed, len(chosen), progress)
        files = _write_outputs(out, [entries[s.id] for s in chosen], formats, records)
        report = verify(out, progress=progress, dataset=dataset)
    kept = [entries[s.id] for s in chosen if entries[s.id]["skipped"] is None]
    names = {p for e in kept for t in e["turns"] for p in _image_names(t["prompt"])}
    image_bytes = sum((out / n).stat().st_size for n in names)
    return ExportResult(
        out_dir=out,
        config=config,
        planned=len(chosen),
        exported=len(kept),
        skipped=len(chosen) - len(kept),
        resumed=resumed,
        executed=len(todo),
        turns=sum(len(e["turns"]) for e in kept),
        images=len(names),
        image_bytes=image_bytes,
        files=files,
        file_bytes=image_bytes + sum(p.stat().st_size for p in files.values()),
        replay=report,
    )


def _check_outputs(
    formats: Sequence[str], records: Sequence[str], limit: int | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    formats, records = tuple(dict.fromkeys(formats)), tuple(dict.fromkeys(records))
    if not formats or not set(formats) <= set(FORMATS):
        raise BenchError(f"formats must be among {FORMATS}; got {list(formats)}")
    if not records or not set(records) <= set(RECORDS):
        raise BenchError(f"records must be among {RECORDS}; got {list(records)}")
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise BenchError(f"limit must be an integer >= 1 or None; got {limit!r}")
    return formats, records


def _check_out_dir(out: Path, doc: Mapping[str, Any]) -> None:
    """Refuse a folder that holds another export (or other files of ours without a config)."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"output path {out} exists and is not a folder")
    path = out / CONFIG_FILE
    if not path.is_file():
        ours = [n for n in (JOURNAL_FILE, *DATA_FILES.values()) if (out / n).exists()]
        if ours:
            raise BenchError(f"{out} holds export files ({', '.join(ours)}) but no {CONFIG_FILE}")
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        old = ExportConfig.from_dict(saved["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise BenchError(f"{path} is unreadable ({err}); choose another --out folder") from err
    mine, theirs = doc["config"], old.to_dict()
    diff = [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in sorted(mine) if mine[k] != theirs[k]]
    if diff:
        raise BenchError(
            f"{out} holds an export of another config; differing keys (this != saved): "
            f"{'; '.join(diff)}. Choose another --out folder."
        )
    for key, what in (("data", "data"), ("model", "segmenter weights")):
        if saved.get(key) != doc[key]:
            raise BenchError(
                f"{out} holds an export of the same config on other {what}; choose another "
                "--out folder"
            )


def _run(
    config: ExportConfig,
    dataset: Dataset,
    out: Path,
    todo: Sequence[TrajectorySpec],
    entries: dict[str, dict[str, Any]],
    resumed: int,
    total: int,
    progress: bool,
) -> None:
    if not todo:
        return
    env = make_env(config, dataset)
    experts = {style: make_expert(config, style) for style, _ in config.mix}
    bar = tqdm(
        total=total,
        initial=resumed,
        disable=not progress,
        unit="traj",
        desc="export-sft",
        dynamic_ncols=True,
    )
    try:
        for spec in todo:
            bar.set_postfix_str(f"{spec.style} {spec.sample_id}", refresh=False)
            try:
                entry, images = play(env, experts[spec.style], dataset, spec)
            except Exception as err:
                err.add_note(f"while exporting trajectory {spec.id} ({spec.style})")
                raise
            for name, image in images.items():
                _write_image(out, name, image)
            _append(out / JOURNAL_FILE, json.dumps(entry, allow_nan=False) + "\n")
            entries[spec.id] = entry
            bar.update(1)
    finally:
        bar.close()
        env.close()


def _write_outputs(
    out: Path,
    entries: Sequence[Mapping[str, Any]],
    formats: Sequence[str],
    records: Sequence[str],
) -> dict[str, Path]:
    """Write the dataset files (plan order) and ``dataset_info.json``; remove the files of
    formats not asked for this time, so that every dataset file in the folder is checked."""
    kept = [e for e in entries if e["skipped"] is None]
    files: dict[str, Path] = {}
    for (fmt, rec), name in DATA_FILES.items():
        path = out / name
        if fmt in formats and rec in records:
            atomic_write(path, _jsonl(row for e in kept for row in build_rows(e, fmt, rec)))
            files[name] = path
        else:
            path.unlink(missing_ok=True)
    lf_files = [n for n in (LF_FILE, LF_TURNS_FILE) if n in files]
    if lf_files:
        atomic_write(out / LF_INFO_FILE, dump_json(dataset_info(lf_files)))
        files[LF_INFO_FILE] = out / LF_INFO_FILE
    else:
        (out / LF_INFO_FILE).unlink(missing_ok=True)
    stats = {
        "trajectories": len(kept),
        "skipped": {e["id"]: e["skipped"] for e in entries if e["skipped"] is not None},
        "turns": sum(len(e["turns"]) for e in kept),
        "styles": {s: sum(e["style"] == s for e in kept) for s in STYLES},
        "final_dice_mean": float(np.mean([e["turns"][-1]["dice"] for e in kept])) if kept else 0,
        "rows": {name: _count_lines(path) for name, path in files.items() if name in _DATA},
    }
    atomic_write(out / STATS_FILE, dump_json(stats))
    files[STATS_FILE] = out / STATS_FILE
    return files


_DATA = frozenset(DATA_FILES.values())


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def _image_names(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    return [p["image"] for m in messages for p in _parts(m["content"]) if p.get("type") == "image"]


# ---------------------------------------------------------------------------------------------
# Replay check
# ---------------------------------------------------------------------------------------------


def _row_replies(fmt: str, row: Mapping[str, Any]) -> list[str]:
    replies = []
    for message in row["messages"]:
        if message["role"] == "assistant":
            content = message["content"]
            if fmt == "trl":
                content = "".join(p.get("text") or "" for p in content)
            replies.append(content)
    return replies


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            row = json.loads(line)
        except ValueError as err:
            raise ReplayCheckError(f"{path}:{i + 1} is not JSON ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise ReplayCheckError(f"{path}:{i + 1} is not a row with an id")
        rows.append(row)
    return rows


def verify(
    out_dir: str | Path, *, progress: bool = False, dataset: Dataset | None = None
) -> ReplayReport:
    """Replay every trajectory of the dataset files in ``out_dir`` (see the module docstring).

    Raises:
        BenchError: the folder holds no export.
        ReplayCheckError: the trajectories that fail, each with its first problem.
    """
    out = Path(out_dir)
    try:
        doc = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
        config = ExportConfig.from_dict(doc["config"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BenchError(f"{out} holds no readable export ({CONFIG_FILE}: {err})") from err
    if dataset is None:
        dataset = load_export_dataset(config)
    plan = make_plan(dataset, config)
    journal = load_journal(out, plan, repair=False)  # a check writes nothing
    # (file, format, records) -> rows by trajectory id
    by_file: dict[str, tuple[str, str, dict[str, list[dict[str, Any]]]]] = {}
    for (fmt, rec), name in DATA_FILES.items():
        if (out / name).is_file():
            grouped: dict[str, list[dict[str, Any]]] = {}
            for row in _read_rows(out / name):
                tid = row["id"].rpartition("/")[0] if rec == "turn" else row["id"]
                grouped.setdefault(tid, []).append(row)
            by_file[name] = (fmt, rec, grouped)
    if not by_file:
        raise BenchError(f"{out} holds no dataset file ({', '.join(DATA_FILES.values())})")
    ids = list(dict.fromkeys(t for _, _, g in by_file.values() for t in g))
    report = ReplayReport()
    checked_images: dict[str, str | None] = {}
    bar = tqdm(ids, disable=not progress, unit="traj", desc="replay-check", dynamic_ncols=True)
    try:
        for tid in bar:
            problem = _verify_one(tid, journal, by_file, config, dataset, out, checked_images)
            if isinstance(problem, str):
                report.failures.append((tid, problem))
                continue
            dices, rows = problem
            report.checked += 1
            report.turns += len(dices)
            report.rows += rows
            report.min_dice = min([report.min_dice, *dices])
    finally:
        bar.close()
    if report.failures:
        shown = "; ".join(f"{tid}: {why}" for tid, why in report.failures[:10])
        more = len(report.failures) - 10
        raise ReplayCheckError(
            f"replay check failed for {len(report.failures)} of {len(ids)} exported "
            f"trajectories in {out}: {shown}" + (f"; and {more} more" if more > 0 else "")
        )
    return report


def _verify_one(
    tid: str,
    journal: Mapping[str, Mapping[str, Any]],
    by_file: Mapping[str, tuple[str, str, Mapping[str, list[dict[str, Any]]]]],
    config: ExportConfig,
    dataset: Dataset,
    out: Path,
    checked_images: dict[str, str | None],
) -> str | tuple[list[float], int]:
    """The first problem of one trajectory, or its per-turn Dice and its number of rows."""
    entry = journal.get(tid)
    if entry is None or entry["skipped"] is not None:
        return "no recorded trajectory in the journal"
    replays: dict[tuple[str, ...], tuple[dict[str, Any], list[float]] | str] = {}
    dices: list[float] = []
    rows = 0
    for name, (fmt, rec, grouped) in by_file.items():
        got = grouped.get(tid, [])
        if not got:
            return f"missing from {name}"
        # Each file's replies: a trajectory row holds them all, a turn's row ends with its own.
        if rec == "trajectory":
            if len(got) != 1:
                return f"{len(got)} rows in {name}"
            replies = tuple(_row_replies(fmt, got[0]))
        else:
            replies = tuple((_row_replies(fmt, r) or [""])[-1] for r in got)
        if replies not in replays:
            replays[replies] = _replay_and_compare(entry, replies, config, dataset)
        result = replays[replies]
        if isinstance(result, str):
            return f"{name}: {result}"
        replayed, dices = result
        # Every row must be the row the replay gives, and its images what their names say.
        expected = build_rows(replayed, fmt, rec)
        if got != expected:
            return f"{name}: a row differs from the replay ({_first_difference(got, expected)})"
        rows += len(got)
        for image in (i for row in got for i in row["images"]):
            if image not in checked_images:
                checked_images[image] = _check_image(out, image)
            if checked_images[image] is not None:
                return f"{name}: {checked_images[image]}"
    return dices, rows


def _replay_and_compare(
    entry: Mapping[str, Any], replies: Sequence[str], config: ExportConfig, dataset: Dataset
) -> tuple[dict[str, Any], list[float]] | str:
    """Replay ``replies`` in a fresh text env: what they give and each turn's mask Dice
    against the recorded mask, or the first problem."""
    env = make_env(config, dataset)
    try:
        replayed, masks, error = _replay(env, entry, replies)
    finally:
        env.close()
    if error is not None:
        return error
    recorded = entry["turns"]
    if len(masks) != len(recorded):
        return f"{len(masks)} turns replayed, {len(recorded)} recorded"
    shape = entry["mask_shape"]
    dices = [dice(m, decode_mask(t["mask"], shape)) for m, t in zip(masks, recorded, strict=True)]
    for t, d in enumerate(dices):
        if d < REPLAY_MIN_DICE:
            return f"turn {t + 1}: replayed mask Dice {d:.4f} < {REPLAY_MIN_DICE} vs the recorded"
    for t, (reply, turn) in enumerate(zip(replies, recorded, strict=True)):
        if reply != turn["reply"]:
            return f"turn {t + 1}: the reply {reply!r} is not the recorded {turn['reply']!r}"
    return replayed, dices


def _replay(
    env: MedSegTextEnv, entry: Mapping[str, Any], replies: Sequence[str]
) -> tuple[dict[str, Any], list[np.ndarray], str | None]:
    """Step the replies through ``env``: the entry they give (prompts, replies) and the masks."""
    base = cast(MedSegEnv, env.unwrapped)
    messages, _ = env.reset(seed=entry["seed"], options={"sample_index": entry["sample_index"]})
    turns: list[dict[str, Any]] = []
    masks: list[np.ndarray] = []
    images: dict[str, Image.Image] = {}
    for t, reply in enumerate(replies):
        if base.episode_over:
            return {}, masks, f"the episode ended after turn {t}; the row has {len(replies)}"
        shown = serialize(messages, images)
        messages, _, terminated, truncated, info = env.step(reply)
        if info["format_error"] is not None:
            return {}, masks, f"turn {t + 1}: the reply gives no action ({info['format_error']})"
        turns.append({"prompt": shown, "reply": reply})
        masks.append(base.current_mask)
    if not base.episode_over:
        return {}, masks, f"the row ends after turn {len(replies)} but the episode goes on"
    return {"id": entry["id"], "turns": turns}, masks, None


def _check_image(out: Path, name: str) -> str | None:
    path = out / name
    try:
        with Image.open(path) as image:
            image.load()
            pixels = image.convert("RGB") if image.mode != "RGB" else image.copy()
    except (OSError, ValueError) as err:
        return f"image {name} is unreadable ({err})"
    if image_name(pixels) != name:
        return f"image {name} does not hold the pixels its name says"
    return None


def _first_difference(got: Any, expected: Any, path: str = "") -> str:
    if type(got) is not type(expected):
        return f"{path or 'row'}: {_short(got)} != {_short(expected)}"
    if isinstance(got, dict):
        for key in sorted(set(got) | set(expected)):
            if got.get(key) != expected.get(key):
                return _first_difference(got.get(key), expected.get(key), f"{path}.{key}")
    if isinstance(got, list):
        if len(got) != len(expected):
            return f"{path}: {len(got)} items, the replay gives {len(expected)}"
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return f"{path}: {_short(got)} != {_short(expected)}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------
# Loading the TRL rows
# ---------------------------------------------------------------------------------------------


def load_trl_dataset(out_dir: str | Path, file: str = TRL_FILE) -> Any:
    """The TRL rows as a ``datasets.Dataset`` whose ``images`` are PIL images.

    ``datasets.load_dataset("json", ...)`` reads the paths as strings; here they are made
    absolute and cast to ``Sequence(Image())``, which decodes them on access, as TRL's vision
    collator (``DataCollatorForVisionLanguageModeling``) expects. Needs ``datasets``.
    """
    datasets = importlib.import_module("datasets")  # optional: TRL's dependency, not ours
    folder = Path(out_dir).absolute()
    data = datasets.load_dataset("json", data_files=str(folder / file), split="train")

    def absolute(row: dict[str, Any]) -> dict[str, Any]:
        return {"images": [str(folder / p) for p in row["images"]]}

    data = data.map(absolute)
    return data.cast_column("images", datasets.Sequence(datasets.Image()))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """The ``export-sft`` subcommand of ``medseg-bench``."""
    p = sub.add_parser(
        "export-sft",
        help="export expert trajectories through the text env as SFT chat datasets",
        description="Run HybridExpert (box-then-clicks and click-sequence styles) through "
        "MedSeg-Text-v0 and write TRL and LLaMA-Factory chat datasets, then replay-check them.",
    )
    d = ExportConfig()
    p.add_argument("-d", "--dataset", default=d.dataset, help=f"dataset (default {d.dataset})")
    p.add_argument(
        "--split",
        choices=SPLITS,
        default=d.split,
        help="export one side of a seeded split that keeps each group (--split-by) on one "
        f"side, or all (default {d.split})",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help=f"share of the samples on the val side (default {d.val_fraction})",
    )
    p.add_argument(
        "--split-by",
        choices=SPLIT_BY,
        default=d.split_by,
        help="groups kept whole: the 2D image (by pixels) or sample.source_id (default image)",
    )
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seeds the split (0)")
    p.add_argument("--limit", type=int, help="export only the first N planned trajectories")
    p.add_argument(
        "--protocol",
        default=d.protocol,
        help=f"text protocol, one of {registered_protocols()} (default {d.protocol})",
    )
    p.add_argument(
        "--target-template",
        default=d.target_template,
        help=f"turn 1's target text (default {d.target_template!r})",
    )
    p.add_argument("-s", "--segmenter", default=d.segmenter, help=f"(default {d.segmenter})")
    p.add_argument(
        "--prompting",
        choices=PROMPTING_MODES,
        default=d.prompting,
        help="the env's segmenter call (default: the protocol's own)",
    )
    p.add_argument("--obs-size", type=int, default=d.obs_size, help=f"(default {d.obs_size})")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the trajectories (0)")
    p.add_argument(
        "--mix",
        default=",".join(f"{s}={w:g}" for s, w in d.mix),
        help="style weights: box (box, then corrective clicks) and click (clicks only) "
        "(default %(default)s)",
    )
    p.add_argument(
        "--per-sample", type=int, default=d.per_sample, help="trajectories per sample (1)"
    )
    p.add_argument(
        "--tau", type=float, default=d.tau, help=f"min IoU gain of a kept action ({d.tau})"
    )
    p.add_argument(
        "--target-iou", type=float, default=d.target_iou, help=f"stop at this IoU ({d.target_iou})"
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=d.resamples,
        help=f"candidates per turn before the expert stops ({d.resamples})",
    )
    p.add_argument(
        "--box-jitter",
        type=float,
        default=d.box_jitter,
        help=f"first box jitter, fraction of its size ({d.box_jitter})",
    )
    p.add_argument(
        "--format", choices=("trl", "llamafactory", "both"), default="both", help="(both)"
    )
    p.add_argument(
        "--records",
        choices=("trajectory", "turn", "both"),
        default="trajectory",
        help="one row per trajectory, per turn, or both (trajectory)",
    )
    p.add_argument(
        "--out",
        help=f"output folder (default ${OUT_DIR_ENV}/<hash> or ~/.cache/medseg-env/sft/<hash>)",
    )
    p.add_argument("--verify", action="store_true", help="only replay-check the export in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args: Any) -> int:
    """Run the ``export-sft`` subcommand; 1 when the replay check fails."""
    import sys
    import time

    started = time.perf_counter()
    try:
        if args.verify:
            if not args.out:
                raise BenchError("--verify needs --out, the folder to check")
            report = verify(args.out, progress=not args.no_progress)
            print(
                f"Replay check passed: {report.checked} trajectories, {report.turns} turns, "
                f"{report.rows} rows, min Dice {report.min_dice:.4f}."
            )
            return 0
        config = ExportConfig(
            dataset=args.dataset,
            split=args.split,
            val_fraction=args.val_fraction,
            split_by=args.split_by,
            split_seed=args.split_seed,
            protocol=args.protocol,
            target_template=args.target_template,
            segmenter=args.segmenter,
            prompting=args.prompting,
            obs_size=args.obs_size,
            seed=args.seed,
            mix=parse_mix(args.mix),
            per_sample=args.per_sample,
            tau=args.tau,
            target_iou=args.target_iou,
            resamples=args.resamples,
            box_jitter=args.box_jitter,
        )
        both = {"both": ("trl", "llamafactory")}.get(args.format, (args.format,))
        recs = {"both": RECORDS}.get(args.records, (args.records,))
        result = export_sft(
            config,
            args.out,
            limit=args.limit,
            formats=both,
            records=recs,
            progress=not args.no_progress,
        )
    except ReplayCheckError as err:
        print(f"medseg-bench export-sft: error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"Wall time {time.perf_counter() - started:.1f} s. Files in {result.out_dir}:")
    for name, path in sorted(result.files.items()):
        print(f"  {name} ({path.stat().st_size:,} bytes)")
    print(f"  {IMAGE_DIR}/ ({result.images} PNG files)")
    return 0

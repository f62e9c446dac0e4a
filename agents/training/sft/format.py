"""The SFT export's on-disk format, defined once: file names, rows, images, masks.

The writer (``export``), the replay check (``verify``) and every reader (``load_trl_dataset``
here, ``medseg_agents.training.learn_text``, LLaMA-Factory through ``dataset_info.json``) take
the names and the row layouts from this module, so a change of format is one edit.

An export folder (``FORMAT``, ``medseg-sft/1``):

- ``trl.jsonl`` (``TRL_FILE``): TRL's conversational vision format, one row per trajectory:
  ``{"id", "messages": [{"role", "content": [{"type": "text", "text"} | {"type": "image"}]}],
  "images": ["images/<hash>.png", ...]}``; the ``n``-th ``{"type": "image"}`` placeholder is
  ``images[n]``, a path relative to the folder.
- ``llamafactory.jsonl`` (``LF_FILE``) + ``dataset_info.json`` (``LF_INFO_FILE``):
  LLaMA-Factory's multimodal sharegpt format (``messages`` of ``role``/``content`` strings,
  one ``<image>`` token per image, ``images`` relative to the folder, which is the
  ``dataset_dir``; the entry is ``medseg_sft``, ``LF_NAME``).
- ``trl_turns.jsonl`` / ``llamafactory_turns.jsonl``: one row per turn (id ``<trajectory>/<n>``):
  the messages the env showed at that turn and the reply.
- ``images/<hash>.png`` (``IMAGE_DIR``): every image shown, named by the SHA-256 of its pixels.
- ``trajectories.jsonl`` (``JOURNAL_FILE``): the journal, one entry per trajectory
  (``ENTRY_KEYS``; each turn's messages with image names, reply, call, Dice, IoU and mask,
  ``encode_mask``); ``export.json`` (``CONFIG_FILE``): the format, the config, its hash, the
  data's fingerprint and the segmenter's weights id; ``stats.json`` (``STATS_FILE``): counts.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import io
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medseg_env.data.split import pixel_hash

FORMAT = "medseg-sft/1"
CONFIG_FILE = "export.json"
STATS_FILE = "stats.json"
JOURNAL_FILE = "trajectories.jsonl"
IMAGE_DIR = "images"
TRL_FILE, TRL_TURNS_FILE = "trl.jsonl", "trl_turns.jsonl"
LF_FILE, LF_TURNS_FILE = "llamafactory.jsonl", "llamafactory_turns.jsonl"
LF_INFO_FILE = "dataset_info.json"
LF_NAME = "medseg_sft"
FORMATS = ("trl", "llamafactory")
RECORDS = ("trajectory", "turn")
#: Every dataset file an export may write: ``(format, records) -> file``.
DATA_FILES = {
    ("trl", "trajectory"): TRL_FILE,
    ("trl", "turn"): TRL_TURNS_FILE,
    ("llamafactory", "trajectory"): LF_FILE,
    ("llamafactory", "turn"): LF_TURNS_FILE,
}
#: The keys of a journal entry (``play`` writes them).
ENTRY_KEYS = frozenset(
    {"id", "sample_index", "sample_id", "source_id", "modality", "target", "k", "seed"}
    | {"style", "mask_shape", "skipped", "turns"}
)
IMAGE_TOKEN = "<image>"  # LLaMA-Factory's image placeholder


# ---------------------------------------------------------------------------------------------
# Images and masks
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


def parts(content: str | list) -> list[dict[str, Any]]:
    """A message's content as a list of parts (a string is one text part)."""
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def image_names(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The image files named in serialized messages, in order."""
    return [p["image"] for m in messages for p in parts(m["content"]) if p.get("type") == "image"]


# ---------------------------------------------------------------------------------------------
# Rows: the chat datasets of each format
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


def trl_row(row_id: str, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """TRL's conversational vision row: content lists with ``{"type": "image"}`` placeholders."""
    out_messages, images = [], []
    for message in messages:
        out_parts = []
        for part in parts(message["content"]):
            if part["type"] == "image":
                images.append(part["image"])
                out_parts.append({"type": "image"})
            else:
                out_parts.append({"type": "text", "text": part["text"]})
        out_messages.append({"role": message["role"], "content": out_parts})
    return {"id": row_id, "messages": out_messages, "images": images}


def llamafactory_row(row_id: str, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """LLaMA-Factory's sharegpt row: string contents with one ``<image>`` token per image.

    A text that starts with ``<image>`` right after an image already holds that image's token
    (MedSAM-Agent's EVAL user text); otherwise the token is written where the image was.
    """
    out_messages, images = [], []
    for message in messages:
        text, after_image = "", False
        for part in parts(message["content"]):
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
    """The rows of one journal entry in format ``fmt`` (``"trl"``, ``"llamafactory"``), one
    per trajectory or per turn (``records``)."""
    return [ROW_BUILDERS[fmt](rid, msgs) for rid, msgs in _conversations(entry, records)]


def row_replies(fmt: str, row: Mapping[str, Any]) -> list[str]:
    """The assistant replies of a row of format ``fmt``, in order."""
    replies = []
    for message in row["messages"]:
        if message["role"] == "assistant":
            content = message["content"]
            if fmt == "trl":
                content = "".join(p.get("text") or "" for p in content)
            replies.append(content)
    return replies


def row_trajectory(row_id: str, records: str) -> str:
    """The trajectory id of a row id (a turn row's id is ``<trajectory>/<turn>``)."""
    return row_id.rpartition("/")[0] if records == "turn" else row_id


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


def jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Rows as JSON lines (UTF-8, no ASCII escapes)."""
    lines = [json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows]
    return "".join(lines).encode("utf-8")


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


def read_export_doc(out_dir: str | Path) -> dict[str, Any]:
    """``export.json`` of an export folder: ``format``, ``config`` (a dict), ``config_hash``,
    ``data``, ``model``.

    Raises:
        ValueError: no readable ``export.json`` of this format there (the message names it).
    """
    path = Path(out_dir) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: no readable SFT export ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ValueError(f"{path}: not an SFT export (no 'config' object)")
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    return doc


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a dataset file.

    Raises:
        ValueError: a line that is not JSON, or not an object with a string ``id`` (the
            message names the file and the line).
    """
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            row = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{path}:{i + 1} is not JSON ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise ValueError(f"{path}:{i + 1} is not a row with an id")
        rows.append(row)
    return rows


def read_entries(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The journal's entries by trajectory id, as written (no checks; ``verify`` checks)."""
    path = Path(out_dir) / JOURNAL_FILE
    entries = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            entries[entry["id"]] = entry
    return entries


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

"""LLaMA-Factory 0.9.5's own data pipeline on a ``medseg-train export-sft`` folder.

Needs llamafactory, which the main venv does not have (it pins transformers<=5.6): build the
overlay once and put it first on the path::

    bash scripts/llamafactory_env.sh
    PYTHONPATH=$PWD/.lf-env python -m pytest tests/training/test_llamafactory_loader.py -q

Four trajectories of the bundled ``demo`` are exported with the weight-free ``classical``
backend (both record kinds). LLaMA-Factory reads the folder as its ``dataset_dir`` (the
export's ``dataset_info.json``) the way ``llamafactory-cli train`` does: ``get_train_args``
(stage ``sft``), ``load_tokenizer``, ``get_template_and_fix_tokenizer`` and ``get_dataset``,
with the tiny Qwen3-VL's real tokenizer, processor and chat template. Checked:

- every row loads (LLaMA-Factory drops a malformed row with only a warning) and its images
  resolve to the export's files;
- one vision block per image, holding as many ``<|image_pad|>`` as the processor's merged
  patches of that image;
- the labels are the assistant replies only (each reply and its ``<|im_end|>\\n``), all else
  ``-100``; the per-turn rows, loaded with ``mask_history``, label their last reply only;
- the input ids equal the model's own chat template (``apply_chat_template`` of the matching
  ``trl.jsonl`` row) except for one documented difference: the ``medsam_agent`` env shows the
  literal text ``<image>`` right after every image, and in ``llamafactory.jsonl`` that literal
  *is* the image's placeholder, so LLaMA-Factory's prompts lack it;
- LLaMA-Factory's SFT collator batches two rows and the tiny model's forward pass takes the
  batch (image features match image tokens; the loss is finite).

The settings these rows need, which the test uses: ``template: qwen3_vl_nothink`` (Qwen3-VL
Instruct; ``qwen3_vl`` is LLaMA-Factory's reasoning template, which writes and trains an empty
``<think>\\n\\n</think>\\n\\n`` before every reply), ``mask_history: true`` for
``medseg_sft_turns`` (else every history reply of a turn row is trained again), and a
``cutoff_len`` above the longest row (a truncated row keeps all its images but loses image
tokens, and training fails on the mismatch).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "llamafactory",
    reason="llamafactory 0.9.5 is not importable here: build the overlay with "
    "`bash scripts/llamafactory_env.sh` and run with PYTHONPATH=.lf-env",
)

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from medseg_agents.training import sft as X  # noqa: E402
from medseg_agents.training.cli import main  # noqa: E402

LIMIT = 4
TEMPLATE = "qwen3_vl_nothink"
CUTOFF_LEN = 16384  # far above the rows here (< 2,000 tokens); see the module docstring
IGNORE_INDEX = -100
REPLY_END = "<|im_end|>\n"  # the Qwen template's end of an assistant turn, labelled too
LITERAL = X.IMAGE_TOKEN  # "<image>": the env's literal text, LLaMA-Factory's placeholder


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _label_spans(labels: list[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of every run of labelled (not ``-100``) positions."""
    spans, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _without_literal(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL messages with the literal ``<image>`` removed from their texts."""
    return [
        {
            **m,
            "content": [
                {**p, "text": p["text"].replace(LITERAL, "")} if p["type"] == "text" else p
                for p in m["content"]
            ],
        }
        for m in messages
    ]


@pytest.fixture(scope="module")
def lf(tiny_vlm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The export, and LLaMA-Factory's preprocessed rows of both of its datasets."""
    work = tmp_path_factory.mktemp("llamafactory")
    out = work / "export"
    argv = ["export-sft", "-s", "classical", "--records", "both", "--no-progress"]
    assert main([*argv, "--limit", str(LIMIT), "--out", str(out)]) == 0
    # get_train_args seeds random, numpy and torch: their global states are put back after
    rng_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()  # noqa: NPY002
    with pytest.MonkeyPatch.context() as mp:
        # llamafactory 0.9.5 pins transformers<=5.6, datasets<=4.0: its check (run at the
        # import of llamafactory.hparams) would refuse the main venv's versions
        mp.setenv("DISABLE_VERSION_CHECK", "1")
        mp.setenv("LLAMAFACTORY_VERBOSITY", "WARN")  # else it turns transformers' logs to INFO
        from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
        from llamafactory.hparams import get_train_args
        from llamafactory.model import load_tokenizer

        def load(name: str, **extra: Any) -> SimpleNamespace:
            args = {
                "model_name_or_path": str(tiny_vlm_dir),
                "stage": "sft",
                "do_train": True,
                "finetuning_type": "full",
                "template": TEMPLATE,
                "dataset": name,
                "dataset_dir": str(out),
                "cutoff_len": CUTOFF_LEN,
                "overwrite_cache": True,
                "cache_dir": str(work / "hf-cache"),
                "output_dir": str(work / "output"),
                "report_to": "none",
                **extra,
            }
            model_args, data_args, training_args, _, _ = get_train_args(args)
            module = load_tokenizer(model_args)
            template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
            data = get_dataset(template, model_args, data_args, training_args, "sft", **module)
            return SimpleNamespace(
                examples=list(data["train_dataset"]), template=template, module=module
            )

        trajectories = load(X.LF_NAME)
        turns = load(f"{X.LF_NAME}_turns", mask_history=True)
    random.setstate(rng_state[0])
    np.random.set_state(rng_state[1])  # noqa: NPY002
    torch.random.set_rng_state(rng_state[2])
    return SimpleNamespace(
        out=out,
        tokenizer=trajectories.module["tokenizer"],
        trajectory=trajectories,
        turn=turns,
        kinds={
            "trajectory": (trajectories, X.LF_FILE, X.TRL_FILE),
            "turn": (turns, X.LF_TURNS_FILE, X.TRL_TURNS_FILE),
        },
    )


def _each_row(lf: SimpleNamespace) -> list[tuple[str, dict, dict, dict]]:
    """``(records, LLaMA-Factory's row, the llamafactory.jsonl row, the trl.jsonl row)``."""
    out = []
    for kind, (loaded, lf_file, trl_file) in lf.kinds.items():
        rows, trl = _rows(lf.out / lf_file), _rows(lf.out / trl_file)
        assert len(loaded.examples) == len(rows) == len(trl), kind
        out += [(kind, ex, row, t) for ex, row, t in zip(loaded.examples, rows, trl, strict=True)]
    return out


def test_every_row_loads_with_its_images(lf: SimpleNamespace) -> None:
    stats = json.loads((lf.out / X.STATS_FILE).read_text())
    assert len(lf.trajectory.examples) == stats["rows"][X.LF_FILE] == LIMIT
    assert len(lf.turn.examples) == stats["rows"][X.LF_TURNS_FILE] == stats["turns"] > LIMIT
    for _, example, row, trl in _each_row(lf):
        assert row["id"] == trl["id"] and row["images"] == trl["images"]
        # relative paths are joined to `media_dir`, which defaults to the dataset_dir
        assert example["images"] == [str(lf.out / p) for p in row["images"]]
        assert all(Path(p).is_file() for p in example["images"])


def test_one_vision_block_per_image(lf: SimpleNamespace, tiny_vlm_dir: Path) -> None:
    image_processor = AutoProcessor.from_pretrained(tiny_vlm_dir).image_processor
    merge = image_processor.merge_size**2
    ids = lf.tokenizer.convert_tokens_to_ids
    start, end, pad = ids("<|vision_start|>"), ids("<|vision_end|>"), ids("<|image_pad|>")
    for kind, example, row, _ in _each_row(lf):
        input_ids, n = example["input_ids"], len(row["images"])
        assert n > 0 and input_ids.count(start) == input_ids.count(end) == n, (kind, row["id"])
        images = [Image.open(p).convert("RGB") for p in example["images"]]
        grid = image_processor(images=images, return_tensors="pt")["image_grid_thw"]
        assert input_ids.count(pad) == int(grid.prod(dim=1).sum()) // merge, (kind, row["id"])
        # each block is vision_start, the image's pads, vision_end
        for block, thw in zip(_blocks(input_ids, start, end), grid.tolist(), strict=True):
            assert block == [pad] * (math.prod(thw) // merge)


def _blocks(input_ids: list[int], start: int, end: int) -> list[list[int]]:
    starts = [i for i, t in enumerate(input_ids) if t == start]
    return [input_ids[s + 1 : input_ids.index(end, s)] for s in starts]


def test_labels_are_the_assistant_replies_only(lf: SimpleNamespace) -> None:
    decode = lf.tokenizer.decode
    for kind, example, row, _ in _each_row(lf):
        input_ids, labels = example["input_ids"], example["labels"]
        assert len(labels) == len(input_ids)
        replies = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        if kind == "turn":  # mask_history: the row's own reply only, not its history
            replies = replies[-1:]
        spans = _label_spans(labels)
        assert [decode(labels[a:b]) for a, b in spans] == [r + REPLY_END for r in replies]
        for a, b in spans:
            assert labels[a:b] == input_ids[a:b]
            assert decode(input_ids[:a]).endswith("<|im_start|>assistant\n"), (kind, row["id"])
        if kind == "turn":
            assert spans[-1][1] == len(input_ids)  # the last reply ends the row
        labelled = sum(b - a for a, b in spans)
        assert sum(label != IGNORE_INDEX for label in labels) == labelled


def test_prompts_are_the_model_chat_template_less_the_literal(
    lf: SimpleNamespace, tiny_vlm_dir: Path
) -> None:
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)  # the model's own chat template
    for kind, example, row, trl in _each_row(lf):
        # the env's user turns are [image, "<image>text"]; the export keeps "<image>text" as
        # LLaMA-Factory's content, where that literal becomes the image's placeholder
        users = [m for m in trl["messages"] if m["role"] == "user"]
        lf_users = [m["content"] for m in row["messages"] if m["role"] == "user"]
        assert all(u["content"][0] == {"type": "image"} for u in users)
        assert [u["content"][1]["text"] for u in users] == lf_users
        assert all(text.startswith(LITERAL) for text in lf_users)
        # so LLaMA-Factory tokenizes exactly the chat template of the env's messages without
        # that literal text (the prompt the env shows has it after every image)
        text = processor.apply_chat_template(_without_literal(trl["messages"]), tokenize=False)
        images = [Image.open(lf.out / p).convert("RGB") for p in trl["images"]]
        reference = processor(text=[text], images=images, return_tensors="pt")["input_ids"][0]
        assert example["input_ids"] == reference.tolist(), (kind, row["id"])
        full = processor.apply_chat_template(trl["messages"], tokenize=False)
        assert full.count(LITERAL) == len(users) and LITERAL not in text


def test_llamafactory_batch_runs_the_tiny_model(lf: SimpleNamespace, tiny_vlm_dir: Path) -> None:
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir).eval()
    collate: Callable[[list[dict]], dict] = SFTDataCollatorWith4DAttentionMask(
        template=lf.trajectory.template,
        model=model,
        pad_to_multiple_of=8,
        label_pad_token_id=IGNORE_INDEX,
        attn_implementation=model.config._attn_implementation,
        compute_dtype=torch.float32,
        **lf.trajectory.module,
    )
    rows = lf.trajectory.examples[:2]
    batch = collate([dict(r) for r in rows])  # it pops the media keys of the rows it gets
    n_images = sum(len(r["images"]) for r in rows)
    assert batch["image_grid_thw"].shape[0] == n_images
    pad = lf.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = AutoProcessor.from_pretrained(tiny_vlm_dir).image_processor.merge_size ** 2
    assert (
        int((batch["input_ids"] == pad).sum())
        == int(batch["image_grid_thw"].prod(1).sum()) // merge
    )
    for i, row in enumerate(rows):
        labels = batch["labels"][i]
        assert labels[: len(row["labels"])].tolist() == row["labels"]
        assert (labels[len(row["labels"]) :] == IGNORE_INDEX).all()  # the padding
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0

"""A multi-turn conversation as token ids, grown turn by turn the way TRL's GRPO loop grows it.

TRL 1.16 never re-renders a conversation: the prompt is rendered once (chat template, images
expanded to their image tokens), each reply is the model's own tokens up to its end-of-turn
token, and what the environment adds after a reply is the *suffix* the template writes for the
new messages, found by rendering a dummy exchange with and without them and cutting after the
dummy reply's end-of-turn token (``GRPOTrainer._get_tool_suffix_ids``). ``ChatLayout`` does
the same, so supervised data, evaluation and the exact MedSAM-Agent rollout
(``trl_rollout``) put the same tokens in front of the model that GRPO training does.

``Turns.model_mask`` marks the tokens the model wrote (1) and those of the prompt and the
environment (0): the SFT labels, and TRL's ``env_mask``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

Message = dict[str, Any]


def multimodal(messages: Sequence[Message]) -> list[Message]:
    """Messages with every string content as one text part (what VLM processors take)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        out.append({**message, "content": content})
    return out


def signature(messages: Sequence[Message]) -> str:
    """A key of what the template renders from ``messages``: texts, roles, names, tool calls
    and image *sizes* (an image's token count depends only on its size)."""

    def part(p: Any) -> Any:
        if isinstance(p, dict) and p.get("type") == "image":
            return ["image", list(p["image"].size)]
        return p

    rows = []
    for m in messages:
        content = m.get("content")
        content = [part(p) for p in content] if isinstance(content, list) else content
        rows.append({**m, "content": content})
    return json.dumps(rows, sort_keys=True, default=repr)


def images_of(messages: Sequence[Message]) -> list[Image.Image]:
    """The PIL images of the messages' image parts, in order."""
    found = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            found += [p["image"] for p in content if p.get("type") == "image"]
    return found


@dataclass
class Turns:
    """Token ids of one conversation so far, and the images its image tokens stand for."""

    ids: list[int]
    model_mask: list[int]
    images: list[Image.Image] = field(default_factory=list)
    prompt_len: int = 0

    def add(self, ids: Sequence[int], by_model: bool, images: Sequence[Image.Image] = ()) -> None:
        self.ids += list(ids)
        self.model_mask += [int(by_model)] * len(ids)
        self.images += list(images)

    @property
    def completion_ids(self) -> list[int]:
        return self.ids[self.prompt_len :]

    @property
    def completion_mask(self) -> list[int]:
        return self.model_mask[self.prompt_len :]


class ChatLayout:
    """Token layout of a processor's chat template, with or without tools.

    Args:
        processor: a Hugging Face VLM processor (tokenizer, image processor, chat template).
        tools: the tools the template lists (functions or JSON schemas), or None.
        chat_template: a template to use instead of the processor's.
    """

    def __init__(
        self,
        processor: Any,
        tools: Sequence[Callable[..., Any] | dict[str, Any]] | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tools = list(tools) if tools else None
        self.chat_template = chat_template
        self.eos_id = int(self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token))
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.image_pad_id = int(self.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
        self._cache: dict[tuple[str, bool], list[int]] = {}

    def _render(self, messages: Sequence[Message], generation_prompt: bool) -> list[int]:
        key = (signature(messages), generation_prompt)
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = self._render_now(messages, generation_prompt)
        return list(self._cache[key])

    def _render_now(self, messages: Sequence[Message], generation_prompt: bool) -> list[int]:
        out = self.processor.apply_chat_template(
            multimodal(messages),
            tools=self.tools,
            chat_template=self.chat_template,
            add_generation_prompt=generation_prompt,
            tokenize=True,
            return_dict=True,
        )
        ids = out["input_ids"]
        ids = ids[0] if ids and isinstance(ids[0], list) else ids
        return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]

    def prompt(self, messages: Sequence[Message]) -> Turns:
        """The rendered prompt, up to the assistant header of the first reply."""
        ids = self._render(messages, True)
        return Turns(list(ids), [0] * len(ids), images_of(messages), prompt_len=len(ids))

    def reply_ids(self, text: str) -> list[int]:
        """A reply's tokens as a model would write them: the text, then the end of turn."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids] + [self.eos_id]

    def suffix(self, messages: Sequence[Message]) -> list[int]:
        """The tokens the template writes after a reply for ``messages`` (tool or user turns),
        up to the next assistant header."""
        tool_name = next((m.get("name") for m in messages if m.get("role") == "tool"), None)
        reply: Message = {"role": "assistant", "content": "x"}
        if tool_name is not None:  # as TRL: a dummy call of the tool that answered
            call = {"type": "function", "function": {"name": tool_name, "arguments": {}}}
            reply = {"role": "assistant", "content": "", "tool_calls": [call]}
        dummy: list[Message] = [{"role": "user", "content": "dummy"}, reply]
        prefix = self._render(dummy, False)
        full = self._render(dummy + list(messages), True)
        ends = [i for i, t in enumerate(prefix) if t == self.eos_id]
        if ends:
            prefix = prefix[: ends[-1] + 1]
        if full[: len(prefix)] != prefix:
            raise ValueError("the chat template does not preserve prefixes")
        return full[len(prefix) :]

    def add_reply(self, turns: Turns, reply: str | Sequence[int]) -> None:
        """Append a reply (text, or the model's own token ids ending in its end of turn)."""
        ids = self.reply_ids(reply) if isinstance(reply, str) else list(reply)
        turns.add(ids, True)

    def add_messages(self, turns: Turns, messages: Sequence[Message]) -> None:
        """Append what the environment says after a reply (its images included)."""
        turns.add(self.suffix(messages), False, images_of(messages))

    # ------------------------------------------------------------------ model inputs
    def image_inputs(self, images: Sequence[Image.Image]) -> dict[str, Any]:
        """``pixel_values`` and ``image_grid_thw`` of the images, in order (empty: {})."""
        if not images:
            return {}
        out = self.processor.image_processor(images=list(images), return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def batch(
        self, seqs: Sequence[Turns], *, padding_side: str = "right", labels: bool = False
    ) -> dict[str, Any]:
        """A padded batch for the model: ids, attention mask, image inputs and
        ``mm_token_type_ids``; with ``labels``, -100 everywhere but the model's tokens."""
        import torch

        width = max(len(s.ids) for s in seqs)
        ids, attention, label_rows = [], [], []
        for s in seqs:
            pad = [self.pad_id] * (width - len(s.ids))
            zeros = [0] * (width - len(s.ids))
            row_labels = [t if m else -100 for t, m in zip(s.ids, s.model_mask, strict=True)]
            if padding_side == "left":
                ids.append(pad + s.ids)
                attention.append(zeros + [1] * len(s.ids))
                label_rows.append([-100] * len(pad) + row_labels)
            else:
                ids.append(s.ids + pad)
                attention.append([1] * len(s.ids) + zeros)
                label_rows.append(row_labels + [-100] * len(pad))
        input_ids = torch.tensor(ids, dtype=torch.long)
        out: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "mm_token_type_ids": (input_ids == self.image_pad_id).long(),
        }
        out.update(self.image_inputs([image for s in seqs for image in s.images]))
        if labels:
            out["labels"] = torch.tensor(label_rows, dtype=torch.long)
        return out

    def generate(
        self,
        model: Any,
        seqs: Sequence[Turns],
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
    ) -> list[list[int]]:
        """One reply per conversation (left-padded batch): the new ids, up to and with the
        end-of-turn token when the model wrote one."""
        import torch

        inputs = self.batch(seqs, padding_side="left")
        options: dict[str, Any] = {"do_sample": do_sample, "pad_token_id": self.pad_id}
        if do_sample:
            options.update(temperature=temperature, top_k=top_k, top_p=top_p)
        else:
            options.update(temperature=None, top_k=None, top_p=None)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, **options)
        width = inputs["input_ids"].shape[1]
        stops = {self.eos_id, self.pad_id}
        replies = []
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), None)
            replies.append(row if cut is None else row[: cut + 1])
        return replies

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

"""The prompt decoder of a SAM-family segmenter, as a component it takes.

A ``SamFamilySegmenter`` encodes the image itself and hands every ``predict`` to its decoder:
SAM's prompt encoder + mask decoder, which turn the image embedding, the prompts and the
previous logits into one mask's low-resolution logits. Two decoders are registered:

- ``"eager"`` (:class:`EagerDecoder`): the two PyTorch modules, on the segmenter's device;
  ``decode_batch`` stacks like-shaped requests into one forward;
- ``"onnx"`` (``onnx_decoder.OnnxDecoder``): the same arithmetic as one ONNX Runtime graph on
  the CPU, built from the modules' weights and cached on disk (``onnx_graph``,
  ``onnx_cache``). Its masks equal eager's on the bundled data.

Any SAM-family backend takes either by name (``decoder="onnx"``,
``-s 'sam:decoder=onnx,allow_random_init=true'``) or as an instance; the LiteMedSAM backends
default to ``"auto"``: ONNX on the CPU, eager on other devices. The SAM 2 backends
(``sam2``, ``medsam2``) are not SAM-family segmenters here: their mask decoder also takes the
encoder's high-resolution features and has an object-score head, so the rewrite in
``onnx_graph`` does not fit it, and they keep their own PyTorch decoder. A new decoder is a
:class:`Decoder` subclass plus one :func:`register_decoder` line (entry-point group
``medseg_env.decoders``).

The decoder is not part of ``model_id``: the weights are the same, the masks are equal (see
``tests/segmenters/test_decoder_identity.py``), and the embedding cache is shared between
decoders. ``Segmenter.runtime`` says which one ran, and the benchmark records it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, cast

import torch
from torch import nn

from ..registry import Registry, callable_entries

ENTRY_POINT_GROUP = "medseg_env.decoders"


class DecoderInputs(NamedTuple):
    """One request as SAM's prompt encoder takes it (batch size 1, on the model's device).

    ``points``: ``((1, N, 2) coords, (1, N) labels)`` in SAM's model-input pixel frame (before
    SAM's own +0.5), or None; ``boxes``: ``(1, 4)`` ``x0, y0, x1, y1`` in the same frame, or
    None; ``masks``: ``(1, 1, 4h, 4w)`` previous logits, or None; ``multimask``: decode the
    candidate masks and keep the best-scored one (SAM's ``multimask_output`` and argmax).
    """

    points: tuple[torch.Tensor, torch.Tensor] | None
    boxes: torch.Tensor | None
    masks: torch.Tensor | None
    multimask: bool


class Decoded(NamedTuple):
    """A decoder's answer to one request: the kept mask's ``(1, 1, 4h, 4w)`` float32
    low-resolution logits (on the decoder's device) and its predicted IoU."""

    logits: torch.Tensor
    score: float


class Decoder(ABC):
    """SAM's prompt encoder + mask decoder behind one call.

    Args:
        prompt_encoder, mask_decoder: SAM's modules (``segment_anything.modeling`` or
            LiteMedSAM's copy). The decoder holds these instances: one built for other modules
            does not follow a segmenter whose modules are replaced.
        model_id: the segmenter's (a decoder that caches files names them with it).
        device: where the modules run.

    Subclasses set ``kind`` (the registered name) and implement :meth:`decode`.
    """

    kind: ClassVar[str] = "decoder"

    def __init__(
        self,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        *,
        model_id: str,
        device: torch.device,
    ) -> None:
        self.prompt_encoder, self.mask_decoder = prompt_encoder, mask_decoder
        self.model_id, self.device = model_id, device

    @abstractmethod
    def decode(self, features: torch.Tensor, inputs: DecoderInputs) -> Decoded:
        """One request: ``features`` ``(1, C, h, w)`` (the image embedding) and its prompts."""

    def decode_batch(
        self, features: Sequence[torch.Tensor], inputs: Sequence[DecoderInputs]
    ) -> list[Decoded]:
        """Many requests, one per image: one :meth:`decode` each by default (on a CPU, a batched
        decoder is slower per item)."""
        return [self.decode(f, i) for f, i in zip(features, inputs, strict=True)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, device={str(self.device)!r})"


def keep_best(
    low_res: torch.Tensor, scores: torch.Tensor, multimask: bool, row: int = 0
) -> Decoded:
    """Row ``row`` of a decoder's ``(B, M, h, w)`` logits and ``(B, M)`` scores, as one
    :class:`Decoded`: the first mask, or with ``multimask`` the best-scored candidate.

    The kept logits are copied out of the batch, so holding them does not hold the batch."""
    best = int(scores[row].argmax()) if multimask else 0
    logits = low_res[row : row + 1, best : best + 1].float().clone()
    return Decoded(logits, float(scores[row, best]))


class EagerDecoder(Decoder):
    """The prompt encoder and mask decoder in PyTorch, on their device.

    ``decode_batch`` groups requests by prompt structure (the number of clicks, a box or not,
    a mask input or not, candidates or not); each group of two or more runs the prompt
    encoder once and the mask decoder once, with the image embeddings stacked along the
    batch (:func:`decode_batch`). A mask decoder without SAM's submodules (a replaced one) is
    called once per request instead.

    Equivalence: the batched decoder does the single call's arithmetic, but batched matrix
    products sum in another order, so the logits may differ from ``decode``'s in the last
    float bits (:data:`BATCH_LOGIT_ATOL`).
    """

    kind = "eager"

    def _dense_pe(self) -> torch.Tensor:
        # A method of SAM's PromptEncoder, which nn.Module.__getattr__ types as Tensor | Module.
        return cast(Callable[[], torch.Tensor], self.prompt_encoder.get_dense_pe)()

    @torch.inference_mode()
    def decode(self, features: torch.Tensor, inputs: DecoderInputs) -> Decoded:
        sparse, dense = self.prompt_encoder(
            points=inputs.points, boxes=inputs.boxes, masks=inputs.masks
        )
        low_res, scores = self.mask_decoder(
            image_embeddings=features.to(self.device),
            image_pe=self._dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=inputs.multimask,
        )
        return keep_best(low_res, scores, inputs.multimask)

    @torch.inference_mode()
    def decode_batch(
        self, features: Sequence[torch.Tensor], inputs: Sequence[DecoderInputs]
    ) -> list[Decoded]:
        if len(features) != len(inputs):
            raise ValueError(f"{len(features)} embeddings for {len(inputs)} requests")
        if not _has_sam_decoder_parts(self.mask_decoder):
            return super().decode_batch(features, inputs)
        groups: dict[tuple[int, bool, bool, bool], list[int]] = {}
        for index, item in enumerate(inputs):
            clicks = 0 if item.points is None else int(item.points[0].shape[1])
            key = (clicks, item.boxes is not None, item.masks is not None, item.multimask)
            groups.setdefault(key, []).append(index)
        results: list[Decoded | None] = [None] * len(inputs)
        for members in groups.values():
            if len(members) == 1:
                results[members[0]] = self.decode(features[members[0]], inputs[members[0]])
                continue
            group = [inputs[i] for i in members]
            first = group[0]
            points = None
            if first.points is not None:
                coords = _cat([None if g.points is None else g.points[0] for g in group])
                labels = _cat([None if g.points is None else g.points[1] for g in group])
                points = (coords, labels)
            boxes = None if first.boxes is None else _cat([g.boxes for g in group])
            masks = None if first.masks is None else _cat([g.masks for g in group])
            sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
            stacked = torch.cat([features[i] for i in members]).to(self.device)
            low_res, scores = decode_batch(
                self.mask_decoder, stacked, self._dense_pe(), sparse, dense, first.multimask
            )
            for row, index in enumerate(members):
                results[index] = keep_best(low_res, scores, first.multimask, row)
        return [result for result in results if result is not None]


BATCH_LOGIT_ATOL = 1e-3
"""How far ``EagerDecoder.decode_batch``'s logits may lie from ``decode``'s.

Batched matrix products sum in another order, so the logits are not bit-identical. Measured
with ``litemedsam_clicks`` on the bundled demo images, on a CPU (one thread), over boxes, clicks,
both, with and without the mask input and with candidates: at most 4.2e-5 (logits span about
±20), the masks identical (Dice 1.0) and the scores within 2e-7; and over 108 sub-env steps of
``tests/env/test_vector_env.py``'s scripts, the vector env's masks and rewards equal a single
env's exactly. The bound is over 20× the largest difference seen; that test checks it, and the
masks' Dice against the single calls' (at least 0.999).
"""


_DECODER_PARTS = (
    "transformer",
    "iou_token",
    "mask_tokens",
    "num_mask_tokens",
    "output_upscaling",
    "output_hypernetworks_mlps",
    "iou_prediction_head",
)


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor:
    """The rows of one group's inputs, which all have the part (the group key says so)."""
    present = [t for t in tensors if t is not None]
    assert len(present) == len(tensors)
    return torch.cat(present)


def _has_sam_decoder_parts(decoder: nn.Module) -> bool:
    return all(hasattr(decoder, part) for part in _DECODER_PARTS)


def decode_batch(
    decoder: nn.Module,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``MaskDecoder`` forward for ``B`` images with one prompt set each.

    ``MaskDecoder.predict_masks`` takes one image and ``B`` prompt sets (it repeats the image
    embedding ``B`` times), so this does its steps with the ``B`` embeddings instead: the same
    submodules (``transformer``, ``output_upscaling``, ``output_hypernetworks_mlps``,
    ``iou_prediction_head``) and the same arithmetic, row by row.

    Args:
        decoder: a ``segment_anything`` ``MaskDecoder`` (or LiteMedSAM's vendored copy).
        image_embeddings: ``(B, C, h, w)``, one image per row.
        image_pe: ``(1, C, h, w)``, the prompt encoder's ``get_dense_pe()``.
        sparse_prompt_embeddings: ``(B, N, C)``; dense_prompt_embeddings: ``(B, C, h, w)``.
        multimask: keep the 3 candidate masks (SAM's ``multimask_output``), else the first.

    Returns:
        ``(masks (B, M, 4h, 4w), iou predictions (B, M))``, ``M`` = 3 or 1.
    """
    sam = cast(Any, decoder)
    batch = sparse_prompt_embeddings.size(0)
    output_tokens = torch.cat([sam.iou_token.weight, sam.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
    src = image_embeddings + dense_prompt_embeddings
    pos_src = torch.repeat_interleave(image_pe, batch, dim=0)
    b, c, h, w = src.shape
    hs, src = sam.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + sam.num_mask_tokens), :]
    src = src.transpose(1, 2).view(b, c, h, w)
    upscaled = sam.output_upscaling(src)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(sam.output_hypernetworks_mlps)],
        dim=1,
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = sam.iou_prediction_head(iou_token_out)
    keep = slice(1, None) if multimask else slice(0, 1)
    return masks[:, keep, :, :], iou_pred[:, keep]


# --- the registry ------------------------------------------------------------------------------

DecoderFactory = Callable[..., Decoder]
"""``factory(prompt_encoder, mask_decoder, *, model_id, device) -> Decoder``."""

DECODERS: Registry[DecoderFactory] = Registry(
    "decoder", ENTRY_POINT_GROUP, callable_entries("decoder", "a callable factory")
)

AUTO = "auto"
"""The decoder name that picks ``"onnx"`` on the CPU and ``"eager"`` on other devices."""


def register_decoder(name: str, factory: DecoderFactory, *, overwrite: bool = False) -> None:
    """Make ``decoder=name`` build ``factory(prompt_encoder, mask_decoder, model_id=...,
    device=...)``; third-party packages can use the ``medseg_env.decoders`` entry-point group."""
    if name == AUTO:
        raise ValueError(f"decoder name {AUTO!r} is reserved (it picks onnx or eager)")
    DECODERS.register(name, factory, overwrite=overwrite)


def make_decoder(
    spec: str | Decoder,
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    *,
    model_id: str,
    device: torch.device,
) -> Decoder:
    """The decoder named ``spec`` over the modules (``"auto"``: ``"onnx"`` on the CPU, else
    ``"eager"``), or ``spec`` itself when it is a ``Decoder`` already.

    Raises:
        UnknownNameError: an unknown name (the message lists the registered ones).
        ValueError: the decoder cannot run on ``device`` (ONNX Runtime's CPU provider).
    """
    if isinstance(spec, Decoder):
        return spec
    if spec == AUTO:
        spec = "onnx" if device.type == "cpu" and "onnx" in DECODERS else "eager"
    return DECODERS.get(spec)(prompt_encoder, mask_decoder, model_id=model_id, device=device)

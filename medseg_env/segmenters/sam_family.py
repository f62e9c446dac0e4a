"""The encode / prompt / decode logic shared by SAM-style models (SAM, MedSAM, LiteMedSAM).

All of them resize the longest image side to ``input_size``, pad bottom/right to a square,
encode once, and decode prompts with SAM's prompt encoder and mask decoder into 256×256
low-resolution logits, which are cropped to the unpadded area and resized back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import LongestSide
from .base import Segmenter
from .cache import EmbeddingCache
from .types import Embedding, Prediction, PredictRequest, Prompts

Normalization = Literal["minmax", "imagenet"]
_IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
_IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` (or None) picks CUDA when present, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class SamFamilySegmenter(Segmenter):
    """A SAM-architecture segmenter built from its three modules.

    Args:
        image_encoder: maps ``(1, 3, S, S)`` to ``(1, C, S/16, S/16)`` (or similar).
        prompt_encoder, mask_decoder: SAM's modules (``segment_anything.modeling``).
        input_size: ``S``, the square side the encoder takes (256 LiteMedSAM, 1024 SAM).
        normalization: ``"minmax"`` to [0, 1] per image (MedSAM, LiteMedSAM) or
            ``"imagenet"`` mean/std on 0–255 values (SAM).
        use_mask_input: feed the previous turn's logits back as SAM's ``mask_input``.
        multimask_single_click: for a lone click with no box and no mask input, decode SAM's
            three candidate masks and keep the one with the best predicted IoU (SAM's advice
            for ambiguous prompts).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        *,
        input_size: int,
        normalization: Normalization,
        model_id: str,
        prompt_kinds: frozenset[str] = frozenset({"box", "point"}),
        use_mask_input: bool = True,
        multimask_single_click: bool = True,
        device: str | torch.device | None = "cpu",
        cache: EmbeddingCache | None = None,
    ) -> None:
        super().__init__(cache)
        if normalization not in ("minmax", "imagenet"):
            raise ValueError(f"normalization must be 'minmax' or 'imagenet'; got {normalization!r}")
        self.device = resolve_device(device)
        self.image_encoder = image_encoder.to(self.device).eval()
        self.prompt_encoder = prompt_encoder.to(self.device).eval()
        self.mask_decoder = mask_decoder.to(self.device).eval()
        self.input_size = int(input_size)
        self.normalization = normalization
        self.prompt_kinds = frozenset(prompt_kinds)
        self.use_mask_input = use_mask_input
        self.multimask_single_click = multimask_single_click
        self._model_id = model_id
        # What a cached embedding must look like to be fed to this decoder (see EmbeddingCache).
        sam_prompt_encoder = cast(Any, self.prompt_encoder)  # segment_anything's PromptEncoder
        height, width = sam_prompt_encoder.image_embedding_size
        self.features_spec = (
            (1, int(sam_prompt_encoder.embed_dim), int(height), int(width)),
            torch.float32,
        )

    @property
    def model_id(self) -> str:
        return self._model_id

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 → ``(1, 3, S, S)`` float32: resized, normalised, zero-padded."""
        height, width = image.shape[:2]
        new_h, new_w = LongestSide(height, width, self.input_size).resized_shape
        # A copy: torch cannot wrap the read-only arrays that datasets and the env hand out.
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float()
        if (new_h, new_w) != (height, width):
            x = F.interpolate(x, (new_h, new_w), mode="bilinear", antialias=True)
        if self.normalization == "minmax":
            lo, hi = x.min(), x.max()
            x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
        else:
            x = (x - _IMAGENET_MEAN) / _IMAGENET_STD
        x = F.pad(x, (0, self.input_size - new_w, 0, self.input_size - new_h))
        return x.to(self.device)

    @torch.inference_mode()
    def _encode(self, image: np.ndarray) -> Embedding:
        features = self.image_encoder(self.preprocess(image)).float().cpu()
        return Embedding(features, (int(image.shape[0]), int(image.shape[1])), self.model_id)

    def prompt_tensors(
        self, prompts: Prompts, image_size: tuple[int, int]
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """Pixel prompts → SAM's model-input coordinates (pixel indices at ``input_size``)."""
        frame = LongestSide(*image_size, self.input_size)
        points = None
        if len(prompts.points):
            # SAM adds 0.5 to reach a pixel centre; our coordinates are continuous already.
            coords = torch.as_tensor(frame.to_target(prompts.points) - 0.5, dtype=torch.float32)
            labels = torch.as_tensor(prompts.labels, dtype=torch.int64)
            points = (coords[None].to(self.device), labels[None].to(self.device))
        boxes = None
        if prompts.box is not None:
            boxes = torch.as_tensor(frame.to_target(prompts.box) - 0.5, dtype=torch.float32)
            boxes = boxes.view(1, 4).to(self.device)
        return points, boxes

    def _decoder_inputs(self, request: PredictRequest) -> _DecoderInputs:
        """Check one request and turn it into the prompt encoder's inputs (on ``device``)."""
        embedding, prompts, previous_logits, multimask = request
        self.check_call(embedding, prompts)
        points, boxes = self.prompt_tensors(prompts, embedding.image_size)
        masks = None
        if self.use_mask_input and previous_logits is not None:
            masks = previous_logits.to(self.device, torch.float32)
        multimask = multimask or (
            self.multimask_single_click
            and masks is None
            and boxes is None
            and points is not None
            and points[0].shape[1] == 1
        )
        return _DecoderInputs(points, boxes, masks, bool(multimask))

    @torch.inference_mode()
    def predict(
        self,
        embedding: Embedding,
        prompts: Prompts,
        previous_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> Prediction:
        inputs = self._decoder_inputs(
            PredictRequest(embedding, prompts, previous_logits, multimask)
        )
        sparse, dense = self.prompt_encoder(
            points=inputs.points, boxes=inputs.boxes, masks=inputs.masks
        )
        low_res, scores = self.mask_decoder(
            image_embeddings=embedding.features.to(self.device),
            image_pe=self._dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=inputs.multimask,
        )
        return self._prediction(low_res, scores, inputs.multimask, embedding.image_size)

    @torch.inference_mode()
    def predict_batch(self, requests: Sequence[PredictRequest]) -> list[Prediction]:
        """Decode many requests, on different images, with few model calls.

        Requests with the same prompt structure (the number of clicks, a box or not, a mask
        input or not, and whether candidates are decoded) form a group; each group of two or
        more runs the prompt encoder once and the mask decoder once, with the image embeddings
        stacked along the batch (:func:`decode_batch`), and a lone request runs ``predict``.
        Every request is checked before anything is decoded.

        Equivalence: the batched decoder does the single call's arithmetic, but batched
        matrix products and convolutions may sum in another order, so the logits may differ
        from ``predict``'s in the last float bits (:data:`BATCH_LOGIT_ATOL`); measured on the
        bundled data with ``litemedsam_clicks``, see ``tests/env/test_vector_env.py``.

        A decoder without SAM's submodules (a replaced or exported one) is called once per
        request instead.
        """
        requests = [PredictRequest(*request) for request in requests]
        inputs = [self._decoder_inputs(request) for request in requests]
        if not _has_sam_decoder_parts(self.mask_decoder):
            return [self.predict_request(request) for request in requests]
        groups: dict[tuple[int, bool, bool, bool], list[int]] = {}
        for index, item in enumerate(inputs):
            clicks = 0 if item.points is None else int(item.points[0].shape[1])
            key = (clicks, item.boxes is not None, item.masks is not None, item.multimask)
            groups.setdefault(key, []).append(index)
        results: list[Prediction | None] = [None] * len(requests)
        for members in groups.values():
            if len(members) == 1:
                results[members[0]] = self.predict_request(requests[members[0]])
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
            features = torch.cat([requests[i].embedding.features for i in members])
            low_res, scores = decode_batch(
                self.mask_decoder,
                features.to(self.device),
                self._dense_pe(),
                sparse,
                dense,
                multimask=first.multimask,
            )
            for row, index in enumerate(members):
                results[index] = self._prediction(
                    low_res[row : row + 1],
                    scores[row : row + 1],
                    first.multimask,
                    requests[index].embedding.image_size,
                    own_storage=True,
                )
        return [result for result in results if result is not None]

    def _dense_pe(self) -> torch.Tensor:
        # A method of SAM's PromptEncoder, which nn.Module.__getattr__ types as Tensor | Module.
        return cast(Callable[[], torch.Tensor], self.prompt_encoder.get_dense_pe)()

    def _prediction(
        self,
        low_res: torch.Tensor,
        scores: torch.Tensor,
        multimask: bool,
        image_size: tuple[int, int],
        own_storage: bool = False,
    ) -> Prediction:
        """One request's ``Prediction`` from the decoder's ``(1, M, h, w)`` logits and scores.

        ``own_storage``: copy the kept logits out of a batch's tensor, so that holding them
        does not hold the whole batch.
        """
        best = int(scores[0].argmax()) if multimask else 0
        low_res = low_res[:, best : best + 1].float()
        if own_storage:
            low_res = low_res.clone()
        score = float(scores[0, best])
        mask = self.upscale(low_res, image_size) > 0
        return Prediction(low_res.cpu(), mask[0, 0].cpu().numpy(), score)

    def upscale(self, low_res: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """``(B, 1, h, w)`` low-res logits → ``(B, 1, H, W)`` logits at the image's size."""
        height, width = image_size
        new_h, new_w = LongestSide(height, width, self.input_size).resized_shape
        x = low_res
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, (self.input_size, self.input_size), mode="bilinear")
        x = x[..., :new_h, :new_w]
        if (new_h, new_w) != (height, width):
            x = F.interpolate(x, (height, width), mode="bilinear")
        return x


BATCH_LOGIT_ATOL = 1e-3
"""How far ``SamFamilySegmenter.predict_batch``'s logits may lie from ``predict``'s.

Batched matrix products sum in another order, so the logits are not bit-identical. Measured
with ``litemedsam_clicks`` on the bundled demo images, on a CPU (one thread), over boxes, clicks,
both, with and without the mask input and with candidates: at most 4.2e-5 (logits span about
±20), the masks identical (Dice 1.0) and the scores within 2e-7; and over 108 sub-env steps of
``tests/env/test_vector_env.py``'s scripts, the vector env's masks and rewards equal a single
env's exactly. The bound is over 20× the largest difference seen; that test checks it, and the
masks' Dice against the single calls' (at least 0.999).
"""


class _DecoderInputs(NamedTuple):
    """One request as SAM's prompt encoder takes it (batch size 1, on the model's device)."""

    points: tuple[torch.Tensor, torch.Tensor] | None
    boxes: torch.Tensor | None
    masks: torch.Tensor | None
    multimask: bool


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

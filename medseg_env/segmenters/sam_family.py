"""The encode / prompt / decode logic shared by SAM-style models (SAM, MedSAM, LiteMedSAM).

All of them resize the longest image side to ``input_size``, pad bottom/right to a square,
encode once, and decode prompts with SAM's prompt encoder and mask decoder into 256×256
low-resolution logits, which are cropped to the unpadded area and resized back.

The decoding is a component (``decoders.py``): the segmenter checks a request and turns its
prompts into the model-input frame, and its ``decoder`` (``"eager"`` PyTorch, ``"onnx"`` ONNX
Runtime, or any registered ``Decoder``) runs the prompt encoder and mask decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import LongestSide
from .base import Segmenter
from .cache import EmbeddingCache
from .decoders import Decoded, Decoder, DecoderInputs, make_decoder
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
        decoder: what runs the prompt encoder and mask decoder: ``"eager"`` (PyTorch, on
            ``device``), ``"onnx"`` (ONNX Runtime, CPU only), ``"auto"`` (ONNX on the CPU, else
            eager), another registered name, or a ``Decoder`` built on these modules
            (``decoders.py``). Not part of ``model_id``: every decoder gives the same masks.
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
        decoder: str | Decoder = "eager",
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
        self.decoder: Decoder = self._make_decoder(decoder)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def runtime(self) -> dict[str, str]:
        return {"device": str(self.device), "decoder": self.decoder.kind}

    def _make_decoder(self, decoder: str | Decoder) -> Decoder:
        try:
            return make_decoder(
                decoder,
                self.prompt_encoder,
                self.mask_decoder,
                model_id=self.model_id,
                device=self.device,
            )
        except (KeyError, ValueError) as err:
            raise type(err)(f"{self.name}: option decoder: {err}") from None

    def use_decoder(self, decoder: str | Decoder) -> None:
        """Decode with ``decoder`` from now on (a name, as the ``decoder`` option, or a
        ``Decoder``); the embeddings and ``model_id`` stay."""
        self.decoder = self._make_decoder(decoder)

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

    def decoder_inputs(self, request: PredictRequest) -> DecoderInputs:
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
        return DecoderInputs(points, boxes, masks, bool(multimask))

    def predict(
        self,
        embedding: Embedding,
        prompts: Prompts,
        previous_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> Prediction:
        inputs = self.decoder_inputs(PredictRequest(embedding, prompts, previous_logits, multimask))
        decoded = self.decoder.decode(embedding.features, inputs)
        return self._prediction(decoded, embedding.image_size)

    def predict_batch(self, requests: Sequence[PredictRequest]) -> list[Prediction]:
        """Decode many requests, on different images, with the decoder's ``decode_batch``.

        Every request is checked before anything is decoded. The eager decoder runs each group
        of like-shaped requests as one forward (logits within ``BATCH_LOGIT_ATOL`` of single
        calls; see ``decoders.EagerDecoder``), the ONNX decoder one request at a time (on a
        CPU, a batched decoder is slower per item).
        """
        requests = [PredictRequest(*request) for request in requests]
        inputs = [self.decoder_inputs(request) for request in requests]
        features = [request.embedding.features for request in requests]
        decoded = self.decoder.decode_batch(features, inputs)
        return [
            self._prediction(d, r.embedding.image_size)
            for d, r in zip(decoded, requests, strict=True)
        ]

    @torch.inference_mode()
    def _prediction(self, decoded: Decoded, image_size: tuple[int, int]) -> Prediction:
        """A ``Prediction`` from the kept mask's low-resolution logits and score."""
        mask = self.upscale(decoded.logits, image_size) > 0
        return Prediction(decoded.logits.cpu(), mask[0, 0].cpu().numpy(), decoded.score)

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

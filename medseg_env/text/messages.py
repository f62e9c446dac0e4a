"""The conversation a text protocol shows its model: images and OpenAI-style chat messages.

One place for the MLLM view: the image the model sees each turn (the sample at its own
resolution, the current mask tinted on it, then the protocol's image rule) and the content
parts that carry it, as PIL images (``{"type": "image", "image": PIL.Image}``, what Hugging Face
processors and TRL take) or as data URLs (``{"type": "image_url", "image_url": {"url":
"data:image/png;base64,..."}}``, what OpenAI-compatible servers take).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..render import tint
from .protocol import ImageRule

ImageFormat = Literal["pil", "data_url"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("pil", "data_url")
Message = dict[str, Any]


_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def thumbnail_size(width: int, height: int, side: int) -> tuple[int, int]:
    """``(w, h)`` that PIL's ``Image.thumbnail((side, side))`` gives a ``width×height`` image.

    Pillow's rule: an image that fits already keeps its size (never enlarged); otherwise the
    side that limits is ``side`` and the other is the floor or the ceiling of the scaled
    length, whichever keeps the aspect ratio closer (at least 1).
    """
    if side >= width and side >= height:
        return width, height
    aspect = width / height

    def closest(value: float, error: Callable[[int], float]) -> int:
        return max(min(math.floor(value), math.ceil(value), key=error), 1)

    if aspect <= 1:
        return closest(side * aspect, lambda n: abs(aspect - n / side)), side
    return side, closest(side / aspect, lambda n: 0 if n == 0 else abs(aspect - side / n))


def _placement(width: int, height: int, rule: ImageRule) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where the image lands in the model's square: ``((w, h) after resize, (left, top))``."""
    side = rule.side
    if rule.mode == "stretch":
        return (side, side), (0, 0)
    if rule.mode == "thumbnail_white":
        size = thumbnail_size(width, height, side)
    else:
        scale = side / max(width, height)
        if scale < 1 or (scale > 1 and rule.upscale):
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
        else:
            size = (width, height)
    return size, ((side - size[0]) // 2, (side - size[1]) // 2)


def apply_image_rule(image: np.ndarray, rule: ImageRule) -> Image.Image:
    """``(H, W, 3)`` uint8 → the ``side``×``side`` RGB image the model sees.

    ``stretch``: resized to the square. ``letterbox_white``: scaled to fit the square with its
    aspect kept, centred on white (``rule.upscale`` False: a smaller image is only padded).
    ``thumbnail_white``: PIL's ``Image.thumbnail((side, side), filter)`` (never enlarges; its
    own rounding of the size and its two-step reduction, ``reducing_gap=2.0``), centred on
    white, as MedSAM-Agent's EVAL code makes its image
    (``infer/unibiomed_inference_toolusing.py`` lines 280-296).
    """
    pil = Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGB")
    size, offset = _placement(pil.size[0], pil.size[1], rule)
    if rule.mode == "thumbnail_white":
        pil = pil.copy()
        pil.thumbnail((rule.side, rule.side), _FILTERS[rule.resample])
    elif size != pil.size:
        pil = pil.resize(size, _FILTERS[rule.resample])
    if rule.mode == "stretch":
        return pil
    canvas = Image.new("RGB", (rule.side, rule.side), (255, 255, 255))
    canvas.paste(pil, offset)
    return canvas


def mask_in_view(mask: np.ndarray, rule: ImageRule) -> np.ndarray:
    """``(H, W)`` bool mask → where it is tinted in the model's square.

    ``rule.overlay_mask == "aligned"``: moved with the image (the image's geometry), resized
    bilinearly and thresholded at ``> 127``, as MedSAM-Agent's RL loop resizes its masks
    (``medsam_iterative_agent_loop.py`` lines 78-86); nothing outside the image content (the
    white padding) is masked. ``"stretched"``: the 0/255 mask resized to the whole
    ``side×side`` square with NEAREST and thresholded at ``> 128``, padding included, as
    MedSAM-Agent's EVAL code does (``infer/models/model_loader.py`` lines 1026-1029); on an
    image that does not fill the square it is not aligned with the image content.
    """
    height, width = mask.shape
    if rule.overlay_mask == "stretched":
        pil = Image.fromarray(np.asarray(mask, np.uint8) * np.uint8(255), "L")
        if (width, height) != (rule.side, rule.side):
            pil = pil.resize((rule.side, rule.side), Image.Resampling.NEAREST)
        return np.asarray(pil) > 128
    size, (left, top) = _placement(width, height, rule)
    pil = Image.fromarray(np.asarray(mask, np.uint8) * np.uint8(255), "L")
    if size != (width, height):
        pil = pil.resize(size, Image.Resampling.BILINEAR)
    out = np.zeros((rule.side, rule.side), bool)
    out[top : top + size[1], left : left + size[0]] = np.asarray(pil) > 127
    return out


def model_image(
    image: np.ndarray,
    mask: np.ndarray | None,
    rule: ImageRule,
    color: tuple[int, int, int] = (0, 255, 0),
    alpha: float = 0.5,
) -> Image.Image:
    """The image of one turn: the plain image (``mask`` None) or the mask tinted on it.

    ``image`` ``(H, W, 3)`` uint8 and ``mask`` ``(H, W)`` bool at the sample's resolution. The
    tint goes on before the resize when ``rule.tint_first`` (SegAgent), else on the resized
    image with the mask moved by the same geometry (MedSAM-Agent), so mask and image stay
    aligned whatever the aspect ratio (the released EVAL code stretches the mask over the
    padding: see the README's quirks).
    """
    if mask is None:
        return apply_image_rule(image, rule)
    if rule.tint_first:
        return apply_image_rule(tint(image, mask, color, alpha), rule)
    shown = np.asarray(apply_image_rule(image, rule))
    return Image.fromarray(tint(shown, mask_in_view(mask, rule), color, alpha), "RGB")


def to_data_url(image: Image.Image | np.ndarray) -> str:
    """A PNG data URL of an image (lossless, so a server sees exactly the pixels)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless; level 1 is ~10x faster
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def from_data_url(url: str) -> Image.Image:
    """The image of a ``data:image/...;base64,`` URL; a ``ValueError`` naming the problem."""
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise ValueError(f"not a base64 image data URL: {url[:40]!r}...")
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    image.load()
    return image.convert("RGB")


def image_part(image: Image.Image, images: ImageFormat) -> dict[str, Any]:
    """One image content part in the requested format."""
    if images == "pil":
        return {"type": "image", "image": image}
    return {"type": "image_url", "image_url": {"url": to_data_url(image)}}


def user_message(image: Image.Image, text: str, images: ImageFormat) -> Message:
    """A user turn: the image, then the text (the order MedSAM-Agent's code sends them in)."""
    return {"role": "user", "content": [image_part(image, images), {"type": "text", "text": text}]}


def convert_images(messages: Sequence[Mapping[str, Any]], images: ImageFormat) -> list[Message]:
    """The same messages with every image part in ``images`` format (new dicts; text shared)."""
    out: list[Message] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) or content is None:
            out.append(dict(message))
            continue
        parts = []
        for part in content:
            if part.get("type") == "image":
                parts.append(image_part(part["image"], images))
            elif part.get("type") == "image_url":
                url = part["image_url"]["url"]
                parts.append(image_part(from_data_url(url), images) if images == "pil" else part)
            else:
                parts.append(dict(part))
        out.append({**message, "content": parts})
    return out


def message_images(messages: Sequence[Mapping[str, Any]]) -> list[Image.Image]:
    """The PIL images of the messages, in order (for processors that take them apart)."""
    found: list[Image.Image] = []
    for message in convert_images(messages, "pil"):
        content = message.get("content")
        if isinstance(content, list):
            found.extend(p["image"] for p in content if p.get("type") == "image")
    return found

"""The ``Segmenter`` interface, the prompt types it takes, and the backend registry.

A segmenter turns an image into an embedding once (``encode``, cached), then turns prompts
plus the previous low-resolution logits into a new mask as often as the agent asks
(``predict``). Coordinates are continuous pixel coordinates of the image given to ``encode``:
x to the right, y down, pixel ``(row r, col c)`` covering ``[c, c+1) × [r, r+1)``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Literal

import numpy as np
import torch

from .cache import EmbeddingCache, default_cache, image_key

PromptKind = Literal["box", "point"]
ENTRY_POINT_GROUP = "medseg_env.segmenters"


class UnsupportedPromptError(ValueError):
    """Raised by ``predict`` for a prompt kind that the backend does not declare."""


@dataclass(frozen=True)
class Prompts:
    """All prompts of the current episode.

    Attributes:
        points: ``(N, 2)`` float ``(x, y)`` pixel coordinates.
        labels: ``(N,)`` int, 1 for a positive click, 0 for a negative one.
        box: ``(4,)`` float ``(x0, y0, x1, y1)`` pixel coordinates with ``x0 < x1, y0 < y1``,
            or ``None``.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box: np.ndarray | None = None

    @property
    def kinds(self) -> frozenset[str]:
        kinds = set()
        if len(self.points):
            kinds.add("point")
        if self.box is not None:
            kinds.add("box")
        return frozenset(kinds)

    def with_point(self, x: float, y: float, positive: bool) -> Prompts:
        points = np.concatenate([self.points, np.array([[x, y]], np.float32)])
        labels = np.concatenate([self.labels, np.array([int(positive)], np.int64)])
        return Prompts(points, labels, self.box)

    def with_box(self, box: np.ndarray) -> Prompts:
        return Prompts(self.points, self.labels, np.asarray(box, np.float32).reshape(4))


@dataclass(frozen=True, eq=False)
class Embedding:
    """An encoded image.

    Attributes:
        features: backend-specific tensor, for SAM-family models ``(1, C, h, w)`` float32.
        image_size: ``(H, W)`` of the image that was encoded.
        model_id: the segmenter that made it; an embedding is only valid for that model.
    """

    features: torch.Tensor
    image_size: tuple[int, int]
    model_id: str

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


@dataclass(frozen=True, eq=False)
class Prediction:
    """The result of one ``predict`` call.

    Attributes:
        logits: low-resolution logits to feed back as ``previous_logits`` on the next turn
            (SAM-family: ``(1, 1, 256, 256)`` float32).
        mask: ``(H, W)`` bool mask at the encoded image's size.
        score: the model's own quality estimate (predicted IoU for SAM-family models).
    """

    logits: torch.Tensor
    mask: np.ndarray
    score: float


class Segmenter(ABC):
    """Base class of every backend.

    Subclasses set ``name`` and ``prompt_kinds``, implement ``_encode`` and ``predict``, and
    get a byte-bounded embedding cache for free: a second ``encode`` of the same image
    content does not run the encoder (``encoder_calls`` counts the real runs).
    """

    name: str = "segmenter"
    prompt_kinds: frozenset[str] = frozenset()

    def __init__(self, cache: EmbeddingCache | None = None) -> None:
        self.cache = cache if cache is not None else default_cache()
        self.encoder_calls = 0
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """Names the model and its weights; part of every cache key."""
        return self.name

    def supports(self, kind: str) -> bool:
        return kind in self.prompt_kinds

    def encode(self, image: np.ndarray) -> Embedding:
        """Embed an ``(H, W, 3)`` uint8 image, from the cache when this content was seen."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: image must be (H, W, 3) uint8; got {image.shape} {image.dtype}"
            )
        key = image_key(image, self.model_id)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with self._lock:
            embedding = self._encode(image)
            self.encoder_calls += 1
        self.cache.put(key, embedding)
        return embedding

    def check_prompts(self, prompts: Prompts) -> None:
        unsupported = prompts.kinds - self.prompt_kinds
        if unsupported:
            raise UnsupportedPromptError(
                f"segmenter {self.name!r} takes {sorted(self.prompt_kinds)} prompts; "
                f"got {sorted(unsupported)}"
            )

    @abstractmethod
    def _encode(self, image: np.ndarray) -> Embedding:
        """Run the image encoder (uncached)."""

    @abstractmethod
    def predict(
        self,
        embedding: Embedding,
        prompts: Prompts,
        previous_logits: torch.Tensor | None = None,
    ) -> Prediction:
        """Turn prompts (and the previous turn's logits, when given) into a mask."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


SegmenterFactory = Callable[..., Segmenter]
_REGISTRY: dict[str, SegmenterFactory] = {}


def register_segmenter(name: str, factory: SegmenterFactory) -> None:
    """Make ``make_segmenter(name, **kwargs)`` call ``factory(**kwargs)``.

    Third-party packages can do the same without importing us, through the
    ``medseg_env.segmenters`` entry-point group (``name = "pkg.module:factory"``).
    """
    _REGISTRY[name] = factory


def registered_segmenters() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def make_segmenter(spec: str | Segmenter, **kwargs) -> Segmenter:
    """A segmenter from a registered name, or ``spec`` itself when it already is one."""
    if isinstance(spec, Segmenter):
        if kwargs:
            raise ValueError("segmenter options apply only when the segmenter is given by name")
        return spec
    _load_entry_points()
    if spec not in _REGISTRY:
        raise ValueError(f"unknown segmenter {spec!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[spec](**kwargs)


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()

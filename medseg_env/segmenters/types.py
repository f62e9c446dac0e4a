"""The values a segmenter takes and returns: prompts, embeddings, predictions.

They sit below ``base.py`` (the ``Segmenter`` interface) and ``cache.py`` (the embedding
cache), which both use them, so neither has to import the other for its types.
Coordinates are continuous pixel coordinates of the image given to ``encode``: x to the right,
y down, pixel ``(row r, col c)`` covering ``[c, c+1) × [r, r+1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch

PromptKind = Literal["box", "point"]


class UnsupportedPromptError(ValueError):
    """Raised by ``predict`` for a prompt kind that the backend does not declare."""


@dataclass(frozen=True)
class Prompts:
    """All prompts of the current episode.

    Attributes:
        points: ``(N, 2)`` float ``(x, y)`` pixel coordinates.
        labels: ``(N,)`` int, 1 for a positive click, 0 for a negative one.
        box: ``(4,)`` float ``(x0, y0, x1, y1)`` pixel coordinates, or ``None``: the first
            corner, then the second; ``x0 <= x1, y0 <= y1`` unless the env passes corners as
            given (``MedSegEnv(sort_box_corners=False)``), which a backend that needs them in
            order sorts itself.
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


class PredictRequest(NamedTuple):
    """The arguments of one ``Segmenter.predict`` call, as a value (``predict_batch`` takes a list).

    Attributes:
        embedding: the encoded image the prompts are on.
        prompts: the prompts, in the embedding's image pixel coordinates.
        previous_logits: the previous turn's ``Prediction.logits``, or ``None``.
        multimask: decode the candidate masks and keep the best (see ``Segmenter.predict``).
    """

    embedding: Embedding
    prompts: Prompts
    previous_logits: torch.Tensor | None = None
    multimask: bool = False

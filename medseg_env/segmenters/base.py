"""The ``Segmenter`` interface and the backend registry.

A segmenter turns an image into an embedding once (``encode``, cached), then turns prompts
plus the previous low-resolution logits into a new mask as often as the agent asks
(``predict``), or several such calls at once, on different images (``predict_batch``). The
values it takes and returns live in ``types.py``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..registry import Registry, callable_entries
from .cache import EmbeddingCache, default_cache, image_key
from .types import Embedding, Prediction, PredictRequest, Prompts, UnsupportedPromptError

ENTRY_POINT_GROUP = "medseg_env.segmenters"


class Segmenter(ABC):
    """Base class of every backend.

    Subclasses set ``name`` and ``prompt_kinds``, implement ``_encode`` and ``predict``, and
    get a byte-bounded embedding cache for free: a second ``encode`` of the same image
    content does not run the encoder (``encoder_calls`` counts the real runs).
    """

    name: str = "segmenter"
    prompt_kinds: frozenset[str] = frozenset()
    #: ``(shape, dtype)`` of every ``Embedding.features`` this model makes, when fixed; the
    #: cache treats a stored embedding that differs as a miss. ``None``: not checked.
    features_spec: tuple[tuple[int, ...], torch.dtype] | None = None

    def __init__(self, cache: EmbeddingCache | None = None) -> None:
        self.cache = cache if cache is not None else default_cache()
        self.encoder_calls = 0
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """Names the model and its weights; part of every cache key."""
        return self.name

    @property
    def runtime(self) -> dict[str, str]:
        """How this instance computes, beyond the weights that ``model_id`` names: e.g.
        ``{"device": "cpu", "decoder": "onnx"}`` for a SAM-family backend. Not part of any
        cache key: it says which code ran the model, not which model ran (the decoders give the
        same masks). The benchmark records it in ``results.json``. Empty by default."""
        return {}

    @property
    def mask_input_shape(self) -> tuple[int, int] | None:
        """``(h, w)`` of every ``Prediction.logits`` (``(1, 1, h, w)``), which ``predict`` takes
        back as ``previous_logits``; None where it is not fixed.

        By default the prompt encoder's ``mask_input_size`` of SAM-style backends (256×256);
        other backends override it.
        """
        size = getattr(getattr(self, "prompt_encoder", None), "mask_input_size", None)
        return None if size is None else (int(size[0]), int(size[1]))

    def supports(self, kind: str) -> bool:
        return kind in self.prompt_kinds

    def encode(self, image: np.ndarray) -> Embedding:
        """Embed an ``(H, W, 3)`` uint8 image, from the cache when this content was seen."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: image must be (H, W, 3) uint8; got {image.shape} {image.dtype}"
            )
        key = image_key(image, self.model_id)
        size = (int(image.shape[0]), int(image.shape[1]))
        # A stored entry for another model, image size or feature shape is a miss (and is
        # then replaced), never a crash in predict.
        cached = self.cache.get(
            key, model_id=self.model_id, image_size=size, features=self.features_spec
        )
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

    def check_call(self, embedding: Embedding, prompts: Prompts) -> None:
        """What every ``predict`` checks first: the prompt kinds are this backend's, and the
        embedding is this model's (another model's features would decode to garbage)."""
        self.check_prompts(prompts)
        if embedding.model_id != self.model_id:
            raise ValueError(
                f"embedding was made by {embedding.model_id!r}, not by {self.model_id!r}"
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
        multimask: bool = False,
    ) -> Prediction:
        """Turn prompts (and the previous turn's logits, when given) into a mask.

        ``multimask``: decode the model's candidate masks and keep the one it scores best
        (SAM's ``multimask_output``); a backend with a single output ignores it.
        """

    def predict_request(self, request: PredictRequest) -> Prediction:
        """``predict`` with the arguments of ``request``.

        ``multimask`` is passed (by keyword) only when it is set, as ``MedSegEnv`` has always
        called ``predict``, so a subclass whose ``predict`` override predates the argument works.
        """
        embedding, prompts, previous_logits, multimask = request
        if multimask:
            return self.predict(embedding, prompts, previous_logits, multimask=True)
        return self.predict(embedding, prompts, previous_logits)

    def predict_batch(self, requests: Sequence[PredictRequest]) -> list[Prediction]:
        """Several ``predict`` calls at once: one ``Prediction`` per request, in order.

        Each request is a ``PredictRequest`` (or a plain ``(embedding, prompts,
        previous_logits, multimask)`` tuple); requests may be on different images, with
        different prompts. This default calls :meth:`predict_request` for each one, so it is
        right for every backend; a backend whose model can decode a batch overrides it
        (``SamFamilySegmenter``: one decoder call per group of like-shaped prompts), and its
        results equal the single calls' within the tolerance it documents.

        Raises what ``predict`` raises for any request; then no result is returned.
        """
        return [self.predict_request(PredictRequest(*request)) for request in requests]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


SegmenterFactory = Callable[..., Segmenter]


SEGMENTERS: Registry[SegmenterFactory] = Registry(
    "segmenter", ENTRY_POINT_GROUP, callable_entries("segmenter", "a callable factory")
)


def register_segmenter(name: str, factory: SegmenterFactory, *, overwrite: bool = False) -> None:
    """Make ``make_segmenter(name, **kwargs)`` call ``factory(**kwargs)``.

    Third-party packages can do the same without importing us, through the
    ``medseg_env.segmenters`` entry-point group (``name = "pkg.module:factory"``).
    """
    SEGMENTERS.register(name, factory, overwrite=overwrite)


def registered_segmenters() -> list[str]:
    """Registered segmenter names, in registration order."""
    return SEGMENTERS.names()


def make_segmenter(spec: str | Segmenter, **kwargs) -> Segmenter:
    """A segmenter from a registered name, or ``spec`` itself when it already is one."""
    if isinstance(spec, Segmenter):
        if kwargs:
            raise ValueError("segmenter options apply only when the segmenter is given by name")
        return spec
    return SEGMENTERS.get(spec)(**kwargs)

"""One segmenter per spec and process: the cache every multi-episode runner shares.

The benchmark, the SFT export and the TRL and verl adapters each play many episodes, often in
many envs at once; building a segmenter per env would load its weights each time. They all
ask :func:`shared_segmenter` instead, so a spec's model is built once per process.

Sharing is safe: ``predict`` keeps no state between calls, and embeddings are cached by image
content and model id anyway.
"""

from __future__ import annotations

import json
from typing import Any

from ..registry import parse_spec
from .base import Segmenter, make_segmenter

_SHARED: dict[str, Segmenter] = {}


def _key(name: str, options: dict[str, Any]) -> str:
    try:
        return json.dumps([name, options], sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"segmenter {name!r}: a shared segmenter's options must be JSON values ({err})"
        ) from None


def shared_segmenter(spec: str | Segmenter, **options: Any) -> Segmenter:
    """The process's segmenter of ``spec``, built on first use.

    Args:
        spec: a registered name, or ``name:key=value,...`` with the backend's options
            (``medsam2:checkpoint=/w/MedSAM2.pt``; parsed by ``medseg_env.registry.parse_spec``),
            or a ``Segmenter``, returned as it is.
        options: more backend options (JSON values), merged over the spec's own; the same
            name and options give the same instance however they are spelt
            (``"litemedsam:decoder=onnx"`` and ``("litemedsam", decoder="onnx")``).

    Raises:
        ValueError: a malformed spec, options given with a ``Segmenter`` instance, or options
            that are not JSON values.
        UnknownNameError: an unknown segmenter name (the message lists the registered ones).
    """
    if isinstance(spec, Segmenter):
        return make_segmenter(spec, **options)
    name, kwargs = parse_spec(spec, "segmenter")
    kwargs.update(options)
    key = _key(name, kwargs)
    if key not in _SHARED:
        _SHARED[key] = make_segmenter(name, **kwargs)
    return _SHARED[key]

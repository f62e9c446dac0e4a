"""The env options every trainer adapter builds its text envs with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medseg_env.env import default_config
from medseg_env.segmenters import shared_segmenter


def with_shared_segmenter(options: Mapping[str, Any]) -> dict[str, Any]:
    """``MedSegEnv`` options whose segmenter is the process's shared instance.

    ``segmenter`` (a name, a ``name:key=value`` spec or a ``Segmenter``; the env's default when
    absent) and ``segmenter_kwargs`` become one ``medseg_env.segmenters.shared_segmenter``, so
    the many envs of a trainer's concurrent rollouts load the weights once.
    """
    out = dict(options)
    spec = out.get("segmenter", default_config()["segmenter"])
    out["segmenter"] = shared_segmenter(spec, **dict(out.pop("segmenter_kwargs", None) or {}))
    return out

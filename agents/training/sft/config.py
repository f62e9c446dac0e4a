"""``ExportConfig``: everything that decides an SFT export's trajectories, and its errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medseg_env.data import split
from medseg_env.env import default_config
from medseg_env.prompting import prompting_rule_names
from medseg_env.registry import parse_spec
from medseg_env.segmenters import SEGMENTERS
from medseg_env.text import registered_protocols
from medseg_env.wrappers.text_env import DEFAULT_TARGET_TEMPLATE

STYLES = ("box", "click")
SPLITS = ("train", "val", "all")
SPLIT_BY = split.SPLIT_BY
_ENV_DEFAULTS = default_config()


class ExportError(ValueError):
    """Bad export input (an unknown name, a held-out dataset, a folder of another export...).

    The CLI prints the message and exits with status 2; nothing has been written.
    """


class ReplayCheckError(RuntimeError):
    """Exported trajectories that do not replay to their recorded masks (or rows, or images)."""


@dataclass(frozen=True)
class ExportConfig:
    """Everything that decides the exported trajectories (hashed into the default folder).

    Attributes:
        dataset: a dataset name or path (``medseg_env.data.load_dataset``); never a held-out
            one (``Dataset.heldout``).
        split: ``"train"``, ``"val"`` or ``"all"`` (see ``medseg_agents.training.sft``).
        val_fraction: the share of samples the ``val`` side aims at, in (0, 1).
        split_by: ``"image"`` or ``"source"``, the groups the split keeps whole.
        split_seed: seeds the split (independent of ``seed``).
        protocol: a registered text protocol.
        target_template: turn 1's target text (``MedSegTextEnv.target_template``).
        segmenter: a registered segmenter, or a ``name:key=value`` spec.
        prompting: the env's segmenter call (``MedSegEnv`` ``prompting``); ``""``: the
            protocol's own (``Protocol.segmenter_call``, what its model is scored with).
        obs_size: the env's canvas side, pixels.
        seed: seeds every trajectory (jitter, click draws, style).
        mix: ``((style, weight), ...)``: the share of each style (``box``, ``click``).
        per_sample: trajectories per sample (each with its own seed and style).
        tau: minimum IoU gain of a kept corrective action.
        target_iou: the expert stops at this IoU.
        resamples: candidates per turn before the expert gives up and stops.
        box_jitter: the first box's side jitter, as a fraction of the box size.
    """

    dataset: str = "demo"
    split: str = "train"
    val_fraction: float = 0.2
    split_by: str = "image"
    split_seed: int = 0
    protocol: str = "medsam_agent"
    target_template: str = DEFAULT_TARGET_TEMPLATE
    segmenter: str = str(_ENV_DEFAULTS["segmenter"])
    prompting: str = ""
    obs_size: int = int(_ENV_DEFAULTS["obs_size"])
    seed: int = 0
    mix: tuple[tuple[str, float], ...] = (("box", 0.7), ("click", 0.3))
    per_sample: int = 1
    tau: float = 0.01
    target_iou: float = 0.9
    resamples: int = 5
    box_jitter: float = 0.1

    def __post_init__(self) -> None:
        mix = tuple((str(s), float(w)) for s, w in self.mix)
        object.__setattr__(self, "mix", mix)
        for name in ("val_fraction", "tau", "target_iou", "box_jitter"):
            object.__setattr__(self, name, float(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise ``ExportError`` for values that can never work."""
        if self.split not in SPLITS:
            raise ExportError(f"split must be one of {SPLITS}; got {self.split!r}")
        if self.split_by not in SPLIT_BY:
            raise ExportError(f"split_by must be one of {SPLIT_BY}; got {self.split_by!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ExportError(f"val_fraction must be in (0, 1); got {self.val_fraction}")
        if self.protocol not in registered_protocols():
            raise ExportError(
                f"unknown protocol {self.protocol!r}; known: {registered_protocols()}"
            )
        if self.prompting and self.prompting not in prompting_rule_names():
            raise ExportError(
                f"prompting must be one of {prompting_rule_names()}; got {self.prompting!r}"
            )
        check_segmenter_spec(self.segmenter)
        try:
            self.target_template.format(target="tumour", modality="CT")
        except (KeyError, IndexError, ValueError) as err:
            raise ExportError(
                f"target template {self.target_template!r} may only name {{target}} and "
                f"{{modality}} ({err!r})"
            ) from None
        self._validate_expert()

    def _validate_expert(self) -> None:
        if not self.mix:
            raise ExportError("mix must name at least one style")
        styles = [s for s, _ in self.mix]
        if len(set(styles)) != len(styles) or not set(styles) <= set(STYLES):
            raise ExportError(f"mix styles must be distinct, among {STYLES}; got {styles}")
        weights = [w for _, w in self.mix]
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ExportError(f"mix weights must be >= 0 with a positive sum; got {weights}")
        for name, minimum in (("per_sample", 1), ("resamples", 1), ("obs_size", 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ExportError(f"{name} must be an integer >= {minimum}; got {value!r}")
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise ExportError(f"tau must be >= 0; got {self.tau}")
        if not 0.0 < self.target_iou <= 1.0:
            raise ExportError(f"target_iou must be in (0, 1]; got {self.target_iou}")
        if not (math.isfinite(self.box_jitter) and self.box_jitter >= 0):
            raise ExportError(f"box_jitter must be >= 0; got {self.box_jitter}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mix"] = {s: w for s, w in self.mix}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ExportError(f"unknown export config key(s) {unknown}")
        values = dict(data)
        if "mix" in values:
            values["mix"] = tuple(dict(values["mix"]).items())
        return cls(**values)

    def hash(self) -> str:
        """12 hex digits of the SHA-256 of the canonical JSON."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def check_segmenter_spec(spec: str) -> str:
    """The registered name of a segmenter spec (``"medsam2:checkpoint=/w/MedSAM2.pt"``)."""
    try:
        name, _ = parse_spec(spec, "segmenter")
    except ValueError as err:
        raise ExportError(str(err)) from None
    if name not in SEGMENTERS:
        raise ExportError(f"unknown segmenter {name!r}; known: {SEGMENTERS.names()}")
    return name


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``"box=0.7,click=0.3"`` -> ``(("box", 0.7), ("click", 0.3))``; a bare style weighs 1."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        style, sep, weight = item.partition("=")
        try:
            out.append((style.strip(), float(weight) if sep else 1.0))
        except ValueError:
            raise ExportError(f"--mix takes STYLE=WEIGHT,...; got {text!r}") from None
    return tuple(out)

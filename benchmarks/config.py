"""``BenchConfig``: everything that decides a benchmark's episodes, hashable and serialisable.

A config names policies, datasets and segmenters by string, so that it can be written to
``config.json``, compared with the config of an earlier run in the same folder (resume), and
hashed into the default output folder name. Names are resolved into objects by the runner.

Policy specs are a registered name (``"ritm"``) optionally followed by constructor options,
``"ritm:first_box=true"`` or ``"oracle_box:jitter_px=5,jitter_frac=0.1"``; values are read as
JSON (``true``, ``5``, ``0.1``) and otherwise kept as strings. The whole spec is the policy's
label in every table, so two variants of one policy can be benchmarked side by side.

Turn budget: ``budget`` (default 20, the NoC@k convention of RITM / SimpleClick) applies to
every policy, so that NoC and the Dice-vs-turn area are comparable across rows; policies that
stop by themselves (``oracle_box``: box, then stop) simply end early and cost nothing more.
``policy_budgets`` overrides it per policy spec (``{"oracle_box": 2}``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medseg_env import registry
from medseg_env.env import default_config
from medseg_env.files import default_folder
from medseg_env.metrics import NSD_TOLERANCE_MM
from medseg_env.seeding import stable_int
from medseg_env.segmenters import SEGMENTERS

_ENV_DEFAULTS = default_config()
DEFAULT_BUDGET = 20
# The bundled held-out split: cases the default click-tuned model never trained on.
DEFAULT_DATASETS = ("demo-heldout",)
DEFAULT_SEGMENTERS = (_ENV_DEFAULTS["segmenter"],)  # the env's default backend
DEFAULT_OBS_SIZE: int = _ENV_DEFAULTS["obs_size"]
SUBSET_MODES = ("random", "first")
OUT_DIR_ENV = "MEDSEG_BENCH_DIR"


class BenchError(ValueError):
    """Bad benchmark input (unknown name, empty dataset, a folder of another config...).

    The CLI prints the message and exits with status 2; nothing has been written.
    """


@dataclass(frozen=True)
class BenchConfig:
    """The inputs of a benchmark run.

    Attributes:
        policies: policy specs (see the module docstring); empty = every registered policy,
            in registration order.
        datasets: dataset names or paths, as ``medseg_env.data.load_dataset`` takes them.
        segmenters: registered segmenter names.
        budget: maximum turns per episode (the env's ``max_turns``), for every policy.
        policy_budgets: per-policy-spec overrides of ``budget``.
        seed: seeds the sample subset and every episode (see ``episode_seed``).
        limit: at most this many samples per dataset (None: all of them).
        subset: how a limited dataset is cut: ``"random"`` (a seeded random subset, kept in
            dataset order) or ``"first"`` (the first ``limit`` samples).
        obs_size: side of the square observation canvas, pixels.
        nsd_tolerance_mm: tolerance of the normalised surface Dice, millimetres.
        target_hint: the env's ``target_hint`` option (on by default, as in ``MedSeg-v0``):
            observations carry the point where the user says which object to segment, which
            the GT-free and learned policies read; oracle policies play as without it.
        hint_noise: the env's ``hint_noise`` option: 0 hints the target's innermost pixel;
            above 0, a realistic off-centre user point drawn per episode (seeded).
    """

    policies: tuple[str, ...] = ()
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    segmenters: tuple[str, ...] = DEFAULT_SEGMENTERS
    budget: int = DEFAULT_BUDGET
    policy_budgets: Mapping[str, int] = field(default_factory=dict)
    seed: int = 0
    limit: int | None = None
    subset: str = "random"
    obs_size: int = DEFAULT_OBS_SIZE
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM
    target_hint: bool = True
    hint_noise: float = 0.0

    def __post_init__(self) -> None:
        # Normalise containers so that equal configs compare, serialise and hash equally.
        for name in ("policies", "datasets", "segmenters"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(str(v) for v in value))
        budgets = {str(k): int(v) for k, v in dict(self.policy_budgets).items()}
        object.__setattr__(self, "policy_budgets", dict(sorted(budgets.items())))
        object.__setattr__(self, "nsd_tolerance_mm", float(self.nsd_tolerance_mm))
        if not isinstance(self.target_hint, bool):
            raise BenchError(f"target_hint must be true or false; got {self.target_hint!r}")
        object.__setattr__(self, "hint_noise", float(self.hint_noise))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for values that can never work (names are checked later)."""
        for name in ("datasets", "segmenters"):
            if not getattr(self, name):
                raise BenchError(f"{name} must name at least one entry")
            _no_duplicates(name, getattr(self, name))
        _no_duplicates("policies", self.policies)
        for spec in self.policies:
            parse_policy_spec(spec)
        for label, value in [("budget", self.budget), *self.policy_budgets.items()]:
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise BenchError(f"budget of {label!r} must be an integer >= 1; got {value!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise BenchError(f"limit must be an integer >= 1 or None; got {self.limit!r}")
        if self.subset not in SUBSET_MODES:
            raise BenchError(f"subset must be one of {SUBSET_MODES}; got {self.subset!r}")
        if self.obs_size < 16:
            raise BenchError(f"obs_size must be at least 16; got {self.obs_size}")
        if not (0 <= self.hint_noise < float("inf")):
            raise BenchError(f"hint_noise must be a finite number >= 0; got {self.hint_noise}")
        if self.hint_noise > 0 and not self.target_hint:
            raise BenchError("hint_noise needs target_hint: without a hint there is no point")
        if not self.nsd_tolerance_mm >= 0:
            raise BenchError(f"nsd_tolerance_mm must be >= 0; got {self.nsd_tolerance_mm}")

    def budget_for(self, policy: str) -> int:
        """The turn budget of one policy spec."""
        return int(self.policy_budgets.get(policy, self.budget))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists for tuples); ``from_dict`` inverts it."""
        out = asdict(self)
        for name in ("policies", "datasets", "segmenters"):
            out[name] = list(out[name])
        out["policy_budgets"] = dict(self.policy_budgets)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BenchError(f"unknown config key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def canonical_json(self) -> str:
        data = self.to_dict()
        # Keys added after the first release are left out at their defaults, so the configs
        # (and result folders) of earlier runs keep their hashes.
        for key, default in _LATER_KEYS.items():
            if data[key] == default:
                del data[key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """12 hex digits of the SHA-256 of the canonical JSON: stable across processes."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    def diff(self, other: BenchConfig) -> list[str]:
        """Keys whose values differ, each as ``"key: this != other"``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in sorted(mine) if mine[k] != theirs[k]]


# Each at the value every run had before the key existed (target_hint was off by default).
_LATER_KEYS: dict[str, Any] = {"target_hint": False, "hint_noise": 0.0}


def _no_duplicates(name: str, values: Sequence[str]) -> None:
    seen = sorted({v for v in values if list(values).count(v) > 1})
    if seen:
        raise BenchError(f"{name} lists {seen} more than once")


def parse_spec(spec: str, kind: str = "policy") -> tuple[str, dict[str, Any]]:
    """``"name:k=v,k2=v2"`` -> ``("name", {"k": v, "k2": v2})`` (``medseg_env.registry``'s
    parser, its errors as ``BenchError``): the form of both policy and segmenter specs."""
    try:
        return registry.parse_spec(spec, kind)
    except ValueError as err:
        raise BenchError(str(err)) from None


def parse_policy_spec(spec: str) -> tuple[str, dict[str, Any]]:
    return parse_spec(spec, "policy")


def check_segmenter_spec(spec: str) -> str:
    """The registered name of a segmenter spec (``"medsam2:checkpoint=/w/MedSAM2.pt"``)."""
    name, _ = parse_spec(spec, "segmenter")
    if name not in SEGMENTERS:
        raise BenchError(f"unknown segmenter {name!r}; known: {SEGMENTERS.names()}")
    return name


def episode_seed(seed: int, policy: str, dataset: str, segmenter: str, sample_id: str) -> int:
    """The seed of one episode: independent of which other episodes run, and in what order."""
    return stable_int("episode", seed, policy, dataset, segmenter, sample_id)


def default_out_dir(config: BenchConfig, models: Mapping[str, str] | None = None) -> Path:
    """``$MEDSEG_BENCH_DIR/<name>``, else ``${XDG_CACHE_HOME:-~/.cache}/medseg-env/bench/<name>``.

    ``<name>`` is the config hash, followed by ``-<8 hex>`` of the segmenters' ``model_id``s
    when ``models`` is given, so that new weights under the same segmenter name (an upgrade)
    get a new folder instead of a refused resume. Never the current directory.
    """
    name = config.hash()
    if models:
        blob = json.dumps(dict(sorted(models.items())), separators=(",", ":")).encode()
        name += "-" + hashlib.sha256(blob).hexdigest()[:8]
    return default_folder("bench", OUT_DIR_ENV) / name

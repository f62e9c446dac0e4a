"""Planning a benchmark: resolve names, load and subset the data, list every episode.

Nothing here writes anything, so bad input is refused before an output folder is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medseg_agents import POLICIES, Policy, default_policies, make_policy
from medseg_env.data import Dataset, data_fingerprint, load_dataset
from medseg_env.seeding import stable_int

from .config import (
    BenchConfig,
    BenchError,
    check_segmenter_spec,
    episode_seed,
    parse_policy_spec,
)
from .records import EpisodeKey

PolicySource = Policy | Callable[[], Policy]  # a policy, or a zero-argument factory of one


@dataclass(frozen=True)
class EpisodeSpec:
    """One planned episode; ``sample_index`` indexes the full dataset."""

    policy: str
    dataset: str
    segmenter: str
    sample_index: int
    sample_id: str
    seed: int
    budget: int

    @property
    def key(self) -> EpisodeKey:
        return (self.policy, self.dataset, self.segmenter, self.sample_id)


@dataclass
class Plan:
    """A resolved config, its loaded data and built policies, and every episode in report order."""

    config: BenchConfig
    datasets: dict[str, Dataset]
    selected: dict[str, list[int]]
    episodes: list[EpisodeSpec]
    policies: dict[str, Policy] = field(default_factory=dict)

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        return {
            spec: data_fingerprint(self.datasets[spec], self.selected[spec])
            for spec in self.config.datasets
        }


def known_policies(extra: Iterable[str] = ()) -> list[str]:
    """Registered policy names in registration order (the table order), then injected ones."""
    names = POLICIES.names()
    return names + [n for n in extra if n not in names]


def default_policy_specs(extra: Iterable[str] = ()) -> list[str]:
    """What runs when no policy is named: every policy that builds without options."""
    names = default_policies()
    return names + [n for n in extra if n not in names]


def resolve_config(
    config: BenchConfig, policies: Mapping[str, PolicySource] | None = None
) -> BenchConfig:
    """Fill an empty policy list with every known policy and check every policy name.

    ``policies`` are injected policies (by label), known in addition to the registry.
    """
    injected = dict(policies or {})
    known = known_policies(injected)
    specs = config.policies or tuple(default_policy_specs(injected))
    if not specs:
        raise BenchError("no policy to benchmark: no policy is registered")
    for spec in specs:
        name, _ = parse_policy_spec(spec)
        if spec not in injected and name not in POLICIES:
            raise BenchError(f"unknown policy {name!r}; known: {known}")
    for segmenter in config.segmenters:
        check_segmenter_spec(segmenter)
    for label in config.policy_budgets:
        if label not in specs:
            raise BenchError(f"a budget is given for {label!r}, which is not among the policies")
    return replace(config, policies=tuple(specs))


def load_datasets(
    config: BenchConfig, datasets: Mapping[str, Dataset] | None = None
) -> dict[str, Dataset]:
    """Load every dataset of the config (injected ``datasets`` are used by name first)."""
    out = {}
    for spec in config.datasets:
        if datasets and spec in datasets:
            out[spec] = datasets[spec]
            continue
        try:
            out[spec] = load_dataset(spec)
        except (ValueError, FileNotFoundError, OSError) as err:
            # load_dataset's message lists the registered names for an unknown one.
            raise BenchError(f"dataset {spec!r}: {err}") from err
        if len(out[spec]) == 0:  # Dataset refuses this itself; belt and braces
            raise BenchError(f"dataset {spec!r} has no samples")
    return out


def select_samples(dataset: Dataset, spec: str, config: BenchConfig) -> list[int]:
    """Indices of the samples to run, in dataset order.

    No limit, or a limit >= the dataset: all. ``subset="first"``: the first ``limit``.
    ``subset="random"``: ``limit`` indices drawn without replacement by a generator seeded from
    (seed, dataset spec) only, so every policy and segmenter sees the same samples.
    """
    n = len(dataset)
    if config.limit is None or config.limit >= n:
        return list(range(n))
    if config.subset == "first":
        return list(range(config.limit))
    rng = np.random.default_rng(stable_int("subset", config.seed, spec))
    return sorted(int(i) for i in rng.choice(n, size=config.limit, replace=False))


def make_plan(
    config: BenchConfig,
    policies: Mapping[str, PolicySource] | None = None,
    datasets: Mapping[str, Dataset] | None = None,
) -> Plan:
    """Resolve names, load data and list every episode. Writes nothing."""
    config = resolve_config(config, policies)
    loaded = load_datasets(config, datasets)
    selected = {spec: select_samples(ds, spec, config) for spec, ds in loaded.items()}
    episodes = [
        EpisodeSpec(
            policy=policy,
            dataset=spec,
            segmenter=segmenter,
            sample_index=i,
            sample_id=loaded[spec][i].sample_id,
            seed=episode_seed(config.seed, policy, spec, segmenter, loaded[spec][i].sample_id),
            budget=config.budget_for(policy),
        )
        for policy in config.policies
        for spec in config.datasets
        for segmenter in config.segmenters
        for i in selected[spec]
    ]
    built = {label: build_policy(label, (policies or {}).get(label)) for label in config.policies}
    return Plan(config, loaded, selected, episodes, built)


def build_policy(label: str, source: PolicySource | None = None) -> Policy:
    """The policy of a spec: ``source`` when given (a policy, or a factory), else the registry's
    policy built with the spec's options. Bad options are a ``BenchError``."""
    if source is not None:
        return source if isinstance(source, Policy) else source()
    name, kwargs = parse_policy_spec(label)
    try:
        return make_policy(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise BenchError(f"policy spec {label!r}: {err}") from err

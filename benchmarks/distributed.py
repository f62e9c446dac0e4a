"""``medseg-bench run --ray``: the episodes on a Ray cluster, with the results of a local run.

What runs where:

- **The driver** (the ``medseg-bench`` process) plans the episodes, holds the folder lock,
  reads and alone writes the journal and every result file, exactly as a local run does
  (``runner._run_locked``). It never plays an episode.
- **Episode workers**: a pool of Ray actors (``medseg_env.cluster.WorkerPool``), one per CPU
  of the cluster by default (``--ray-workers``; with ``--ray-gpus G`` each worker takes a share
  G of a GPU, one per GPU for G = 1). Each builds the plan from the same config, its policies
  and its segmenter once (``shared_segmenter``: one model per process, with its embedding
  cache, and the disk cache of ``$MEDSEG_CACHE_DIR`` when the driver sets it) and plays the
  lockstep batches it is sent with the local runner's own code (``episode.Resources``), so an
  MLLM policy's batched turn is still one request, to the server the policy names (a vLLM
  server on the worker's node: ``vllm:base_url=http://127.0.0.1:8000/v1``).
- **Groups**: the batches of one image (every policy on one sample, the local runner's
  sample-major order) go to one worker in order, so each image is encoded once in all; a
  batching policy's lockstep batch is a group of its own. Groups go to whichever worker is
  free, and records come back to the driver as each batch ends.

Why workers that hold their own segmenter rather than segmenter actors shared by a node's
episodes: an episode calls its segmenter every turn (a decoder call of 25-60 ms on a CPU), so a
model in another process would add a round trip and a copy of the logits to each turn; and a
GPU worker (``--ray-gpus 1``) already is one model per GPU with its cache. The embedding cache
is per worker, and grouping by image keeps every embedding on the one worker that needs it.

Identical results: each episode's outcome depends only on its seed (``config.episode_seed``),
never on which worker plays it or when; so ``episodes.csv``, ``summary.csv`` and
``results.json`` (less its ``run`` key) equal a local run's, and the journal holds the same
records (in finishing order; the timings differ, as between any two runs). A run started with
``--ray`` resumes without it, and the reverse. The workers' ``runtime`` (device and decoder)
is what ``results.json`` records. Each worker uses the driver's torch thread count
(``WorkerPool(threads=None)``), whatever ``--ray-cpus`` says: the thread count changes the last
bits of float sums, which moved a border pixel of 9 masks in 588 episodes on ``demo-heldout``
when workers ran 1 thread and the local run 2. Set it with ``OMP_NUM_THREADS`` for both kinds
of run.

A worker that dies (its process killed, its node lost) loses only the batches it had not
returned: they run again on another worker, started in its place, and the driver records each
episode once (by its key). A batch that kills three workers stops the run with a
``BenchError`` naming it; an exception in a policy or segmenter stops it as in a local run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from medseg_env.cluster import (
    Cluster,
    ClusterError,
    RayOptions,
    WorkerPool,
    connect,
    default_workers,
)
from medseg_env.data import Dataset
from medseg_env.segmenters import shared_segmenter

from .config import BenchConfig, BenchError
from .episode import FinalState, Resources
from .plan import EpisodeSpec, Plan, PolicySource, make_plan
from .records import EpisodeKey, EpisodeRecord

__all__ = ["EpisodeWorker", "RayExecutor", "RayOptions", "image_groups"]

WORKER = "medseg-bench worker"

# What a worker is sent (one lockstep batch, and which of its episodes' final states the
# driver wants for examples.png) and what it returns (one record, and maybe a final state,
# per episode of the batch).
Item = tuple[tuple[EpisodeKey, ...], frozenset[EpisodeKey]]
Played = list[tuple[EpisodeRecord, FinalState | None]]


def _say(text: str) -> None:
    tqdm.write(f"medseg-bench: {text}", file=sys.stderr)


class EpisodeWorker:
    """What each Ray actor holds: the plan of the driver's config, and its policies, envs and
    segmenters (``episode.Resources``).

    Args:
        config: the driver's resolved config.
        policies: the injected policies (``run_benchmark(policies=...)``), copied here.
        datasets: the injected datasets; the others are loaded by name or path on the worker.
        fingerprints: the driver's data fingerprints; a worker that loads other data refuses
            to start (``BenchError``).
    """

    def __init__(
        self,
        config: BenchConfig,
        policies: Mapping[str, PolicySource] | None,
        datasets: Mapping[str, Dataset] | None,
        fingerprints: dict[str, dict[str, Any]],
    ) -> None:
        plan = make_plan(config, policies, datasets)
        if plan.fingerprints() != fingerprints:
            changed = sorted(
                k for k in fingerprints if plan.fingerprints().get(k) != fingerprints[k]
            )
            raise BenchError(
                f"dataset(s) {changed} differ on this worker's node from the driver's "
                "(another file at the same path?); every node must see the same data"
            )
        self.plan = plan
        self.resources = Resources(plan)
        self.specs = {e.key: e for e in plan.episodes}

    def ready(self) -> dict[str, Any]:
        """The segmenters' ``model_id`` and ``runtime`` here (built now, before any episode)."""
        names = self.plan.config.segmenters
        return {
            "models": {name: shared_segmenter(name).model_id for name in names},
            "runtime": {name: shared_segmenter(name).runtime for name in names},
        }

    def play(self, item: Item) -> Played:
        """Play one lockstep batch; the final state only of the episodes in ``item[1]``."""
        keys, keep = item
        results = self.resources.run_batch([self.specs[k] for k in keys])
        return [
            (record, final if key in keep else None)
            for key, (record, final) in zip(keys, results, strict=True)
        ]


def image_groups(batches: Sequence[Sequence[EpisodeSpec]]) -> list[list[list[EpisodeSpec]]]:
    """Consecutive single-episode batches of one image (segmenter, dataset, sample) as one
    group; a lockstep batch of several episodes is a group of its own."""
    groups: list[list[list[EpisodeSpec]]] = []
    last: tuple[str, str, int] | None = None
    for batch in batches:
        spec = batch[0]
        image = (spec.segmenter, spec.dataset, spec.sample_index)
        if len(batch) == 1 and image == last and len(groups[-1][-1]) == 1:
            groups[-1].append(list(batch))
        else:
            groups.append([list(batch)])
        last = image
    return groups


def _describe(item: Item) -> str:
    keys = item[0]
    policy, dataset, segmenter, _ = keys[0]
    names = ", ".join(k[3] for k in keys)
    return f"{policy} on {dataset}:{names} ({segmenter})"


def _merge(runtimes: Sequence[dict[str, dict[str, str]]]) -> dict[str, dict[str, str]]:
    """The workers' runtimes per segmenter; a field on which workers differ lists their values
    (``"cpu, cuda:0"``)."""
    out: dict[str, dict[str, str]] = {}
    for name in runtimes[0]:
        keys = sorted({k for r in runtimes for k in r[name]})
        out[name] = {k: ", ".join(sorted({str(r[name].get(k)) for r in runtimes})) for k in keys}
    return out


class RayExecutor:
    """Plays a run's batches on a Ray cluster (what ``runner`` asks of an executor).

    ``connect`` happens at construction (so Ray missing or an unreachable address is refused
    before anything is written); the worker pool starts on the first batch, so resuming a
    finished run starts no worker.
    """

    def __init__(
        self,
        options: RayOptions,
        *,
        policies: Mapping[str, PolicySource] | None = None,
        datasets: Mapping[str, Dataset] | None = None,
    ) -> None:
        self.options = options
        self._injected = (dict(policies or {}), dict(datasets or {}))
        try:
            self.cluster: Cluster = connect(
                options.address or None,
                num_cpus=options.local_cpus(),
                echo=_say if options.echo else None,
            )
        except ClusterError as err:
            raise BenchError(str(err)) from None
        self.pool: WorkerPool[Item, Played] | None = None
        self.runtime: dict[str, dict[str, str]] | None = None
        self.reports: list[dict[str, Any]] = []

    def _start(self, plan: Plan, models: Mapping[str, str]) -> WorkerPool[Item, Played]:
        options = self.options
        workers = options.workers or default_workers(self.cluster, options.cpus, options.gpus)
        policies, datasets = self._injected
        pool: WorkerPool[Item, Played] = WorkerPool(
            self.cluster,
            EpisodeWorker,
            (plan.config, policies or None, datasets or None, plan.fingerprints()),
            workers=workers,
            cpus=options.cpus,
            gpus=options.gpus,
            what=WORKER,
        )
        try:
            self.reports = pool.start()
        except ClusterError as err:
            raise BenchError(str(err)) from None
        for report in self.reports:
            theirs = report["info"]["models"]
            if theirs != dict(models):
                pool.close()
                raise BenchError(
                    f"{WORKER} on {report['host']} has other segmenter weights than the driver: "
                    f"{theirs} != {dict(models)}; install the same package and weights on "
                    "every node"
                )
        self.runtime = _merge([r["info"]["runtime"] for r in self.reports])
        if options.echo:
            where = ", ".join(f"{r['host']}:{r['pid']}" for r in self.reports)
            _say(
                f"{workers} {WORKER}s ({options.cpus:g} CPU, {options.gpus:g} GPU, "
                f"{pool.threads} torch thread(s) each) on "
                f"{len({r['node'] for r in self.reports})} node(s) (host:pid {where})"
            )
        return pool

    def play(
        self,
        plan: Plan,
        models: Mapping[str, str],
        batches: Sequence[Sequence[EpisodeSpec]],
        keep: set[EpisodeKey],
    ) -> Iterator[tuple[EpisodeSpec, EpisodeRecord, FinalState | None]]:
        """Play ``batches``; yield each episode as its batch returns (any order)."""
        if not batches:
            return
        if self.pool is None:
            self.pool = self._start(plan, models)
        groups = [
            [
                (tuple(s.key for s in batch), frozenset(s.key for s in batch if s.key in keep))
                for batch in group
            ]
            for group in image_groups(batches)
        ]
        specs = {s.key: s for batch in batches for s in batch}
        try:
            for item, played in self.pool.run(groups, "play", _describe):
                for key, (record, final) in zip(item[0], played, strict=True):
                    yield specs[key], record, final
        except ClusterError as err:
            raise BenchError(str(err)) from None

    def run_info(self) -> dict[str, Any]:
        """What ``results.json["run"]["ray"]`` records (not reproducible, so under ``run``)."""
        pool = self.pool
        return {
            "ray": {
                "address": self.cluster.address,
                "nodes": self.cluster.nodes,
                "workers": len(self.reports),
                "worker_nodes": len({r["node"] for r in self.reports}),
                "worker_deaths": list(pool.deaths) if pool is not None else [],
            }
        }

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.cluster.close()

"""Memory over many episodes: process RSS, the Python heap and the embedding cache, at checkpoints.

``python -m medseg_bench.memory [--episodes 10000] [--segmenter classical] [--cache-mb 8]
[--checkpoints 1000,10000] [--every 500] [--no-trace] [--json PATH] [--csv PATH]``

Plays ``--episodes`` episodes of ``MedSeg-v0`` in one env, with an ``EmbeddingCache`` of
``--cache-mb`` MiB, and records at checkpoints (every ``--every`` episodes, plus
``--checkpoints``): the process's resident memory now and at its peak, the Python heap that
``tracemalloc`` traces (NumPy arrays included; on by default, ``--no-trace`` skips it),
the cache's bytes and entries, and the encoder calls so far. The last line is the verdict:
the growth from the first to the last of ``--checkpoints``.

Episodes go through the dataset in a new seeded order on every pass, with a mix of policies
that make real prompts and masks: a ground-truth box then RITM clicks (stopping at IoU 0.9),
IMIS clicks, and random boxes, clicks and stops. Every episode is seeded from a hash of
(``--seed``, episode number). The bound should be smaller than the dataset's embeddings
(``classical``: 1 MiB per distinct image, 20 on ``demo``), or nothing is ever evicted and the
bound is not exercised; the meta line says how many embeddings the bound holds.

Memory is not timing-sensitive, so a busy machine does not change the figures, only the wall
time. Nothing is written unless ``--json`` or ``--csv`` names a file.

The probes here (:func:`rss_bytes`, :func:`peak_rss_bytes`, :class:`PeakMemory`) are the
project's one way to read the process's memory; ``medseg_bench.throughput_table`` measures its
peak-memory column with :class:`PeakMemory`.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import gc
import hashlib
import json
import platform
import resource
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import medseg_env  # noqa: F401  (registers the envs)
from medseg_agents import IMISClicker, Policy, RandomPolicy, RITMClicker
from medseg_env.actions import ActionKind
from medseg_env.data import Dataset
from medseg_env.env import MedSegEnv
from medseg_env.segmenters import EmbeddingCache

from .config import stable_int

MIB = 1024**2


RANDOM_INIT = {
    "sam": {"allow_random_init": True},
    "medsam": {"allow_random_init": True},
    "sam2": {"allow_random_init": True},
    "medsam2": {"allow_random_init": True},
}
"""Options of the backends without shipped weights, for the memory and throughput benchmarks:
random-initialised models of their real architecture, the same layers at the same input size,
so the same memory and speed (never their masks)."""


# --- the process's memory: one set of probes, also behind throughput's peak-memory column ---


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int | None:
    """The process's resident set size now, in bytes: ``VmRSS`` of ``/proc/self/status``
    (Linux), else psutil when installed; None where neither is available."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:
        import psutil  # type: ignore[import-untyped]  # optional, and ships no types
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def rss_source() -> str | None:
    """Where :func:`rss_bytes` reads from here."""
    if _status_kib("VmRSS") is not None:
        return "/proc/self/status"
    try:
        import psutil  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return None
    return "psutil"


def peak_rss_bytes() -> int:
    """The process's peak resident set size, in bytes: ``VmHWM`` (Linux; since the process
    started, or since the last :meth:`PeakMemory.start`, which resets it), else
    ``getrusage``'s maximum."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


class PeakMemory:
    """Peak memory of a stretch of work, measured in this process.

    RSS: the peak resident set (``VmHWM``) during the work minus the resident set at its start,
    in MiB. Before the start, garbage is collected, freed heap memory is handed back to the
    OS (glibc's ``malloc_trim``) and the peak is reset to the current RSS (``5`` written to
    ``/proc/self/clear_refs``, Linux >= 4.0), so the work's allocations count even where
    they reuse memory freed earlier. What is resident before the start (the models, cached
    embeddings, an ONNX Runtime session's arena once warm) is not counted: it is the work's
    own memory, not the process's. None where the OS or C library lacks these.

    GPU (CUDA only): ``torch.cuda.max_memory_allocated`` during the work minus
    ``memory_allocated`` at its start, in MiB.
    """

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self._trim: Callable[[int], int] | None = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self._trim = libc.malloc_trim
        except (OSError, AttributeError):
            pass
        self.rss_available = self._trim is not None and self._reset_peak()
        self._rss0 = 0
        self._gpu0 = 0

    @staticmethod
    def _reset_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
        except OSError:
            return False
        return _status_kib("VmHWM") is not None

    def start(self) -> None:
        gc.collect()
        if self.rss_available:
            assert self._trim is not None
            self._trim(0)
            self._reset_peak()
            self._rss0 = rss_bytes() or 0
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._gpu0 = torch.cuda.memory_allocated()

    def stop(self) -> tuple[float | None, float | None]:
        """``(peak RSS MiB, peak GPU MiB)`` since :meth:`start`; None where not measured."""
        rss = gpu = None
        if self.rss_available:
            rss = max(0, peak_rss_bytes() - self._rss0) / MIB
        if self.cuda:
            torch.cuda.synchronize()
            gpu = max(0, torch.cuda.max_memory_allocated() - self._gpu0) / 1024**2
        return rss, gpu


@dataclass(frozen=True)
class Checkpoint:
    """The state after ``episode`` episodes (memory in bytes, after a ``gc.collect()``).

    ``traced_bytes`` and ``traced_peak_bytes`` are None when tracing is off;
    ``cache_peak_bytes`` is the largest ``cache.nbytes`` seen after any episode so far (the
    env encodes only at reset). ``peak_rss_bytes`` is the kernel's high-water mark, which may
    lag the current figure by a little.
    """

    episode: int
    steps: int
    seconds: float
    rss_bytes: int | None
    peak_rss_bytes: int
    traced_bytes: int | None
    traced_peak_bytes: int | None
    cache_bytes: int
    cache_entries: int
    cache_peak_bytes: int
    encoder_calls: int
    cache_hits: int
    cache_misses: int


@dataclass(frozen=True)
class MemoryRun:
    """What ``run`` measured: the checkpoints, and the run's facts (``meta``)."""

    checkpoints: list[Checkpoint]
    meta: dict[str, Any]


def policy_mix() -> list[tuple[str, Policy]]:
    """The policies played in turn (each seeded per episode): box + clicks, clicks only,
    random prompts and stops."""
    return [
        ("ritm_box", RITMClicker(first_box=True, stop_iou=0.9)),
        ("imis", IMISClicker()),
        ("random", RandomPolicy(p_stop=0.25)),
    ]


def sample_order(n: int, seed: int) -> Iterator[int]:
    """Sample indices forever: each pass over ``range(n)`` in a new seeded order."""
    rng = np.random.default_rng(stable_int("memory-order", seed))
    while True:
        yield from (int(i) for i in rng.permutation(n))


def checkpoint_list(episodes: int, every: int, extra: Iterable[int] = ()) -> list[int]:
    """Every ``every``-th episode (none when ``every`` <= 0), ``extra`` and the last, sorted,
    within ``1..episodes``."""
    points = set(range(every, episodes + 1, every)) if every > 0 else set()
    points.update(e for e in extra if 1 <= e <= episodes)
    points.add(episodes)
    return sorted(points)


def distinct_images(dataset: Dataset) -> int:
    return len({hashlib.sha256(np.ascontiguousarray(s.image).tobytes()).digest() for s in dataset})


def run(
    episodes: int,
    segmenter: str = "classical",
    cache_bytes: int = 8 * MIB,
    checkpoints: Iterable[int] = (),
    every: int = 500,
    dataset: str | Dataset = "demo",
    max_turns: int = 4,
    seed: int = 0,
    trace: bool = True,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
) -> MemoryRun:
    """Play ``episodes`` episodes in one env and measure memory at checkpoints.

    ``checkpoints`` are added to every ``every``-th episode and the last one. With ``trace``,
    ``tracemalloc`` runs from before the env is built to the end (and is stopped after,
    unless it was already running). ``on_checkpoint`` is called with each checkpoint as it
    is taken (the CLI prints it).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}")
    points = checkpoint_list(episodes, every, checkpoints)
    started_trace = trace and not tracemalloc.is_tracing()
    if started_trace:
        tracemalloc.start()
    try:
        cache = EmbeddingCache(max_bytes=cache_bytes)
        env = gym.make(
            "MedSeg-v0",
            dataset=dataset,
            segmenter=segmenter,
            segmenter_kwargs={"cache": cache, **RANDOM_INIT.get(segmenter, {})},
            max_turns=max_turns,
        )
        base = env.unwrapped
        assert isinstance(base, MedSegEnv)  # narrows gym.make's Env[Any, Any]
        policies = policy_mix()
        order = sample_order(len(base.dataset), seed)
        kinds: Counter[str] = Counter()
        steps = cache_peak = embedding_bytes = 0
        rows: list[Checkpoint] = []
        start = time.perf_counter()
        for episode in range(1, episodes + 1):
            _, policy = policies[(episode - 1) % len(policies)]
            steps += play(env, policy, stable_int("memory", seed, episode), next(order), kinds)
            cache_peak = max(cache_peak, cache.nbytes)
            if not embedding_bytes and len(cache):
                embedding_bytes = cache.nbytes // len(cache)
            if episode == points[len(rows)]:
                elapsed = time.perf_counter() - start
                calls = base.segmenter.encoder_calls
                rows.append(measure(episode, steps, elapsed, cache, cache_peak, calls))
                if on_checkpoint is not None:
                    on_checkpoint(rows[-1])
        env.close()
    finally:
        if started_trace:
            tracemalloc.stop()
    meta = {
        "segmenter": segmenter,
        "model_id": base.segmenter.model_id,
        "dataset": base.dataset.name,
        "samples": len(base.dataset),
        "distinct_images": distinct_images(base.dataset),
        "episodes": episodes,
        "steps": steps,
        "max_turns": max_turns,
        "seed": seed,
        "policies": [name for name, _ in policies],
        "actions": dict(sorted(kinds.items())),
        "cache_max_bytes": cache.max_bytes,
        "embedding_bytes": embedding_bytes,
        "embeddings_in_bound": cache.max_bytes // embedding_bytes if embedding_bytes else None,
        # every encode is put, and an entry leaves only by eviction (unless one embedding is
        # larger than the whole bound: then none is held, and embeddings_in_bound is None)
        "evictions": base.segmenter.encoder_calls - len(cache),
        "trace": trace,
        "wall_s": rows[-1].seconds,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rss_source": rss_source(),
    }
    return MemoryRun(rows, meta)


def play(env: gym.Env, policy: Policy, seed: int, sample_index: int, kinds: Counter[str]) -> int:
    """One seeded episode to its end; tallies the actions' kinds (and invalid ones) in
    ``kinds``; returns its number of steps."""
    policy.seed(seed)
    obs, info = env.reset(seed=seed, options={"sample_index": sample_index})
    done, steps = False, 0
    while not done:
        action = policy.act(obs, info, env)
        obs, _, terminated, truncated, info = env.step(action)
        kinds[ActionKind(int(np.asarray(action["kind"]))).name.lower()] += 1
        if info["invalid_action"] is not None:
            kinds["invalid"] += 1
        done, steps = bool(terminated or truncated), steps + 1
    return steps


def measure(
    episode: int,
    steps: int,
    seconds: float,
    cache: EmbeddingCache,
    cache_peak: int,
    encoder_calls: int,
) -> Checkpoint:
    """A checkpoint of the process now, taken after a full garbage collection."""
    gc.collect()
    traced: tuple[int, int] | tuple[None, None] = (None, None)
    if tracemalloc.is_tracing():
        traced = tracemalloc.get_traced_memory()
    return Checkpoint(
        episode=episode,
        steps=steps,
        seconds=seconds,
        rss_bytes=rss_bytes(),
        peak_rss_bytes=peak_rss_bytes(),
        traced_bytes=traced[0],
        traced_peak_bytes=traced[1],
        cache_bytes=cache.nbytes,
        cache_entries=len(cache),
        cache_peak_bytes=cache_peak,
        encoder_calls=encoder_calls,
        cache_hits=cache.hits,
        cache_misses=cache.misses,
    )


def growth(rows: Sequence[Checkpoint], first: int, last: int) -> dict[str, Any]:
    """The change of RSS and traced memory from episode ``first`` to ``last`` (both must be
    checkpoints): bytes at each, and the growth in MiB and percent (None where not measured)."""
    by_episode = {row.episode: row for row in rows}
    a, b = by_episode[first], by_episode[last]
    out: dict[str, Any] = {"from_episode": first, "to_episode": last}
    for name in ("rss", "traced"):
        before, after = getattr(a, f"{name}_bytes"), getattr(b, f"{name}_bytes")
        known = before is not None and after is not None
        out[f"{name}_from_bytes"], out[f"{name}_to_bytes"] = before, after
        out[f"{name}_growth_mib"] = (after - before) / MIB if known else None
        out[f"{name}_growth_pct"] = 100 * (after - before) / before if known and before else None
    return out


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / MIB:.1f}"


TABLE_HEADER = (
    "| episode | steps | s | RSS MiB | peak RSS MiB | traced MiB | traced peak MiB "
    "| cache MiB | cache entries | encoder calls |\n|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(row: Checkpoint) -> str:
    cells = [
        f"{row.episode:,}",
        f"{row.steps:,}",
        f"{row.seconds:.0f}",
        _mib(row.rss_bytes),
        _mib(row.peak_rss_bytes),
        _mib(row.traced_bytes),
        _mib(row.traced_peak_bytes),
        f"{row.cache_bytes / MIB:.2f}",
        str(row.cache_entries),
        f"{row.encoder_calls:,}",
    ]
    return "| " + " | ".join(cells) + " |"


def verdict_line(change: dict[str, Any], meta: dict[str, Any], max_growth_mib: float) -> str:
    """One line: RSS (and traced) growth between the two episodes, and the cache's bound."""
    parts = []
    for name, label in (("rss", "RSS"), ("traced", "traced")):
        grown = change[f"{name}_growth_mib"]
        if grown is None:
            continue
        pct = change[f"{name}_growth_pct"]
        parts.append(
            f"{label} {_mib(change[f'{name}_from_bytes'])} -> {_mib(change[f'{name}_to_bytes'])}"
            f" MiB ({grown:+.1f} MiB, {pct:+.1f} %)"
        )
    rss = change["rss_growth_mib"]
    flat = rss is None or rss <= max_growth_mib
    state = "flat" if flat else f"GROWS (more than {max_growth_mib:g} MiB)"
    return (
        f"verdict: {state} from episode {change['from_episode']:,} to "
        f"{change['to_episode']:,}: " + "; ".join(parts) + f"; cache bound "
        f"{_mib(meta['cache_max_bytes'])} MiB ({meta['embeddings_in_bound']} embeddings of "
        f"{meta['distinct_images']} distinct images), {meta['evictions']:,} evictions"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--segmenter", default="classical", help="a registered segmenter")
    parser.add_argument("--dataset", default="demo", help="a registered name or a path (demo)")
    parser.add_argument(
        "--cache-mb", type=float, default=8.0, help="the embedding cache's bound, MiB (8)"
    )
    parser.add_argument(
        "--checkpoints",
        default="1000,10000",
        help="episodes to measure at besides every --every; the verdict compares the first "
        "and the last of them (1000,10000)",
    )
    parser.add_argument("--every", type=int, default=500, help="measure every N episodes (500)")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-trace", action="store_true", help="skip tracemalloc (faster; no traced column)"
    )
    parser.add_argument(
        "--max-growth-mib",
        type=float,
        default=10.0,
        help="RSS growth above which the verdict says GROWS and the exit status is 1 (10)",
    )
    parser.add_argument("--json", help="also write meta, checkpoints and verdict to this file")
    parser.add_argument("--csv", help="also write the checkpoints to this CSV file")
    args = parser.parse_args(argv)
    try:
        requested = [int(e) for e in args.checkpoints.split(",") if e.strip()]
    except ValueError:
        parser.error(f"--checkpoints must be comma-separated integers; got {args.checkpoints!r}")
    requested = [e for e in requested if 1 <= e <= args.episodes]
    print(
        f"# memory: {args.episodes:,} episodes, segmenter {args.segmenter}, dataset "
        f"{args.dataset}, cache {args.cache_mb:g} MiB, max_turns {args.max_turns}, "
        f"tracemalloc {'off' if args.no_trace else 'on'}"
    )
    print(TABLE_HEADER, flush=True)
    result = run(
        args.episodes,
        segmenter=args.segmenter,
        cache_bytes=int(args.cache_mb * MIB),
        checkpoints=requested,
        every=args.every,
        dataset=args.dataset,
        max_turns=args.max_turns,
        seed=args.seed,
        trace=not args.no_trace,
        on_checkpoint=lambda row: print(table_row(row), flush=True),
    )
    rows, meta = result.checkpoints, result.meta
    ends = requested if len(requested) >= 2 else [rows[0].episode, rows[-1].episode]
    change = growth(rows, ends[0], ends[-1])
    meta_text = {k: meta[k] for k in ("model_id", "samples", "steps", "actions", "wall_s")}
    print(f"# {meta_text}")
    line = verdict_line(change, meta, args.max_growth_mib)
    print(line)
    if args.json:
        with open(args.json, "w") as handle:
            payload = {
                "meta": meta,
                "checkpoints": [asdict(r) for r in rows],
                "growth": change,
                "verdict": line,
            }
            json.dump(payload, handle, indent=2, sort_keys=True)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)
    return 0 if line.startswith("verdict: flat") else 1


if __name__ == "__main__":
    sys.exit(main())

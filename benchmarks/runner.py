"""Run a benchmark: plan the episodes, run the missing ones, record them, write the results.

Determinism: episode ``(policy, dataset, segmenter, sample)`` is seeded with
``config.episode_seed`` (SHA-256 of those names and the run seed), passed to both
``policy.seed`` and ``env.reset``; so an episode's outcome depends neither on the episodes
before it nor on resuming. Everything written, except what lies under ``results.json["run"]``,
``timings.csv`` and the journal's ``timing`` fields, is the same byte for byte for the same
config, data and package versions.

Resume: finished episodes go to ``episodes.jsonl`` (``records.Journal``) as they end; a re-run
with the same config and folder reads it, runs only the missing episodes, and rewrites the
results from all of them. A folder whose ``config.json`` holds another config (or whose data
changed) is refused before anything is written. Each journal record is validated as it is read
(``records.EpisodeRecord.from_json``) and checked against the plan; a bad one is dropped with a
warning naming the file and line, moved to ``episodes.rejected.jsonl``, and its episode re-run.

One run per folder: a run holds ``.medseg-bench.lock`` in its folder (see :func:`folder_lock`);
a second run on the same folder is refused with a ``BenchError`` naming the holder.

Where episodes run: in this process (the default), or on a Ray cluster (``ray=RayOptions(...)``,
``medseg-bench run --ray``; ``distributed.py``). Either way this process alone writes the
journal and the results, records each episode once (by its key), and the files are the same.
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from medseg_env import files
from medseg_env.data import Dataset
from medseg_env.segmenters import shared_segmenter

from . import report
from .config import BenchConfig, BenchError, default_out_dir
from .distributed import RayExecutor, RayOptions
from .episode import FinalState, Resources
from .plan import EpisodeSpec, Plan, PolicySource, make_plan
from .records import EpisodeKey, EpisodeRecord, Journal, atomic_write
from .summary import summarize, summarize_timings

FORMAT = "medseg-bench/1"
CONFIG_FILE = "config.json"
JOURNAL_FILE = "episodes.jsonl"
LOCK_FILE = ".medseg-bench.lock"
OUTPUT_FILES = (
    "results.json",
    "episodes.csv",
    "timings.csv",
    "summary.csv",
    "summary.md",
    "dice_vs_turn.png",
    "examples.png",
)
VERSIONED_PACKAGES = (
    "medseg-env",
    "gymnasium",
    "numpy",
    "scipy",
    "scikit-image",
    "torch",
    "onnxruntime",
    "matplotlib",
)


@dataclass
class BenchResult:
    """What ``run_benchmark`` did and wrote."""

    out_dir: Path
    config: BenchConfig
    records: list[EpisodeRecord]
    summary: list[dict[str, Any]]
    resumed: int
    executed: int
    files: dict[str, Path]
    markdown: str


def check_out_dir(out_dir: Path, plan: Plan) -> bool:
    """Refuse a folder holding another config's results; True when it holds this config's.

    Raises:
        BenchError: the folder's ``config.json`` differs (the message lists the keys), its
            data fingerprint or a segmenter's ``model_id`` (its weights) differs, or it holds
            benchmark files without a ``config.json``.
    """
    config_path = out_dir / CONFIG_FILE
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchError(f"output path {out_dir} exists and is not a folder")
    if not config_path.is_file():
        found = [n for n in (JOURNAL_FILE, *OUTPUT_FILES) if (out_dir / n).exists()]
        if found:
            raise BenchError(
                f"{out_dir} holds benchmark files ({', '.join(found)}) but no {CONFIG_FILE}; "
                "choose another --out folder"
            )
        return False
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        old = BenchConfig.from_dict(saved["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise BenchError(
            f"{config_path} is unreadable ({err}); choose another --out folder"
        ) from err
    diff = plan.config.diff(old)
    if diff:
        raise BenchError(
            f"{out_dir} holds results of a different config (hash {old.hash()}, this one is "
            f"{plan.config.hash()}); differing keys (this run != saved): {'; '.join(diff)}. "
            "Choose another --out folder (or remove that one)."
        )
    changed = _changed_keys(saved.get("data", {}), plan.fingerprints())
    if changed:
        raise BenchError(
            f"{out_dir} holds results of the same config on different data: dataset(s) "
            f"{changed} changed since. Choose another --out folder."
        )
    # A segmenter name can stand for new weights after an upgrade (its model_id says which).
    old_models, new_models = saved.get("models", {}), model_ids(plan)
    changed = _changed_keys(old_models, new_models)
    if changed:
        saved_ids = {k: old_models.get(k) for k in changed}
        raise BenchError(
            f"{out_dir} holds results of the same config made with other model weights: "
            f"segmenter(s) {changed} are now {[new_models[k] for k in changed]}, the folder has "
            f"{saved_ids}. Choose another --out folder."
        )
    return True


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold ``out`` for one run (``medseg_env.files.folder_lock`` on ``.medseg-bench.lock``).

    Raises:
        BenchError: another process holds the lock (the message names the folder and the
            holder's PID).
    """
    try:
        with files.folder_lock(out, LOCK_FILE, "medseg-bench run"):
            yield
    except files.FolderInUseError as err:
        raise BenchError(str(err)) from None


def _changed_keys(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys of ``current`` whose value the saved folder does not have (sorted)."""
    return sorted(k for k in current if saved.get(k) != current[k])


def model_ids(plan: Plan) -> dict[str, str]:
    """Each segmenter name's ``model_id`` (which weights), recorded next to the config."""
    return {name: shared_segmenter(name).model_id for name in plan.config.segmenters}


def runtimes(plan: Plan) -> dict[str, dict[str, str]]:
    """How each segmenter ran (``Segmenter.runtime``: its device and decoder), recorded in
    ``results.json``. Not part of the config, the model ids or the folder name: the ONNX and
    eager decoders give the same masks (``tests/segmenters/test_decoder_identity.py``), so a
    run resumed with the other decoder continues the same results."""
    return {name: shared_segmenter(name).runtime for name in plan.config.segmenters}


def run_benchmark(
    config: BenchConfig,
    out_dir: str | Path | None = None,
    *,
    policies: Mapping[str, PolicySource] | None = None,
    datasets: Mapping[str, Dataset] | None = None,
    progress: bool = True,
    plots: bool = True,
    examples: int = 4,
    ray: RayOptions | None = None,
) -> BenchResult:
    """Run (or resume) a benchmark and write its results to ``out_dir``.

    Args:
        config: what to run; an empty ``policies`` means every registered policy.
        out_dir: the results folder (default ``config.default_out_dir`` of the config and the
            segmenters' weights: never the cwd).
        policies: extra policies by label (a ``Policy`` or a factory), e.g. for tests; they
            are identified by label only in the config and its hash.
        datasets: datasets by spec, used instead of ``load_dataset(spec)``.
        progress: show a tqdm progress bar.
        plots: write ``dice_vs_turn.png`` and ``examples.png``.
        examples: columns (samples) of ``examples.png``.
        ray: play the episodes on a Ray cluster (``distributed.RayOptions``); the files
            written are those of a local run, and either kind of run resumes the other.

    Raises:
        BenchError: bad input, a folder of another config, or a folder another run is using;
            with ``ray``, Ray missing (the message names the extra) or a cluster that cannot
            be reached; nothing was written.
    """
    started = time.perf_counter()
    plan = make_plan(config, policies, datasets)
    out = Path(out_dir) if out_dir is not None else default_out_dir(plan.config, model_ids(plan))
    check_out_dir(out, plan)

    executor: Executor = (
        _LocalExecutor(plan)
        if ray is None
        else RayExecutor(ray, policies=policies, datasets=datasets)
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out):
            check_out_dir(out, plan)  # again: another run may have written it before we locked
            return _run_locked(
                plan, out, started, executor, progress=progress, plots=plots, examples=examples
            )
    finally:
        executor.close()


class Executor(Protocol):
    """Where a run's episodes are played: this process (``_LocalExecutor``) or a Ray cluster
    (``distributed.RayExecutor``)."""

    runtime: dict[str, dict[str, str]] | None
    """How the segmenters ran where the episodes ran (None: in this process)."""

    def play(
        self,
        plan: Plan,
        models: Mapping[str, str],
        batches: Sequence[Sequence[EpisodeSpec]],
        keep: set[EpisodeKey],
    ) -> Iterable[tuple[EpisodeSpec, EpisodeRecord, FinalState | None]]:
        """Play the lockstep ``batches``; each episode with its final state (at least for
        the episodes in ``keep``), in any order."""
        ...

    def run_info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class _LocalExecutor:
    """Plays the batches here, in order (``episode.Resources``)."""

    runtime: dict[str, dict[str, str]] | None = None

    def __init__(self, plan: Plan) -> None:
        self.resources = Resources(plan)

    def play(
        self,
        plan: Plan,
        models: Mapping[str, str],
        batches: Sequence[Sequence[EpisodeSpec]],
        keep: set[EpisodeKey],
    ) -> Iterator[tuple[EpisodeSpec, EpisodeRecord, FinalState | None]]:
        for batch in batches:
            spec = batch[0]
            try:
                results = self.resources.run_batch(batch)
            except Exception as err:
                names = ", ".join(s.sample_id for s in batch)
                err.add_note(f"while running {spec.policy} on {spec.dataset}:{names}")
                raise
            for spec, (record, final) in zip(batch, results, strict=True):
                yield spec, record, final

    def run_info(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.resources.close()


def _journal_check(plan: Plan) -> Callable[[EpisodeRecord], str | None]:
    """The plan's rules for a journal record: the reason to drop it, or None."""
    wanted = {e.key: e for e in plan.episodes}
    seen: set[EpisodeKey] = set()

    def check(r: EpisodeRecord) -> str | None:
        spec = wanted.get(r.key)
        if spec is None:
            return f"episode {r.key} is not in this run's plan"
        got, planned = (
            (r.seed, r.budget, r.sample_index),
            (spec.seed, spec.budget, spec.sample_index),
        )
        if got != planned:
            return f"(seed, budget, sample_index) = {got}, planned {planned}"
        sample = plan.datasets[spec.dataset][spec.sample_index]
        got_s = (r.modality, r.target, r.source_id)
        want_s = (sample.modality, sample.target, sample.source_id)
        if got_s != want_s:
            return f"(modality, target, source_id) = {got_s}, the sample has {want_s}"
        if r.key in seen:
            return "a second record of this episode (the first one is kept)"
        seen.add(r.key)
        return None

    return check


def _run_locked(
    plan: Plan,
    out: Path,
    started: float,
    executor: Executor,
    *,
    progress: bool,
    plots: bool,
    examples: int,
) -> BenchResult:
    atomic_write(out / CONFIG_FILE, report.dump_json(_config_doc(plan)))
    journal = Journal(out / JOURNAL_FILE)
    wanted = {e.key: e for e in plan.episodes}
    try:
        loaded = journal.load(repair=True, check=_journal_check(plan))
    except OSError as err:
        raise BenchError(f"cannot read or repair {journal.path}: {err}") from err
    done: dict[EpisodeKey, EpisodeRecord] = {r.key: r for r in loaded}
    resumed = len(done)

    example_list = pick_examples(plan, examples) if plots else []
    example_keys = set(example_list)
    finals: dict[EpisodeKey, FinalState] = {}
    models = model_ids(plan)
    # Sample-major order: all policies on one image in a row, while its embedding is cached.
    rank = {policy: i for i, policy in enumerate(plan.config.policies)}
    todo = sorted(
        (e for e in plan.episodes if e.key not in done),
        key=lambda e: (e.segmenter, e.dataset, e.sample_index, rank[e.policy]),
    )
    bar = tqdm(
        total=len(plan.episodes),
        initial=resumed,
        disable=not progress,
        unit="ep",
        desc="medseg-bench",
        dynamic_ncols=True,
    )
    try:
        batches = episode_batches(todo, plan)
        for spec, record, final in executor.play(plan, models, batches, example_keys):
            if spec.key in done:  # once, however often a retried worker sends it back
                continue
            journal.append(record)
            done[spec.key] = record
            if spec.key in example_keys and final is not None:
                finals[spec.key] = final
            bar.set_postfix_str(f"{spec.policy} {spec.sample_id}", refresh=False)
            bar.update(1)
        bar.close()
        # resumed examples: replay them (deterministic)
        replay = [[wanted[key]] for key in example_list if key not in finals]
        for spec, record, final in executor.play(plan, models, replay, set(example_keys)):
            assert final is not None
            finals[spec.key] = final
            if record.steps != done[spec.key].steps:
                warnings.warn(
                    f"replaying {spec.key} for the examples figure gave a different episode "
                    "than the recorded one: the policy or segmenter is not deterministic",
                    stacklevel=2,
                )
    finally:
        bar.close()

    records = [done[e.key] for e in plan.episodes]
    rows = summarize(records)
    for row in rows:  # oracle policies read the ground truth: tables show them apart
        row["oracle"] = bool(getattr(plan.policies.get(row["policy"]), "needs_oracle", False))
    timings = summarize_timings(records)
    files = report.write_outputs(
        out,
        plan.config,
        records,
        rows,
        timings,
        results_doc=_results_doc(plan, rows, executor.runtime),
        run_info={
            "resumed_episodes": resumed,
            "executed_episodes": len(todo),
            "wall_s": time.perf_counter() - started,
            "timings": timings,
            **executor.run_info(),
        },
        finals=[(k, finals[k]) for k in example_list] if plots else None,
    )
    markdown = report.markdown_summary(rows, timings, plan.config)
    return BenchResult(out, plan.config, records, rows, resumed, len(todo), files, markdown)


def episode_batches(todo: Sequence[EpisodeSpec], plan: Plan) -> list[list[EpisodeSpec]]:
    """The episodes to run, in lockstep batches of one policy (``Policy.episode_batch``).

    Policies with a batch of one keep the sample-major order; a batching policy's episodes of
    one (dataset, segmenter, budget) are grouped, in sample order, ``episode_batch`` at a time.
    """
    batches: list[list[EpisodeSpec]] = []
    open_batches: dict[tuple[str, str, str, int], list[EpisodeSpec]] = {}
    for spec in todo:
        size = max(1, int(getattr(plan.policies[spec.policy], "episode_batch", 1)))
        if size == 1:
            batches.append([spec])
            continue
        key = (spec.policy, spec.dataset, spec.segmenter, spec.budget)
        group = open_batches.setdefault(key, [])
        if not group:
            batches.append(group)
        group.append(spec)
        if len(group) == size:
            open_batches[key] = []
    return batches


def pick_examples(plan: Plan, n: int) -> list[EpisodeKey]:
    """Episodes for ``examples.png``: ``n`` samples of the first dataset x every policy.

    The samples are the first selected one of each modality, then the next ones in order.
    """
    if n <= 0:
        return []
    spec, segmenter = plan.config.datasets[0], plan.config.segmenters[0]
    ds, indices = plan.datasets[spec], plan.selected[spec]
    firsts: dict[str, int] = {}
    for i in indices:
        firsts.setdefault(ds[i].modality, i)
    chosen = sorted(firsts.values())
    chosen = (chosen + [i for i in indices if i not in chosen])[:n]
    return [
        (policy, spec, segmenter, ds[i].sample_id)
        for policy in plan.config.policies
        for i in chosen
    ]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _config_doc(plan: Plan) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "config": plan.config.to_dict(),
        "config_hash": plan.config.hash(),
        "data": plan.fingerprints(),
        "models": model_ids(plan),
    }


def _results_doc(
    plan: Plan, rows: list[dict[str, Any]], runtime: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    return {
        **_config_doc(plan),
        "seed": plan.config.seed,
        "budgets": {p: plan.config.budget_for(p) for p in plan.config.policies},
        "episodes": len(plan.episodes),
        "runtime": runtime if runtime is not None else runtimes(plan),
        "versions": package_versions(),
        "summary": rows,
    }

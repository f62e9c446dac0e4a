"""Embedding precompute: encode every distinct image of some datasets once, into the disk cache.

The image encoder is the expensive part of an episode's start (about 1.4 s an image for
LiteMedSAM on a CPU), and every new process (a benchmark, a training run, each worker of a
vector env) pays it again on an empty memory cache. ``precompute`` runs the encoder once per
distinct image ahead of time and stores each embedding in the on-disk embedding cache
(``EmbeddingCache``), where every later run finds it::

    python -m medseg_env precompute demo demo-heldout -s litemedsam_clicks
    MEDSEG_CACHE_DIR=~/.cache/medseg-env/embeddings python train.py   # no encoder call

What it encodes is exactly what ``MedSegEnv.reset`` encodes: each sample letterboxed into the
``obs_size`` canvas (``--obs-size``; the env's default, 256, unless a run changes it), under
the cache key of that content and the segmenter's ``model_id``. Samples that share their
pixels (several targets on one slice) share a key and cost one encode.

- **Where**: ``--cache-dir``, else ``$MEDSEG_CACHE_DIR``, else
  ``${XDG_CACHE_HOME:-~/.cache}/medseg-env/embeddings`` (never the current directory). Later
  runs read the disk cache only when ``$MEDSEG_CACHE_DIR`` names it (or a segmenter is given
  ``EmbeddingCache(disk_dir=...)``); the command says so when the variable does not.
- **Resumable**: an image whose entry is on disk and valid is skipped without calling the
  encoder, so running the same command again after an interruption (Ctrl-C, a crash, a killed
  job) encodes only what is missing. A damaged entry (torn, truncated, another model's) reads
  as a miss, as it does for the env, and is encoded and written again.
- **Atomic**: each entry is written to a temporary file in its own folder and renamed over the
  final name (``EmbeddingCache``), so a reader never sees half an entry.
- **Honest about failures**: an entry that cannot be written raises ``PrecomputeError``,
  where the env's cache would only warn and carry on in memory.
- **On a Ray cluster** (``--ray [ADDRESS]``, ``ray=RayOptions(...)``): the images to encode go
  to a pool of workers (``medseg_env.cluster.WorkerPool``, one per CPU or GPU), each with its
  own model; the embeddings come back to this process, which alone checks what is on disk and
  writes every entry, as above. So the cache folder needs to be writable here only, and a
  precompute started with ``--ray`` resumes without it, and the reverse. Each worker uses this
  process's torch thread count, so its embeddings are bit-identical to a local pass here (the
  thread count changes the last bits of a float sum).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .cluster import ClusterError, RayOptions, WorkerPool, add_ray_arguments, connect, ray_options
from .cluster import default_workers as default_ray_workers
from .data import Dataset, load_dataset
from .env import MIN_OBS_SIZE, default_config
from .files import default_folder
from .geometry import letterbox
from .registry import parse_spec
from .segmenters import EmbeddingCache, Segmenter, make_segmenter
from .segmenters.cache import CACHE_DIR_ENV, expand_dir, image_key
from .segmenters.types import Embedding

DEFAULT_SEGMENTER: str = default_config()["segmenter"]
DEFAULT_OBS_SIZE: int = default_config()["obs_size"]


class PrecomputeError(RuntimeError):
    """An embedding could not be stored in the disk cache."""


def default_cache_dir() -> Path:
    """``$MEDSEG_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/medseg-env/embeddings``.

    Absolute, with ``~`` and environment variables expanded (as ``EmbeddingCache`` does).
    """
    return default_folder("embeddings", CACHE_DIR_ENV)


@dataclass
class PrecomputeReport:
    """What one ``precompute`` did.

    ``images`` = ``encoded`` + ``skipped``: the distinct images (cache keys) among ``samples``.
    ``bytes_written`` sums the entries written; ``seconds`` is the wall time of the whole pass
    (letterboxing, reading existing entries, encoding, writing), ``encode_seconds`` the part
    spent on images that were encoded and written.
    """

    cache_dir: Path
    model_id: str
    datasets: list[str] = field(default_factory=list)
    samples: int = 0
    images: int = 0
    encoded: int = 0
    skipped: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0

    def summary(self) -> str:
        """Two lines for a person: what was encoded and skipped, the bytes and the time."""
        names = ", ".join(self.datasets)
        return (
            f"{self.samples} samples of {names}: {self.images} distinct images under "
            f"{self.model_id}\n"
            f"encoded {self.encoded}, skipped {self.skipped} (already cached), wrote "
            f"{_size(self.bytes_written)} in {self.seconds:.1f} s "
            f"(encoding and writing {self.encode_seconds:.1f} s) into {self.cache_dir}"
        )


def precompute(
    datasets: Dataset | str | os.PathLike[str] | Iterable[Dataset | str | os.PathLike[str]],
    segmenter: Segmenter | str = DEFAULT_SEGMENTER,
    *,
    segmenter_kwargs: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    obs_size: int = DEFAULT_OBS_SIZE,
    progress: bool = True,
    ray: RayOptions | None = None,
) -> PrecomputeReport:
    """Encode every distinct image of ``datasets`` into the disk cache at ``cache_dir``.

    Args:
        datasets: ``Dataset``s, registered names (``"demo"``) or paths, as ``load_dataset``
            takes them; one or several.
        segmenter: a registered name (with ``segmenter_kwargs``) or a ``Segmenter``. Its own
            cache is set aside for the pass (and restored), so a ``Segmenter`` given here
            keeps its memory cache as it was.
        cache_dir: the disk cache's folder; ``default_cache_dir()`` when None.
        obs_size: the env's canvas side; images are encoded as ``MedSegEnv`` letterboxes them.
        progress: show a tqdm progress bar over the samples.
        ray: encode on a Ray cluster (``RayOptions``: a local Ray, or a cluster's address);
            ``segmenter`` must then be a name, which each worker builds. This process still
            reads and writes every entry.

    Returns:
        what was encoded, skipped and written (``PrecomputeReport``).

    Raises:
        PrecomputeError: an entry could not be written (read-only or full disk...).
        ValueError: ``obs_size`` below 16; ``ray`` with a ``Segmenter`` instance.
        ClusterError: with ``ray``, Ray missing (the message names the extra) or a cluster
            that cannot be reached.
        whatever the encoder raises, and ``KeyboardInterrupt``: entries written so far stay,
        and the exception carries a note with the counts; the same call resumes.
    """
    if isinstance(obs_size, bool) or not isinstance(obs_size, int) or obs_size < MIN_OBS_SIZE:
        raise ValueError(f"obs_size must be an int >= {MIN_OBS_SIZE}; got {obs_size!r}")
    if isinstance(datasets, Dataset | str | os.PathLike):
        datasets = [datasets]
    if ray is not None and not isinstance(segmenter, str):
        raise ValueError(
            f"precompute on Ray takes the segmenter by name (each worker builds its own); got "
            f"a {type(segmenter).__name__} instance"
        )
    loaded = [load_dataset(spec) for spec in datasets]
    seg = make_segmenter(segmenter, **(segmenter_kwargs or {}))
    if ray is not None:
        assert isinstance(segmenter, str)
        return _precompute_on_ray(
            loaded,
            seg,
            (segmenter, dict(segmenter_kwargs or {})),
            cache_dir,
            obs_size,
            progress,
            ray,
        )
    directory = expand_dir(cache_dir) if cache_dir not in (None, "") else default_cache_dir()
    # No memory layer (max_bytes=0): the pass holds one embedding at a time, whatever the size
    # of the dataset. Every lookup goes to disk and checks the entry there.
    store = EmbeddingCache(max_bytes=0, disk_dir=directory)
    report = PrecomputeReport(directory, seg.model_id, [d.name for d in loaded])
    seen: set[str] = set()
    # Samples of one slice share its pixels: letterbox and hash them once (the canvas depends
    # on the image alone, at a given obs_size).
    framed: set[str] = set()
    bar = tqdm(
        total=sum(len(d) for d in loaded),
        disable=not progress,
        unit="sample",
        desc=f"precompute {seg.name}",
        dynamic_ncols=True,
    )
    own_cache = seg.cache
    seg.cache = store
    started = time.perf_counter()
    try:
        for dataset in loaded:
            for sample in dataset:
                report.samples += 1
                canvas = _new_canvas(sample, obs_size, seg.model_id, framed)
                if canvas is not None and canvas[1] not in seen:
                    image, key = canvas
                    seen.add(key)
                    report.images += 1
                    _store(seg, store, image, key, report)
                bar.update()
                bar.set_postfix(encoded=report.encoded, skipped=report.skipped, refresh=False)
    except BaseException as err:
        err.add_note(
            f"precompute stopped after {report.encoded} images encoded and {report.skipped} "
            f"skipped; the entries written stay in {directory}, and the same command resumes"
        )
        raise
    finally:
        report.seconds = time.perf_counter() - started
        seg.cache = own_cache
        bar.close()
    return report


def _store(
    seg: Segmenter, store: EmbeddingCache, image: Any, key: str, report: PrecomputeReport
) -> None:
    """Encode ``image`` into ``store`` unless a valid entry is there already."""
    calls = seg.encoder_calls
    store.last_write_error = None
    started = time.perf_counter()
    seg.encode(image)  # the env's own path: the same key, the same checks of a stored entry
    if seg.encoder_calls == calls:
        report.skipped += 1
        return
    _count_written(store, key, report)
    report.encode_seconds += time.perf_counter() - started


class EncodeWorker:
    """A Ray worker of ``precompute``: one segmenter, no cache of its own; ``encode`` returns
    an image's embedding (on the CPU) to the driver, which writes it."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.seg = make_segmenter(name, **options)
        self.seg.cache = EmbeddingCache(max_bytes=0)

    def ready(self) -> dict[str, Any]:
        return {"model_id": self.seg.model_id, "runtime": self.seg.runtime}

    def encode(self, item: tuple[str, Any]) -> Embedding:
        embedding = self.seg.encode(item[1])
        return Embedding(
            embedding.features.detach().cpu(), embedding.image_size, embedding.model_id
        )


def _precompute_on_ray(
    loaded: Sequence[Dataset],
    seg: Segmenter,
    spec: tuple[str, dict[str, Any]],
    cache_dir: str | os.PathLike[str] | None,
    obs_size: int,
    progress: bool,
    options: RayOptions,
) -> PrecomputeReport:
    """``precompute`` with the encoding on Ray workers: this process letterboxes the samples,
    skips the images with a valid entry, sends the others out and writes what comes back."""
    echo = (
        (lambda text: tqdm.write(f"precompute: {text}", file=sys.stderr)) if options.echo else None
    )
    cluster = connect(options.address, num_cpus=options.local_cpus(), echo=echo)
    directory = expand_dir(cache_dir) if cache_dir not in (None, "") else default_cache_dir()
    store = EmbeddingCache(max_bytes=0, disk_dir=directory)
    report = PrecomputeReport(directory, seg.model_id, [d.name for d in loaded])
    bar = tqdm(
        total=sum(len(d) for d in loaded),
        disable=not progress,
        unit="sample",
        desc=f"precompute {seg.name}",
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    pool: WorkerPool[tuple[str, Any], Embedding] | None = None
    try:
        todo: dict[str, Any] = {}
        framed: set[str] = set()
        for dataset in loaded:
            for sample in dataset:
                report.samples += 1
                canvas = _new_canvas(sample, obs_size, seg.model_id, framed)
                if canvas is not None and canvas[1] not in todo:
                    image, key = canvas
                    size = (int(image.shape[0]), int(image.shape[1]))
                    found = store.get(
                        key, model_id=seg.model_id, image_size=size, features=seg.features_spec
                    )
                    if found is None:
                        todo[key] = image
                        continue  # the bar moves when its embedding is written
                    report.images += 1
                    report.skipped += 1
                bar.update()
        report.images += len(todo)
        if todo:
            workers = options.workers or default_ray_workers(cluster, options.cpus, options.gpus)
            pool = WorkerPool(
                cluster,
                EncodeWorker,
                spec,
                workers=min(workers, len(todo)),
                cpus=options.cpus,
                gpus=options.gpus,
                what="precompute worker",
            )
            for info in pool.start():
                if info["info"]["model_id"] != seg.model_id:
                    raise ClusterError(
                        f"precompute worker on {info['host']} builds {info['info']['model_id']}, "
                        f"not {seg.model_id}: install the same package and weights on every node"
                    )
            encode_started = time.perf_counter()
            items = [[(key, image)] for key, image in todo.items()]
            for (key, _), embedding in pool.run(items, "encode", lambda item: f"image {item[0]}"):
                _write(store, key, embedding, report)
                bar.update()
                bar.set_postfix(encoded=report.encoded, skipped=report.skipped, refresh=False)
            report.encode_seconds = time.perf_counter() - encode_started
    except BaseException as err:
        err.add_note(
            f"precompute stopped after {report.encoded} images encoded and {report.skipped} "
            f"skipped; the entries written stay in {directory}, and the same command resumes"
        )
        raise
    finally:
        report.seconds = time.perf_counter() - started
        bar.close()
        if pool is not None:
            pool.close()
        cluster.close()
    return report


def _write(store: EmbeddingCache, key: str, embedding: Embedding, report: PrecomputeReport) -> None:
    """Write one embedding that a worker made; a failed write is a ``PrecomputeError``."""
    store.last_write_error = None
    store.put(key, embedding)
    _count_written(store, key, report)


def _new_canvas(
    sample: Any, obs_size: int, model_id: str, framed: set[str]
) -> tuple[np.ndarray, str] | None:
    """The letterboxed canvas of ``sample`` and its cache key, or None when a sample of the same
    image was framed already (``framed`` holds the raw images' keys)."""
    raw = image_key(sample.image, "raw")
    if raw in framed:
        return None
    framed.add(raw)
    image, _, _ = letterbox(sample, obs_size)
    return image, image_key(image, model_id)


def _count_written(store: EmbeddingCache, key: str, report: PrecomputeReport) -> None:
    """Count an entry just written to ``store``; a failed write is a ``PrecomputeError``."""
    path = store.disk_path(key)
    assert path is not None
    if store.last_write_error is not None or not path.is_file():
        err = store.last_write_error
        reason = f"{type(err).__name__}: {err}" if err is not None else "the file is missing"
        raise PrecomputeError(
            f"could not write the embedding cache entry {path} ({reason}); give a writable "
            f"folder with --cache-dir or ${CACHE_DIR_ENV}"
        ) from err
    report.encoded += 1
    report.bytes_written += path.stat().st_size


def _size(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB" if n >= 1024**2 else f"{n / 1024:.1f} KiB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m medseg_env precompute",
        description=(
            "Encode every distinct image of the datasets once into the on-disk embedding "
            "cache that later runs reuse (set $MEDSEG_CACHE_DIR to the same folder for them). "
            "Images already cached are skipped, so running it again resumes."
        ),
    )
    parser.add_argument(
        "datasets",
        nargs="+",
        metavar="DATASET",
        help="registered name (demo, demo-heldout) or path (manifest, .npz, folder)",
    )
    parser.add_argument(
        "-s",
        "--segmenter",
        default=DEFAULT_SEGMENTER,
        metavar="SPEC",
        help=(
            "a registered segmenter, with options as name:key=value,... "
            f"(classical:work_size=96, litemedsam_clicks:device=cuda); default {DEFAULT_SEGMENTER}"
        ),
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help=(
            f"default ${CACHE_DIR_ENV}, else ${{XDG_CACHE_HOME:-~/.cache}}/medseg-env/embeddings"
        ),
    )
    parser.add_argument(
        "--obs-size",
        type=int,
        default=DEFAULT_OBS_SIZE,
        help=f"the env's canvas side that later runs use (default {DEFAULT_OBS_SIZE})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_arguments(parser, "encode the images")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``precompute`` command; returns the exit status (130 when interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.obs_size < MIN_OBS_SIZE:
        parser.error(f"--obs-size must be at least {MIN_OBS_SIZE}; got {args.obs_size}")
    try:
        ray = ray_options(args)
        name, kwargs = parse_spec(args.segmenter, "segmenter")
        datasets = [load_dataset(spec) for spec in args.datasets]
        # on Ray, each worker builds the segmenter from its name
        segmenter: Segmenter | str = name if ray is not None else make_segmenter(name, **kwargs)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        parser.error(str(err))
    try:
        report = precompute(
            datasets,
            segmenter,
            segmenter_kwargs=kwargs if ray is not None else None,
            cache_dir=args.cache_dir,
            obs_size=args.obs_size,
            progress=not args.no_progress,
            ray=ray,
        )
    except ClusterError as err:
        print(f"precompute: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print("\n".join(["interrupted", *getattr(err, "__notes__", [])]), file=sys.stderr)
        return 130
    print(report.summary())
    configured = os.environ.get(CACHE_DIR_ENV)
    if not configured or expand_dir(configured) != report.cache_dir:
        print(f"later runs read it with {CACHE_DIR_ENV}={report.cache_dir}")
    return 0

"""``medseg-train export-sft --ray``: the trajectories played on a Ray cluster.

The driver (the ``export-sft`` process) plans, holds the folder lock, and alone writes the
images, the journal and the dataset files, as a local export does; a pool of workers
(``medseg_env.cluster.WorkerPool``) plays the trajectories. Each worker loads the dataset by
its name or path (and refuses to start if it is not the driver's data), builds the text env and
the experts once (its segmenter once, with its embedding cache), and plays the trajectories it
is sent with the local export's own ``play``. The trajectories of one sample (``--per-sample``)
go to one worker, so its image is encoded once. An entry depends only on its trajectory's seed,
so the export equals a local one, and either kind resumes the other; a worker that dies loses
only the trajectories it had not returned, which run again elsewhere and are recorded once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from PIL import Image

from medseg_env.cluster import Cluster, ClusterError, RayOptions, WorkerPool, default_workers
from medseg_env.data import data_fingerprint
from medseg_env.segmenters import shared_segmenter

from .config import ExportConfig, ExportError
from .plan import TrajectorySpec, load_export_dataset
from .play import make_env, make_expert, play

WORKER = "export-sft worker"
Played = tuple[dict[str, Any], dict[str, Image.Image]]


class TrajectoryWorker:
    """What each Ray actor holds: the export's dataset, text env and experts.

    Raises:
        ExportError: the dataset loaded here is not the driver's (its fingerprint differs).
    """

    def __init__(self, config: ExportConfig, data: dict[str, Any]) -> None:
        dataset = load_export_dataset(config)
        if data_fingerprint(dataset, range(len(dataset))) != data:
            raise ExportError(
                f"dataset {config.dataset!r} differs on this worker's node from the driver's "
                "(another file at the same path?); every node must see the same data"
            )
        self.config, self.dataset = config, dataset
        self.env = make_env(config, dataset)
        self.experts = {style: make_expert(config, style) for style, _ in config.mix}

    def ready(self) -> dict[str, Any]:
        return {"model": shared_segmenter(self.config.segmenter).model_id}

    def play(self, spec: TrajectorySpec) -> Played:
        return play(self.env, self.experts[spec.style], self.dataset, spec)


def play_on_ray(
    cluster: Cluster,
    options: RayOptions,
    config: ExportConfig,
    data: dict[str, Any],
    model_id: str,
    todo: Sequence[TrajectorySpec],
) -> Iterator[tuple[TrajectorySpec, Played]]:
    """Play ``todo`` on a pool of workers; yield each trajectory as it returns (any order).

    Raises:
        ExportError: a worker could not start, has other segmenter weights, or a trajectory
            was running on three workers that died (the message says which).
    """
    workers = options.workers or default_workers(cluster, options.cpus, options.gpus)
    groups: dict[int, list[TrajectorySpec]] = {}
    for spec in todo:  # a sample's trajectories on one worker: its image encoded once
        groups.setdefault(spec.sample_index, []).append(spec)
    pool: WorkerPool[TrajectorySpec, Played] = WorkerPool(
        cluster,
        TrajectoryWorker,
        (config, data),
        workers=min(workers, len(groups)),
        cpus=options.cpus,
        gpus=options.gpus,
        what=WORKER,
    )
    try:
        try:
            reports = pool.start()
        except ClusterError as err:
            raise ExportError(str(err)) from None
        for report in reports:
            if report["info"]["model"] != model_id:
                raise ExportError(
                    f"{WORKER} on {report['host']} builds {report['info']['model']}, not "
                    f"{model_id}: install the same package and weights on every node"
                )
        yield from pool.run(list(groups.values()), "play", lambda s: f"trajectory {s.id}")
    except ClusterError as err:
        raise ExportError(str(err)) from None
    finally:
        pool.close()

"""Ray for the ``--ray`` option of the benchmark, ``precompute`` and the SFT export.

Ray is optional (``pip install "medseg-env[ray]"``): importing this module does not import it;
:func:`import_ray` does, and a missing Ray is a :class:`ClusterError` that names the extra.

- :func:`connect` starts a local Ray (no address) or joins a cluster (an address: ``host:port``
  of a head started with ``ray start --head``, ``ray://host:10001`` for Ray Client, or
  ``auto``). An address that does not answer is refused at once, by name, instead of Ray's
  own minutes of retries. It reports the cluster's dashboard when there is one.
- :class:`WorkerPool` is the one fan-out the three commands share: a pool of actors, each
  building one worker object (its own segmenter, envs and embedding cache, built once per
  process as everywhere else), that works through *groups* of items. The items of a group go
  to one worker, in order (the benchmark groups the episodes of one image, so its embedding is
  encoded once); groups go to whichever worker is free. Results come back to the driver as
  they finish: the driver alone writes files.
- When a worker dies (its process killed, its node lost), the items it had not returned run
  again on another worker, started in its place; an item that has killed
  ``max_attempts`` workers is refused with a :class:`ClusterError` naming it. An exception
  raised by the work itself (a bug, a bad sample) is not retried: it reaches the driver as it
  would in a local run.

Workers run the project's code from the installed package on every node (each node needs the
same install); environment variables named ``MEDSEG_*`` of the driver (the embedding cache
folder, ``MEDSEG_CACHE_DIR``) are set in the workers too.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

RAY_EXTRA = 'pip install "medseg-env[ray]"'
"""How to install Ray for ``--ray``: the package's ``ray`` extra."""

RAY_VERSION = "2.60"
"""The Ray release the ``ray`` extra pins (``ray[default]==2.60.*``)."""

CONNECT_TIMEOUT_S = 5.0
"""How long :func:`connect` waits for a cluster address to accept a connection."""

ENV_PREFIX = "MEDSEG_"
"""The driver's environment variables with this prefix are set in every worker."""

T = TypeVar("T")
R = TypeVar("R")


class ClusterError(RuntimeError):
    """Ray is missing, a cluster cannot be reached, or a worker pool cannot do its work."""


@dataclass(frozen=True)
class RayOptions:
    """``--ray [ADDRESS]`` and its options, as every command takes them.

    Attributes:
        address: a cluster's head (``host:port``, ``ray://host:port``, ``auto``); None or
            ``""`` starts a local Ray.
        workers: workers (default: the cluster's CPUs / ``cpus``, or its GPUs / ``gpus`` when
            workers take GPUs; :func:`default_workers`).
        cpus: CPUs per worker (Ray's accounting; the workers' torch threads are the driver's,
            see :class:`WorkerPool`).
        gpus: GPUs per worker (0: none; 1: one worker per GPU; 0.5: two per GPU).
        echo: print the cluster, its dashboard and the workers to stderr.

    Raises:
        ValueError: workers below 1, cpus not above 0, gpus below 0 (named as the options).
    """

    address: str | None = None
    workers: int | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    echo: bool = True

    def __post_init__(self) -> None:
        workers = self.workers
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise ValueError(f"--ray-workers must be an integer >= 1; got {workers!r}")
        if not self.cpus > 0:
            raise ValueError(f"--ray-cpus must be > 0 (CPUs per worker); got {self.cpus!r}")
        if not self.gpus >= 0:
            raise ValueError(f"--ray-gpus must be >= 0 (GPUs per worker); got {self.gpus!r}")

    def local_cpus(self) -> int | None:
        """The CPUs to give a local Ray: enough for ``workers`` of ``cpus`` each, at least the
        machine's; None (Ray's default, the machine's) when ``workers`` is not set."""
        if self.workers is None or self.gpus > 0:
            return None
        return max(os.cpu_count() or 1, math.ceil(self.workers * self.cpus))


def add_ray_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--ray [ADDRESS]``, ``--ray-workers``, ``--ray-cpus`` and ``--ray-gpus`` to
    ``parser``, in a group whose description says what fans out (``what``)."""
    group = parser.add_argument_group("Ray", f"{what} on a Ray cluster (needs Ray: {RAY_EXTRA})")
    group.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="no ADDRESS: start a local Ray; ADDRESS (host:port of a head started with `ray "
        "start --head`, ray://host:port, or auto): join that cluster",
    )
    group.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="workers (default: the cluster's CPUs / --ray-cpus, or its GPUs / --ray-gpus "
        "when workers take GPUs)",
    )
    group.add_argument(
        "--ray-cpus",
        type=float,
        default=1.0,
        metavar="C",
        help="CPUs per worker, as Ray accounts them (default 1)",
    )
    group.add_argument(
        "--ray-gpus",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs per worker (default 0; 1 = one worker per GPU)",
    )


def ray_options(args: argparse.Namespace) -> RayOptions | None:
    """The :class:`RayOptions` of parsed :func:`add_ray_arguments` options; None without
    ``--ray``.

    Raises:
        ValueError: a ``--ray-*`` option without ``--ray``, or a bad value (named).
    """
    if args.ray is None:
        given = [
            f"--ray-{name}"
            for name, value, default in (
                ("workers", args.ray_workers, None),
                ("cpus", args.ray_cpus, 1.0),
                ("gpus", args.ray_gpus, 0.0),
            )
            if value != default
        ]
        if given:
            raise ValueError(f"{', '.join(given)} given without --ray, which they configure")
        return None
    return RayOptions(
        address=args.ray or None, workers=args.ray_workers, cpus=args.ray_cpus, gpus=args.ray_gpus
    )


def import_ray(option: str = "--ray") -> ModuleType:
    """The ``ray`` module.

    Raises:
        ClusterError: Ray is not installed (the message names ``option`` and the extra).
    """
    try:
        import ray
    except ImportError as err:
        raise ClusterError(
            f"{option} needs Ray, which is not installed in this environment ({err}); "
            f"install it with: {RAY_EXTRA}  (Ray {RAY_VERSION})"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; None for ``auto``/``local``.

    Raises:
        ClusterError: anything else (the message shows the forms taken).
    """
    if address in ("auto", "local"):
        return None
    parsed = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme not in ("tcp", "ray") or not parsed.hostname or port is None:
        raise ClusterError(
            f"Ray address {address!r} is not host:port, ray://host:port or 'auto' "
            "(e.g. 10.0.0.1:6379 for a head started with `ray start --head`)"
        )
    return parsed.hostname, port


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse a cluster address that does not accept a TCP connection within ``timeout_s``.

    Raises:
        ClusterError: the address is malformed, or nothing answers there (the message names it).
    """
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as err:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address!r} ({type(err).__name__}: {err}); "
            "start its head with `ray start --head --port PORT` and pass that host:port, or "
            "give no address to start a local Ray"
        ) from None


@dataclass
class Cluster:
    """The Ray this process is connected to.

    Attributes:
        address: what was asked (None: a local Ray).
        started: this process started or joined Ray and disconnects in :meth:`close`; False
            when Ray was already initialised in the process (a notebook, a test), which is
            then left as it is.
        dashboard_url: ``http://host:port`` of the cluster's dashboard, or None (Ray without
            its dashboard packages: ``ray[default]``).
        nodes, cpus, gpus: the cluster's live nodes and its resources.
    """

    ray: ModuleType
    address: str | None
    started: bool
    dashboard_url: str | None
    nodes: int
    cpus: float
    gpus: float

    def describe(self) -> str:
        """One line for a person: what Ray this is, and its dashboard."""
        if not self.started:
            what = "using the Ray this process had already started or joined"
        elif self.address is None:
            what = "started a local Ray"
        else:
            what = f"joined the Ray cluster at {self.address}"
        size = f"{self.nodes} node(s), {self.cpus:g} CPU(s), {self.gpus:g} GPU(s)"
        dash = (
            f"dashboard at {self.dashboard_url}"
            if self.dashboard_url
            else "no dashboard (Ray's dashboard comes with ray[default])"
        )
        return f"Ray: {what}: {size}; {dash}"

    def close(self) -> None:
        """Disconnect (and stop a local Ray this process started)."""
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def _dashboard_url(ray: ModuleType, context: Any = None) -> str | None:
    url = getattr(context, "dashboard_url", None) if context is not None else None
    if not url:
        try:
            from ray._private.worker import get_dashboard_url

            url = get_dashboard_url()
        except Exception:  # a private helper: no dashboard shown rather than a crash
            url = None
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    option: str = "--ray",
    echo: Callable[[str], None] | None = None,
) -> Cluster:
    """Start a local Ray (``address`` None) or join the cluster at ``address``.

    ``$RAY_ADDRESS``, when set, stands for a missing ``address``, as for Ray itself; without
    either, a new local Ray starts even where another runs on the machine. When Ray is already
    initialised in this process, it is used as it is (``address`` and ``num_cpus`` are then
    ignored).

    Args:
        address: ``host:port`` of a head node (``ray start --head``), ``ray://host:port``
            (Ray Client), ``auto`` (the cluster this machine belongs to), or None.
        num_cpus: the local Ray's CPUs (default: the machine's); not allowed with an address.
        option: the command-line option, for messages.
        echo: called with :meth:`Cluster.describe` (e.g. ``print`` to stderr).

    Raises:
        ClusterError: Ray is missing (the message names the extra), or the address is
            malformed or does not answer (the message names it).
    """
    ray = import_ray(option)
    address = address or os.environ.get("RAY_ADDRESS") or None
    context = None
    if ray.is_initialized():
        started = False
    else:
        if address is not None:
            check_reachable(address)
        kwargs: dict[str, Any] = {"logging_level": "WARNING", "configure_logging": True}
        if address is None:
            # "local": a new Ray of this process, never one that another `ray start` or test
            # left on this machine (what ray.init() would join without an address)
            kwargs["num_cpus"] = num_cpus
        try:
            context = ray.init(address=address or "local", **kwargs)
        except ConnectionError as err:
            raise ClusterError(
                f"cannot join the Ray cluster at {address!r}: {err}; start one with "
                "`ray start --head` or give no address to start a local Ray"
            ) from None
        started = True
    resources = ray.cluster_resources()
    cluster = Cluster(
        ray=ray,
        address=address,
        started=started,
        dashboard_url=_dashboard_url(ray, context),
        nodes=sum(1 for n in ray.nodes() if n.get("Alive")),
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
    )
    if echo is not None:
        echo(cluster.describe())
    return cluster


class _Host:
    """The actor of a :class:`WorkerPool`: sets the process up, builds one worker object, and
    runs its methods on the items it is sent."""

    def __init__(self, spec: tuple[Callable[..., Any], tuple[Any, ...], int], name: str) -> None:
        factory, args, threads = spec
        self.name = name
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self.worker = factory(*args)

    def __repr__(self) -> str:  # Ray prefixes the worker's printed lines with it
        return self.name

    def ready(self) -> dict[str, Any]:
        """Where this worker runs, and what its worker object reports (``ready()``)."""
        import ray

        own = getattr(self.worker, "ready", None)
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "info": own() if callable(own) else None,
        }

    def call(self, method: str, item: Any) -> Any:
        return getattr(self.worker, method)(item)


@dataclass
class _Slot:
    """One actor of the pool and the groups it holds."""

    name: str
    handle: Any
    ready_ref: Any = None
    info: dict[str, Any] | None = None
    groups: dict[int, int] = field(default_factory=dict)  # group id -> items not returned
    alive: bool = True


class WorkerPool(Generic[T, R]):
    """A pool of Ray actors, each holding one ``factory(*args)`` object.

    Args:
        cluster: from :func:`connect`.
        factory: builds a worker object in each actor (a class importable on every node).
            Its method named in :meth:`run` takes one item and returns its result; an optional
            ``ready()`` returns what the driver should know about it (checked in
            :meth:`start`).
        args: the factory's arguments (pickled once, shared by every actor).
        workers: how many actors.
        cpus, gpus: each actor's Ray resources.
        threads: torch (and so ONNX Runtime) threads in each actor; None: this process's
            ``torch.get_num_threads()``. The thread count changes how float sums are split, so
            the last bits of an embedding and now and then a pixel on a mask's border: with
            this process's count, a worker computes what this process would (set it with
            ``OMP_NUM_THREADS`` or ``torch.set_num_threads``).
        what: a worker's name in messages (``"medseg-bench worker"``).
        max_attempts: workers an item may kill (die while running it) before it is refused.
        in_flight: groups queued on one worker at a time (2: the next one waits in the actor
            while the current one runs).
    """

    def __init__(
        self,
        cluster: Cluster,
        factory: Callable[..., Any],
        args: tuple[Any, ...] = (),
        *,
        workers: int,
        cpus: float = 1.0,
        gpus: float = 0.0,
        what: str = "worker",
        threads: int | None = None,
        max_attempts: int = 3,
        in_flight: int = 2,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1; got {workers!r}")
        if not cpus > 0 or gpus < 0:
            raise ValueError(f"each worker needs cpus > 0 and gpus >= 0; got {cpus}, {gpus}")
        self.cluster, self.ray = cluster, cluster.ray
        self.what, self.max_attempts, self.in_flight = what, max_attempts, in_flight
        self.workers = workers
        self.run_id = uuid.uuid4().hex[:8]
        env_vars = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        options: dict[str, Any] = {
            "num_cpus": cpus,
            "num_gpus": gpus,
            "max_restarts": 0,
            "max_task_retries": 0,
            "scheduling_strategy": "SPREAD",
        }
        if env_vars:
            options["runtime_env"] = {"env_vars": env_vars}
        self._actor, self._options = self.ray.remote(_Host), options
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        self.threads = threads
        self._args_ref = self.ray.put((factory, args, threads))
        self._slots: list[_Slot] = []
        self.deaths: list[str] = []
        """One line per worker that died during :meth:`run` (name, where, why)."""

    # --- workers ---------------------------------------------------------------------------

    def _spawn(self) -> _Slot:
        name = f"medseg-{self.run_id}-w{len(self._slots)}"
        handle = self._actor.options(name=name, **self._options).remote(self._args_ref, name)
        slot = _Slot(name, handle, handle.ready.remote())
        self._slots.append(slot)
        return slot

    def start(self) -> list[dict[str, Any]]:
        """Start the workers and wait until each has built its worker object.

        Returns:
            each worker's ``ready()`` report: ``pid``, ``node``, ``host`` and ``info`` (its
            worker object's ``ready()``).

        Raises:
            ClusterError: a worker could not start (the message gives its error); the pool is
                closed.
            whatever the worker object's constructor raised, with a note naming the worker.
        """
        slots = [self._spawn() for _ in range(self.workers)]
        reports = []
        try:
            for slot in slots:
                reports.append(self._wait_ready(slot))
        except BaseException:
            self.close()
            raise
        return reports

    def _wait_ready(self, slot: _Slot) -> dict[str, Any]:
        waited = 0.0
        while True:
            done, _ = self.ray.wait([slot.ready_ref], timeout=60.0)
            if done:
                break
            waited += 60.0
            warnings.warn(
                f"{self.what} {slot.name} is still starting after {waited:.0f} s: a busy "
                f"machine, or a cluster without the resources one asks for "
                f"({self.cluster.cpus:g} CPU(s), {self.cluster.gpus:g} GPU(s) in all)",
                RuntimeWarning,
                stacklevel=3,
            )
        try:
            report = self.ray.get(slot.ready_ref)
        except self.ray.exceptions.RayTaskError as err:
            cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else err
            cause.add_note(f"while starting {self.what} {slot.name}")
            raise cause from None
        except self.ray.exceptions.RayActorError as err:
            raise ClusterError(
                f"{self.what} {slot.name} could not start: {_first_line(err)}"
            ) from err
        slot.info, slot.ready_ref = report, None
        return dict(report)

    def close(self) -> None:
        """Stop every worker (the cluster itself stays)."""
        for slot in self._slots:
            if slot.alive:
                try:
                    self.ray.kill(slot.handle)
                except Exception:  # already gone
                    pass
                slot.alive = False

    def __enter__(self) -> WorkerPool[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- work ------------------------------------------------------------------------------

    def run(
        self,
        groups: Sequence[Sequence[T]],
        method: str,
        describe: Callable[[T], str] = repr,
    ) -> Iterator[tuple[T, R]]:
        """Run ``method`` of a worker object on every item; yield ``(item, result)`` as each
        finishes (in no fixed order).

        The items of a group run on one worker, in order. Items of a worker that dies run
        again on another; each item is yielded once.

        Raises:
            ClusterError: an item was running on ``max_attempts`` workers that died (the
                message names it, with ``describe(item)``, and the deaths).
            whatever ``method`` raised on a worker (the error of a local run), with a note.
        """
        ray = self.ray
        if not self._slots:
            self.start()
        items: list[T] = []
        queue: deque[list[int]] = deque()
        for group in groups:
            ids = list(range(len(items), len(items) + len(group)))
            items.extend(group)
            if ids:
                queue.append(ids)
        attempts = [0] * len(items)
        causes: dict[int, list[str]] = {}
        # ref -> (slot, item, group id, submission number): an actor runs its calls in the
        # order they were sent, so a dead worker's lowest outstanding number was running
        pending: dict[Any, tuple[_Slot, int, int, int]] = {}
        returned = [False] * len(items)
        next_group = 0
        sent = 0

        def assign() -> None:
            nonlocal next_group, sent
            for slot in self._slots:
                while (
                    queue
                    and slot.alive
                    and slot.ready_ref is None
                    and len(slot.groups) < self.in_flight
                ):
                    ids, gid = queue.popleft(), next_group
                    next_group += 1
                    slot.groups[gid] = len(ids)
                    for i in ids:
                        ref = slot.handle.call.remote(method, items[i])
                        pending[ref] = (slot, i, gid, sent)
                        sent += 1

        def lose(slot: _Slot, err: BaseException, popped: tuple[int, int, int]) -> None:
            """``slot`` died: requeue what it had not returned (``popped``, the item whose
            result raised, included), start another worker in its place."""
            slot.alive = False
            mine = sorted(
                [popped, *((i, gid, n) for s, i, gid, n in pending.values() if s is slot)],
                key=lambda entry: entry[2],
            )
            for ref in [r for r, (s, _, _, _) in pending.items() if s is slot]:
                del pending[ref]
            slot.groups.clear()
            where = slot.info or {}
            line = (
                f"{self.what} {slot.name} (pid {where.get('pid', '?')} on "
                f"{where.get('host', '?')}) died: {type(err).__name__}: {_first_line(err)}"
            )
            self.deaths.append(line)
            if mine:
                running = mine[0][0]  # the first sent of those not returned was running
                attempts[running] += 1
                causes.setdefault(running, []).append(line)
                if attempts[running] >= self.max_attempts:
                    raise ClusterError(
                        f"{describe(items[running])} was running on {attempts[running]} "
                        f"{self.what}s that died; giving up. " + " | ".join(causes[running])
                    )
                by_group: dict[int, list[int]] = {}  # in the order they were sent
                for i, gid, _ in mine:
                    by_group.setdefault(gid, []).append(i)
                for ids in reversed(list(by_group.values())):
                    queue.appendleft(ids)
            warnings.warn(
                f"{line}; its {len(mine)} unfinished item(s) run again on another {self.what}",
                RuntimeWarning,
                stacklevel=4,
            )
            self._spawn()

        lost_errors = (
            ray.exceptions.RayActorError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
        )
        try:
            assign()
            while pending or queue:
                starting = {s.ready_ref: s for s in self._slots if s.alive and s.ready_ref}
                waiting = list(pending) + list(starting)
                if not waiting:
                    raise ClusterError(f"no {self.what} is alive to run the remaining work")
                done, _ = ray.wait(waiting, num_returns=1, timeout=60.0)
                if not done:
                    continue
                ref = done[0]
                if ref in starting:
                    slot = starting[ref]
                    try:
                        slot.info, slot.ready_ref = ray.get(ref), None
                    except (*lost_errors, ray.exceptions.RayTaskError) as err:
                        raise ClusterError(
                            f"{self.what} {slot.name}, started in place of one that died, could "
                            f"not start: {type(err).__name__}: {_first_line(err)}"
                        ) from None
                    assign()
                    continue
                slot, i, gid, n = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except lost_errors as err:
                    if slot.alive:
                        lose(slot, err, (i, gid, n))
                    else:  # its worker is already replaced; run the item again
                        queue.appendleft([i])
                    assign()
                    continue
                except ray.exceptions.RayTaskError as err:
                    cause = (
                        err.cause if isinstance(getattr(err, "cause", None), BaseException) else err
                    )
                    cause.add_note(f"on {self.what} {slot.name} ({describe(items[i])})")
                    raise cause from None
                slot.groups[gid] -= 1
                if slot.groups[gid] == 0:
                    del slot.groups[gid]
                    assign()
                if returned[i]:
                    continue
                returned[i] = True
                yield items[i], result
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass


def _first_line(err: BaseException) -> str:
    """What a Ray error says in one line: for an actor whose constructor raised, that
    exception's last traceback line (``ValueError: ...``); else the error's first line."""
    lines = [_ANSI.sub("", line).strip() for line in str(err).strip().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    if getattr(err, "_actor_init_failed", False):
        return lines[-1]
    return lines[0]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def default_workers(cluster: Cluster, cpus: float = 1.0, gpus: float = 0.0) -> int:
    """As many workers as the cluster holds: its GPUs / ``gpus`` when workers take GPUs, else
    its CPUs / ``cpus``; at least 1."""
    if gpus > 0:
        return max(1, int(cluster.gpus // gpus))
    return max(1, int(cluster.cpus // cpus))

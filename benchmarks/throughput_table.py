"""``python -m medseg_bench.throughput --table``: the one table of the env's speed.

Every configuration a run of the env can take (backend, cold or cached embeddings, eager or ONNX
decoder, bare segmenter calls, a single env, the vector env at N sub-envs) timed on the same
seeded workload, round-robin in one process (:func:`throughput_table`): steps/s, ms per step,
the env's overhead over the bare segmenter calls, speed relative to the single env, and peak
memory. The command line is ``medseg_bench.throughput``'s.
"""

from __future__ import annotations

import csv
import inspect
import itertools
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv
from tqdm.auto import tqdm

import medseg_env  # noqa: F401  (registers the envs)
from medseg_env import actions
from medseg_env.data import Dataset
from medseg_env.env import MedSegEnv, default_config
from medseg_env.geometry import box_from_mask, jittered_box, letterbox
from medseg_env.segmenters import EmbeddingCache, Prediction, PredictRequest, Segmenter

from .memory import RANDOM_INIT, PeakMemory

TABLE_ENVS = (1, 4, 16)
TABLE_STEPS = 12
TABLE_TURNS = 3
EMBEDDINGS = ("cold", "cached")
"""``cold``: the encoder runs at every episode start (an ``EmbeddingCache(max_bytes=0)``,
which keeps nothing); ``cached``: every image the run starts on was encoded beforehand."""

TABLE_FIELDS = (
    "backend",
    "embeddings",
    "decoder",
    "form",
    "num_envs",
    "device",
    "batched",
    "rounds",
    "episodes",
    "steps",
    "seconds",
    "steps_per_s",
    "ms_per_step",
    "env_overhead",
    "vs_single_env",
    "encoder_calls",
    "decoder_calls",
    "invalid_actions",
    "peak_rss_mib",
    "peak_gpu_mib",
)
"""The fields of every row of :func:`throughput_table`, in the CSV's column order."""


class OraclePrompts:
    """The table's policy: for each sample, a fixed list of ``turns`` oracle-like actions.

    Made from the sample's target as the env letterboxes it (``obs_size``): turn 1 is the
    target's box (``geometry.jittered_box``, each side moved out by 0–2 px, at least 5 px a
    side), then clicks alternate
    between a positive click on a target pixel and a negative click on a pixel of the box
    outside the target (positive when there is none). A backend that takes no clicks gets a
    new jittered box each turn, one without boxes clicks only. Every draw comes from a
    generator seeded with ``(seed, sample index)``, so every env form, in any order, gets the
    same actions on the same sample. Actions are made on first use, outside the timed calls.
    """

    def __init__(
        self,
        dataset: Dataset,
        obs_size: int,
        turns: int,
        prompt_kinds: frozenset[str],
        seed: int = 0,
    ) -> None:
        if not {"box", "point"} & prompt_kinds:
            raise ValueError(f"a backend must take boxes or clicks; got {sorted(prompt_kinds)}")
        self.dataset, self.obs_size, self.turns = dataset, obs_size, turns
        self.boxes, self.clicks = "box" in prompt_kinds, "point" in prompt_kinds
        self.seed = seed
        self._plans: dict[int, list[actions.Action]] = {}

    def __call__(self, index: int, turn: int) -> actions.Action:
        """The action of ``turn`` (from 0) in an episode on sample ``index``."""
        if index not in self._plans:
            self._plans[index] = self._plan(index)
        return self._plans[index][turn]

    def _plan(self, index: int) -> list[actions.Action]:
        size = self.obs_size
        _, target, _ = letterbox(self.dataset[index], size)
        bbox = box_from_mask(target)
        if bbox is None:
            raise ValueError(f"sample {index} of {self.dataset.name!r} has an empty target")
        rng = np.random.default_rng([self.seed, index])
        inside = np.argwhere(target)
        r0, c0, r1, c1 = bbox
        in_box = np.zeros_like(target)
        in_box[r0 : r1 + 1, c0 : c1 + 1] = True
        outside = np.argwhere(in_box & ~target)

        def box() -> actions.Action:
            # at least 5 px a side: never degenerate
            b0, b1, b2, b3 = jittered_box(target, rng, 2, min_side=5, outward=True)
            return actions.pixel_box(b0, b1, b2, b3, size)

        def click(positive: bool) -> actions.Action:
            pool = inside if positive or len(outside) == 0 else outside
            row, col = pool[rng.integers(len(pool))]
            return actions.pixel_click(int(row), int(col), size, positive or len(outside) == 0)

        plan = []
        for turn in range(self.turns):
            if self.boxes and (turn == 0 or not self.clicks):
                plan.append(box())
            else:
                plan.append(click(positive=(turn - int(self.boxes)) % 2 == 0))
        return plan


def _stack(batch: list[actions.Action]) -> dict[str, np.ndarray]:
    """One action per sub-env, as the vector env's batched ``Dict`` action."""
    return {key: np.stack([np.asarray(a[key]) for a in batch]) for key in ("kind", "point", "box")}


@dataclass
class _Round:
    """What one round of a row did: env (or segmenter) seconds, sub-env steps, episodes."""

    seconds: float = 0.0
    steps: int = 0
    episodes: int = 0
    invalid: int = 0


class _Clock:
    """Sums the wall time of the calls it runs; on CUDA each call ends with a synchronise."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds = 0.0

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        return out


class _BareRunner:
    """The segmenter calls an env episode makes, without the env: ``encode`` (the encoder on
    cold embeddings, a cache look-up on cached ones), then ``predict_request`` per turn.

    A shadow ``MedSegEnv`` (on its own segmenter with the warm cache, untimed) plans each
    turn with ``plan_step``, so the requests are exactly the env's (its prompts, its previous
    logits, its candidate rule); only this row's segmenter calls are timed.
    """

    def __init__(
        self, seg: Segmenter, shadow: MedSegEnv, policy: OraclePrompts, seed: int, cuda: bool
    ) -> None:
        self.seg, self.shadow, self.policy, self.seed, self.cuda = seg, shadow, policy, seed, cuda

    def run_round(self, index: int) -> _Round:
        clock, result = _Clock(self.cuda), _Round(episodes=1)
        _, info = self.shadow.reset(seed=self.seed + index)
        embedding = clock(self.seg.encode, self.shadow.image)
        for turn in range(self.policy.turns):
            plan = self.shadow.plan_step(self.policy(int(info["sample_index"]), turn))
            prediction = None
            if plan.request is None:
                result.invalid += 1
            else:
                request = plan.request._replace(embedding=embedding)
                prediction = clock(self.seg.predict_request, request)
            _, _, _, _, info = self.shadow.commit_step(plan, prediction)
            result.steps += 1
        result.seconds = clock.seconds
        return result

    def preframe(self, rounds: int) -> None:
        """The resets of rounds ``0 .. rounds - 1``, untimed (see ``_EnvRunner.preframe``)."""
        for index in range(rounds):
            self.shadow.reset(seed=self.seed + index)

    def close(self) -> None:
        self.shadow.close()


class _EnvRunner:
    """One episode of ``gym.make("MedSeg-v0")``: ``reset`` and ``turns`` steps, timed."""

    def __init__(self, env: gym.Env, policy: OraclePrompts, seed: int, cuda: bool) -> None:
        self.env, self.policy, self.seed, self.cuda = env, policy, seed, cuda

    def run_round(self, index: int) -> _Round:
        clock, result = _Clock(self.cuda), _Round(episodes=1)
        _, info = clock(self.env.reset, seed=self.seed + index)
        truncated = False
        for turn in range(self.policy.turns):
            action = self.policy(int(info["sample_index"]), turn)
            _, _, _, truncated, info = clock(self.env.step, action)
            result.steps += 1
            result.invalid += info["invalid_action"] is not None
        if not truncated:
            raise RuntimeError(f"the episode did not end after {self.policy.turns} turns")
        result.seconds = clock.seconds
        return result

    def preframe(self, rounds: int) -> None:
        """The resets of rounds ``0 .. rounds - 1``, untimed: the env frames (letterboxes) a
        sample on its first reset on it and keeps the frame, so afterwards the timed rounds
        find every sample framed, as a long run would."""
        for index in range(rounds):
            self.env.reset(seed=self.seed + index)

    def close(self) -> None:
        self.env.close()


class _VectorRunner:
    """One episode on each of the vector env's N sub-envs: ``reset`` and ``turns`` steps.

    Every episode lasts ``turns`` steps, so the sub-envs end together, and the next round's
    ``reset`` starts them all again (what ``NEXT_STEP`` autoreset would do one step later).
    """

    def __init__(self, env: VectorEnv, policy: OraclePrompts, seed: int, cuda: bool) -> None:
        self.env, self.policy, self.seed, self.cuda = env, policy, seed, cuda

    def run_round(self, index: int) -> _Round:
        n = self.env.num_envs
        clock, result = _Clock(self.cuda), _Round(episodes=n)
        _, infos = clock(self.env.reset, seed=self.seed + index * n)  # sub-env i: + i
        truncated = np.zeros(n, np.bool_)
        for turn in range(self.policy.turns):
            batch = _stack([self.policy(int(i), turn) for i in infos["sample_index"]])
            _, rewards, _, truncated, infos = clock(self.env.step, batch)
            result.steps += len(rewards)  # one step of every sub-env
            result.invalid += sum(reason is not None for reason in infos["invalid_action"])
        if not truncated.all():
            raise RuntimeError(f"the episodes did not all end after {self.policy.turns} turns")
        result.seconds = clock.seconds
        return result

    def preframe(self, rounds: int) -> None:
        """The resets of rounds ``0 .. rounds - 1``, untimed (see ``_EnvRunner.preframe``)."""
        for index in range(rounds):
            self.env.reset(seed=self.seed + index * self.env.num_envs)

    def close(self) -> None:
        self.env.close()


class _DecoderCalls:
    """Counts the requests a segmenter instance decodes, at its outermost entry.

    ``MedSegEnv`` calls ``predict_request``, the vector env ``predict_request`` or
    ``predict_batch``; a ``predict_batch`` that calls ``predict_request`` is counted once.
    The wrappers are set on the instance (its class is untouched), and cost well under a
    microsecond a call.
    """

    def __init__(self, seg: Segmenter) -> None:
        self.count = 0
        self._depth = 0
        single, batch = seg.predict_request, seg.predict_batch

        def predict_request(request: PredictRequest) -> Prediction:
            return self._counted(1, single, request)

        def predict_batch(requests: Sequence[PredictRequest]) -> list[Prediction]:
            return self._counted(len(requests), batch, requests)

        seg.predict_request = predict_request  # type: ignore[method-assign]
        seg.predict_batch = predict_batch  # type: ignore[method-assign]

    def _counted(self, n: int, fn: Callable[[Any], Any], arg: Any) -> Any:
        if self._depth == 0:
            self.count += n
        self._depth += 1
        try:
            return fn(arg)
        finally:
            self._depth -= 1


@dataclass
class _Row:
    backend: str
    embeddings: str
    decoder: str
    form: str  # "bare", "env" or "vector"
    num_envs: int
    device: str
    batched: bool | None
    rounds: int
    runner: _BareRunner | _EnvRunner | _VectorRunner
    seg: Segmenter
    calls: _DecoderCalls
    totals: _Round = field(default_factory=_Round)
    encoder_calls: int = 0
    decoder_calls: int = 0
    peak_rss_mib: float | None = None
    peak_gpu_mib: float | None = None

    def run(self, index: int) -> None:
        encodes, decodes = self.seg.encoder_calls, self.calls.count
        result = self.runner.run_round(index)
        self.encoder_calls += self.seg.encoder_calls - encodes
        self.decoder_calls += self.calls.count - decodes
        t = self.totals
        t.seconds += result.seconds
        t.steps += result.steps
        t.episodes += result.episodes
        t.invalid += result.invalid

    def record(self) -> dict[str, Any]:
        t = self.totals
        return {
            "backend": self.backend,
            "embeddings": self.embeddings,
            "decoder": self.decoder,
            "form": self.form,
            "num_envs": self.num_envs,
            "device": self.device,
            "batched": self.batched,
            "rounds": self.rounds,
            "episodes": t.episodes,
            "steps": t.steps,
            "seconds": t.seconds,
            "steps_per_s": t.steps / t.seconds if t.seconds > 0 else None,
            "ms_per_step": 1000 * t.seconds / t.steps if t.steps else None,
            "env_overhead": None,
            "vs_single_env": None,
            "encoder_calls": self.encoder_calls,
            "decoder_calls": self.decoder_calls,
            "invalid_actions": t.invalid,
            "peak_rss_mib": self.peak_rss_mib,
            "peak_gpu_mib": self.peak_gpu_mib,
        }


def _factory_params(name: str) -> Mapping[str, inspect.Parameter]:
    from medseg_env.segmenters import SEGMENTERS

    try:
        return inspect.signature(SEGMENTERS.get(name)).parameters
    except (TypeError, ValueError):  # no signature to read: pass only the cache
        return {}


def _build(name: str, cache: EmbeddingCache, device: str, decoder: str, random: bool) -> Segmenter:
    """Segmenter ``name`` on ``cache``, on ``device`` where it takes one, with ``decoder``."""
    from medseg_env.segmenters import make_segmenter

    params = _factory_params(name)
    kwargs: dict[str, Any] = {"cache": cache, **(RANDOM_INIT.get(name, {}) if random else {})}
    if "device" in params:
        kwargs["device"] = device
    if "decoder" in params:  # named always: the LiteMedSAM backends' default is onnx
        kwargs["decoder"] = decoder
    return make_segmenter(name, **kwargs)


def table_backends(
    names: Sequence[str] | None, device: str = "cpu"
) -> tuple[list[tuple[str, bool]], list[str]]:
    """The backends a table runs, as ``(name, random-initialised)``, and notes on those left out.

    ``None``: every registered backend that builds with its own defaults, offline (its weights
    ship or are installed); one that needs a checkpoint (``sam``, ``medsam``, ``sam2``,
    ``medsam2``) or a missing package is left out with a note. ``["all"]``: every registered
    backend, those in ``RANDOM_INIT`` as random-initialised models of their architecture
    (same speed; their encoders take 1–20 s an image here). Names: those, random-initialised
    where ``RANDOM_INIT`` lists them.
    """
    from medseg_env.segmenters import registered_segmenters

    registered = registered_segmenters()
    if names is not None and list(names) != ["all"]:
        unknown = [n for n in names if n not in registered]
        if unknown:
            raise ValueError(f"unknown backends {unknown}; registered: {registered}")
        return [(n, n in RANDOM_INIT) for n in names], []
    if names is not None:
        return [(n, n in RANDOM_INIT) for n in registered], []
    chosen, notes = [], []
    for name in registered:
        try:
            _build(name, EmbeddingCache(max_bytes=0), device, "eager", random=False)
        except (ValueError, TypeError, ImportError, OSError) as err:
            reason = str(err).splitlines()[0].split(";")[0].split(" (")[0][:160]
            hint = "; `--backends all` times it random-initialised" if name in RANDOM_INIT else ""
            notes.append(f"`{name}` left out: {reason}{hint}")
            continue
        chosen.append((name, False))
    return chosen, notes


def _decoders(name: str, device: str) -> tuple[list[str], list[str]]:
    """``eager``, plus ``onnx`` where the backend takes a decoder and it can run here."""
    if "decoder" not in _factory_params(name):
        return ["eager"], []
    if device != "cpu":
        return ["eager"], [f"`{name}`: decoder=onnx runs on the CPU only; not in a {device} table"]
    return ["eager", "onnx"], []


def machine(device: str = "cpu") -> dict[str, Any]:
    """What the table ran on: CPU model, cores, torch and its threads, the device."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            names = [
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    meta: dict[str, Any] = {
        "cpu": cpu,
        "cores": cores,
        "system": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
    }
    try:
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        meta["onnxruntime"] = None
    return meta


def throughput_table(
    backends: Sequence[str] | None = None,
    envs: Sequence[int] = TABLE_ENVS,
    steps: int = TABLE_STEPS,
    turns: int = TABLE_TURNS,
    device: str = "cpu",
    dataset: str | Dataset = "demo",
    seed: int = 0,
    embeddings: Sequence[str] = EMBEDDINGS,
    memory: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Every configuration's throughput in one run: ``{"meta", "rows", "notes"}``.

    ## Rows

    One per backend × embeddings × decoder × form:

    - backend: ``backends`` (see :func:`table_backends`);
    - embeddings: ``cold`` (the encoder runs at every episode start: the segmenter's cache is
      an ``EmbeddingCache(max_bytes=0)``) or ``cached`` (every image was encoded beforehand);
    - decoder: ``eager``, and ``onnx`` (the fast path) where the backend has it and can run it;
    - form: ``bare`` (the segmenter calls alone: ``encode``, then ``predict_request`` with the
      env's own requests; see :class:`_BareRunner`), ``env`` (``gym.make("MedSeg-v0")``), and
      ``vector`` (``gym.make_vec("MedSeg-v0", num_envs=N)``, its default ``batch="auto"``)
      for each N in ``envs``.

    ## Workload

    Episodes of ``turns`` actions from :class:`OraclePrompts` (a box, then clicks). Episode
    ``e`` of every form starts with a reset seeded ``seed + e`` (a vector env's round ``r``
    resets with ``seed + r * N``, so sub-env ``i`` gets ``seed + r * N + i``), so forms that
    run as many episodes run the same ones. A row runs whole rounds, one episode per sub-env
    each, at least ``steps`` sub-env steps in all. Before any timing: the ``cached`` rows'
    embeddings are encoded (exactly the run's samples), and every env has reset once on each
    sample it will start on, so it has framed (letterboxed) them, as a long run would have.

    ## Timing

    The rows' rounds run round-robin (round 0 of every row, then round 1 ...), so load drift
    within the run hits every row alike. Only the env calls (``reset``, ``step``) are timed,
    or for ``bare`` the segmenter calls; the policy's action look-ups are not. With ``memory``,
    each row first runs its round 0 once more, untimed, measuring its peak memory
    (:class:`PeakMemory`); it doubles as the row's warm-up.

    ## Fields

    ``steps`` (every sub-env step), ``steps_per_s``, ``ms_per_step``, ``env_overhead``
    (``ms_per_step`` over the ``bare`` row's of the same backend, embeddings and decoder, minus
    1), ``vs_single_env`` (``steps_per_s`` over the ``env`` row's), ``encoder_calls`` and
    ``decoder_calls`` (requests decoded) in the timed rounds, ``invalid_actions``,
    ``peak_rss_mib`` and ``peak_gpu_mib``, and what produced them (:data:`TABLE_FIELDS`).

    Raises ``ValueError`` for bad arguments and ``RuntimeError`` for ``device="cuda"``
    without CUDA.
    """
    cuda = device == "cuda"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda'; got {device!r}")
    if cuda and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda: no CUDA device is available here (torch.cuda.is_available() is "
            "False); run on a machine with a GPU, or use --device cpu"
        )
    envs = sorted({int(n) for n in envs})
    if not envs or envs[0] < 1:
        raise ValueError(f"envs must be sub-env counts >= 1; got {envs}")
    if steps < 1 or turns < 1:
        raise ValueError(f"steps and turns must be >= 1; got steps={steps}, turns={turns}")
    unknown = [e for e in embeddings if e not in EMBEDDINGS]
    if unknown or not embeddings:
        raise ValueError(f"embeddings must be some of {list(EMBEDDINGS)}; got {list(embeddings)}")
    from medseg_env.data import load_dataset

    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    obs_size = int(default_config()["obs_size"])
    config: dict[str, Any] = {"dataset": data, "max_turns": turns, "obs_size": obs_size}

    def rounds(n: int) -> int:
        return max(1, math.ceil(steps / (n * turns)))

    chosen, notes = table_backends(backends, device)
    rows: list[_Row] = []
    closers: list[Callable[[], None]] = []
    try:
        for name, random in chosen:
            warm = EmbeddingCache()
            shadow = _build(name, warm, device, "eager", random)
            policy = OraclePrompts(data, obs_size, turns, shadow.prompt_kinds, seed)
            # Episode e of every form starts with a reset seeded seed + e: encode the sample of
            # each episode the run has into the warm cache, untimed.
            prewarm = MedSegEnv(segmenter=shadow, **config)
            for episode in range(max(rounds(n) * n for n in [1, *envs])):
                prewarm.reset(seed=seed + episode)
            prewarm.close()
            decoders, decoder_notes = _decoders(name, device)
            notes += decoder_notes
            for mode, decoder in itertools.product(embeddings, decoders):
                seg = _build(name, warm, device, decoder, random)
                calls = _DecoderCalls(seg)
                on = getattr(seg, "device", "cpu")  # a backend without one runs on the CPU
                seg_device = on.type if isinstance(on, torch.device) else str(on)

                bare = _BareRunner(seg, MedSegEnv(segmenter=shadow, **config), policy, seed, cuda)
                single = _EnvRunner(
                    gym.make("MedSeg-v0", segmenter=seg, **config), policy, seed, cuda
                )
                forms: list[tuple[str, int, Any, bool | None]] = [
                    ("bare", 1, bare, None),
                    ("env", 1, single, None),
                ]
                for n in envs:
                    vec = gym.make_vec(
                        "MedSeg-v0",
                        num_envs=n,
                        vectorization_mode="vector_entry_point",
                        segmenter=seg,
                        **config,
                    )
                    runner = _VectorRunner(vec, policy, seed, cuda)
                    forms.append(("vector", n, runner, getattr(vec, "batching", None)))
                for form, n, runner, batched in forms:
                    closers.append(runner.close)
                    runner.preframe(rounds(n))  # on the warm cache: no encoder call
                    rows.append(
                        _Row(
                            name,
                            mode,
                            decoder,
                            form,
                            n,
                            seg_device,
                            batched,
                            rounds(n),
                            runner,
                            seg,
                            calls,
                        )
                    )
                single.run_round(0)  # first calls: ONNX sessions, the env checker
                if mode == "cold":
                    seg.cache = EmbeddingCache(max_bytes=0)
        probe = PeakMemory(cuda)
        if memory and not probe.rss_available:
            notes.append("peak RSS not measured: needs Linux's clear_refs and glibc's malloc_trim")
        total = sum(r.rounds + int(memory) for r in rows)
        with tqdm(total=total, disable=not progress, unit="round", desc="throughput") as bar:
            for r in rows if memory else []:  # round 0 again, untimed: the row's memory
                probe.start()
                r.runner.run_round(0)
                r.peak_rss_mib, r.peak_gpu_mib = probe.stop()
                bar.update()
            for index in range(max((r.rounds for r in rows), default=0)):
                for r in rows:
                    if index < r.rounds:
                        r.run(index)
                        bar.update()
    finally:
        for close in closers:
            close()
    records = [r.record() for r in rows]
    _ratios(records)
    meta = machine(device) | {
        "steps": steps,
        "turns": turns,
        "envs": envs,
        "dataset": data.name,
        "seed": seed,
        "date": time.strftime("%Y-%m-%d"),
    }
    return {"meta": meta, "rows": records, "notes": notes}


def _ratios(records: list[dict[str, Any]]) -> None:
    """Fill ``env_overhead`` and ``vs_single_env`` from the bare and env rows of each group."""
    groups: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for rec in records:
        key = (rec["backend"], rec["embeddings"], rec["decoder"])
        if rec["form"] in ("bare", "env"):
            groups.setdefault(key, {})[rec["form"]] = rec
    for rec in records:
        group = groups.get((rec["backend"], rec["embeddings"], rec["decoder"]), {})
        bare, single = group.get("bare"), group.get("env")
        if bare is not None and rec is not bare and bare["ms_per_step"] and rec["ms_per_step"]:
            rec["env_overhead"] = rec["ms_per_step"] / bare["ms_per_step"] - 1
        if single is not None and single["steps_per_s"] and rec["steps_per_s"]:
            rec["vs_single_env"] = rec["steps_per_s"] / single["steps_per_s"]


def _form_label(rec: Mapping[str, Any]) -> str:
    if rec["form"] == "bare":
        return "bare segmenter calls"
    if rec["form"] == "env":
        return "single env"
    batched = " (batched)" if rec["batched"] else ""
    return f"vector N={rec['num_envs']}{batched}"


def table_markdown(result: Mapping[str, Any]) -> str:
    """The table as Markdown, under a line naming the machine, with its notes below."""
    meta, rows = result["meta"], result["rows"]
    gpu = f" ({meta['gpu']})" if meta.get("gpu") else ""
    ort = f", onnxruntime {meta['onnxruntime']}" if meta.get("onnxruntime") else ""
    lines = [
        f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['system']}; torch "
        f"{meta['torch']} ({meta['torch_threads']} threads){ort}; device "
        f"{meta['device']}{gpu}. {meta['date']}, dataset `{meta['dataset']}`, seed "
        f"{meta['seed']}, episodes of {meta['turns']} turns, at least {meta['steps']} steps "
        f"a row, all rows timed round-robin in one run.",
        "",
    ]
    cuda = meta["device"] == "cuda"
    head = [
        "backend",
        "embeddings",
        "decoder",
        "form",
        "steps",
        "steps/s",
        "ms/step",
        "env overhead",
        "× single env",
        "peak RSS MiB",
    ] + (["peak GPU MiB"] if cuda else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def num(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    for rec in rows:
        on = f" ({rec['device']})" if rec["device"] != meta["device"] else ""
        overhead = rec["env_overhead"]
        cells = [
            f"`{rec['backend']}`{on}",
            rec["embeddings"],
            rec["decoder"],
            _form_label(rec),
            str(rec["steps"]),
            num(rec["steps_per_s"], ".2f" if (rec["steps_per_s"] or 0) < 100 else ".0f"),
            num(rec["ms_per_step"], ".1f"),
            "–" if overhead is None else f"{100 * overhead:+.1f} %",
            num(rec["vs_single_env"], ".2f") + ("×" if rec["vs_single_env"] is not None else ""),
            num(rec["peak_rss_mib"], ".1f"),
        ] + ([num(rec["peak_gpu_mib"], ".1f")] if cuda else [])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"- {note}" for note in (*TABLE_LEGEND, *result["notes"])]]
    return "\n".join(lines)


TABLE_LEGEND = (
    "steps/s and ms/step count every sub-env step (N a vector step) over the time spent in "
    "the env's own calls (resets included; the policy's look-ups not); `bare segmenter "
    "calls` times only the segmenter calls the single env makes (encode, then predict with "
    "the env's requests).",
    "env overhead: ms/step over the bare calls' of the same backend, embeddings and decoder, "
    "minus 1; × single env: steps/s over the single env's.",
    "peak RSS: the resident memory a row's round adds at its peak, after freed memory went "
    "back to the OS; what was resident before it (models, cached embeddings, a warm ONNX "
    "Runtime arena) is not counted.",
)
"""The notes under every table: what its columns measure."""


def write_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)

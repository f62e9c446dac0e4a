"""Speed of the environment's parts, measured in one run so their ratios can be compared.

``python -m medseg_bench.throughput [--repeats N] [--segmenter NAME] [--json PATH]``

Prints milliseconds per call (median over repeats) for: a cold reset (image encode), a warm
reset (cached embedding), a box step (one decoder call), a click step after the box (one
decoder call with the mask input; click-capable segmenters only), an invalid step (no model
call), the per-step metrics, the surface metrics the benchmark adds, and what the text env
(``MedSeg-Text-v0``) adds to a reset and a box step, with PIL images and with data URLs.
Machines here are shared and noisy: compare ratios within one run, not absolute numbers across
runs.

``python -m medseg_bench.throughput --backends [NAMES]``: one row per backend: encode, box
and click predict ms on one MR slice, with each backend's default decoder
(:func:`backend_table`).

``python -m medseg_bench.throughput --decoders [NAME] [--repeats N] [--threads T]``: the bare
decoder call of a SAM-family backend (``litemedsam_clicks`` by default), eager PyTorch against
ONNX Runtime, for a box and for a click with the box's logits as mask input, timed round-robin
(:func:`decoder_bench`), with the largest logit difference between the two.

``python -m medseg_bench.throughput --table [--backends a,b|all] [--envs 1,4,16] [--steps N]
[--turns T] [--embeddings cold,cached] [--device cpu|cuda] [--json PATH] [--csv PATH]``: the
one table (``medseg_bench.throughput_table``): steps/s, ms per step, the env's overhead over
the bare segmenter calls, speed relative to the single env, and peak memory, for every backend
× cold or cached embeddings × eager or ONNX decoder × bare calls, single env and vector env at
each N, all on one seeded workload and timed round-robin in one run. A Markdown table on
stdout, its first line naming the machine; nothing is written unless ``--json`` or ``--csv``
asks.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import cast

import gymnasium as gym
import numpy as np
import torch

import medseg_env  # noqa: F401  (registers the envs)
from medseg_env import actions
from medseg_env.env import MedSegEnv, default_config
from medseg_env.geometry import box_from_mask
from medseg_env.metrics import dice_iou, hd95, nsd
from medseg_env.segmenters import EmbeddingCache, Prediction, Segmenter
from medseg_env.wrappers.text_env import MedSegTextEnv

from .memory import RANDOM_INIT
from .throughput_table import (
    EMBEDDINGS,
    TABLE_ENVS,
    TABLE_STEPS,
    TABLE_TURNS,
    table_markdown,
    throughput_table,
    write_csv,
)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(segmenter: str, repeats: int) -> dict[str, float]:
    cache = EmbeddingCache()
    env = gym.make("MedSeg-v0", segmenter=segmenter, segmenter_kwargs={"cache": cache})
    base = env.unwrapped
    assert isinstance(base, MedSegEnv)  # narrows gym.make's Env[Any, Any]
    n = len(base.dataset)
    cold_indices = iter(range(n))

    def cold_reset():
        cache.clear()
        env.reset(options={"sample_index": next(cold_indices) % n})

    results = {"cold_reset_ms": median_ms(cold_reset, min(repeats, 5))}
    results["warm_reset_ms"] = median_ms(lambda: env.reset(options={"sample_index": 0}), repeats)
    env.reset(options={"sample_index": 0})
    bbox = box_from_mask(base.ground_truth)
    if bbox is None:  # every sample has a target; unpacking None raised TypeError
        raise ValueError("the episode's ground truth is empty")
    r0, c0, r1, c1 = bbox
    box = actions.pixel_box(r0, c0, r1, c1, base.obs_size)
    degenerate = actions.box(0.5, 0.5, 0.5, 0.5)

    def fresh_step(action):
        def run():
            env.reset(options={"sample_index": 0})
            env.step(action)

        return run

    reset_ms = results["warm_reset_ms"]
    results["box_step_ms"] = median_ms(fresh_step(box), repeats) - reset_ms
    results["invalid_step_ms"] = median_ms(fresh_step(degenerate), repeats) - reset_ms
    if base.segmenter.supports("point"):  # a corrective click after the box: mask input fed
        rows, cols = base.ground_truth.nonzero()
        click = actions.pixel_click(int(rows.mean()), int(cols.mean()), base.obs_size, True)

        def box_then_click():
            env.reset(options={"sample_index": 0})
            env.step(box)
            env.step(click)

        box_ms = results["box_step_ms"] + reset_ms
        results["click_step_ms"] = median_ms(box_then_click, repeats) - box_ms
    mask, gt = base.current_mask, base.ground_truth
    env.step(box)
    mask = base.current_mask
    results["dice_iou_ms"] = median_ms(lambda: dice_iou(mask, gt), repeats * 10)
    results["nsd_ms"] = median_ms(lambda: nsd(mask, gt, (1.0, 1.0), 2.0), repeats)
    results["hd95_ms"] = median_ms(lambda: hd95(mask, gt, (1.0, 1.0)), repeats)
    results["box_steps_per_s"] = 1000 / max(results["box_step_ms"], 1e-6)
    results["invalid_steps_per_s"] = 1000 / max(results["invalid_step_ms"], 1e-6)
    results.update(measure_text(segmenter, repeats, cache, box, reset_ms, results["box_step_ms"]))
    return results


def measure_text(
    segmenter: str,
    repeats: int,
    cache: EmbeddingCache,
    box: dict,
    reset_ms: float,
    box_ms: float,
) -> dict[str, float]:
    """What ``MedSeg-Text-v0`` adds: the reply's parse, the overlay image, the messages.

    The same box as ``box_step_ms`` sent as ``medsam_agent`` reply text, with images as PIL
    images and as PNG data URLs (what a server is sent). ``*_overhead_ms`` is the text step
    minus the structured one, measured here in the same run.
    """
    out: dict[str, float] = {}
    for images in ("pil", "data_url"):
        env = MedSegTextEnv(
            MedSegEnv(segmenter=segmenter, segmenter_kwargs={"cache": cache}),
            "medsam_agent",
            images=images,
        )
        env.reset(options={"sample_index": 0})
        reply = env.render_action(box)

        def reset_only(env: MedSegTextEnv = env) -> None:
            env.reset(options={"sample_index": 0})

        def run(env: MedSegTextEnv = env, reply: str = reply) -> None:
            env.reset(options={"sample_index": 0})
            env.step(reply)

        reset = median_ms(reset_only, repeats)
        step = median_ms(run, repeats) - reset
        out[f"text_{images}_reset_ms"] = reset
        out[f"text_{images}_box_step_ms"] = step
        out[f"text_{images}_reset_overhead_ms"] = reset - reset_ms
        out[f"text_{images}_step_overhead_ms"] = step - box_ms
    return out


def interleaved_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms of each call, timed round-robin: one call of each per round, ``repeats`` rounds.

    On a shared machine the load drifts within a run; timed in turn, every call sees the same
    drift, so their ratios hold where back-to-back blocks of repeats would not.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def backend_table(
    repeats: int, names: list[str] | None = None, encode_repeats: int = 3
) -> list[dict[str, object]]:
    """Per registered backend, in one run: encode, box predict and click predict times.

    Each backend with its defaults (``decoder``: the decoder they chose, ``"onnx"`` for the
    LiteMedSAM backends on the CPU). On one MR demo sample; the click follows the box with its
    logits as mask input, as the env's click turns do. ``predict`` is the step's cost: the env
    adds well under 5 %. The predict calls of all backends are timed round-robin
    (``interleaved_ms``), then the encodes the same way with ``encode_repeats`` rounds.
    """
    from medseg_env.data import demo_dataset
    from medseg_env.segmenters import (
        Embedding,
        Prompts,
        make_segmenter,
        registered_segmenters,
    )

    sample = next(s for s in demo_dataset() if s.modality == "MR")
    rows, cols = sample.mask.nonzero()
    edges = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    box = Prompts().with_box(edges)
    cx, cy = float(cols.mean()) + 0.5, float(rows.mean()) + 0.5
    table: list[dict[str, object]] = []
    steps: dict[str, Callable[[], object]] = {}
    encodes: dict[str, Callable[[], object]] = {}
    for name in names or registered_segmenters():
        seg = make_segmenter(name, cache=EmbeddingCache(), **RANDOM_INIT.get(name, {}))

        def encode(seg: Segmenter = seg) -> None:
            seg._encode(sample.image)

        emb = seg.encode(sample.image)
        first = seg.predict(emb, box) if seg.supports("box") else None
        encodes[name] = encode
        if first is not None:

            def box_step(seg: Segmenter = seg, emb: Embedding = emb) -> None:
                seg.predict(emb, box)

            steps[f"{name}/box"] = box_step
        if seg.supports("point"):
            prompts = (box if first is not None else Prompts()).with_point(cx, cy, True)
            logits = None if first is None else first.logits

            def click_step(
                seg: Segmenter = seg,
                emb: Embedding = emb,
                prompts: Prompts = prompts,
                logits: torch.Tensor | None = logits,
            ) -> None:
                seg.predict(emb, prompts, logits)

            steps[f"{name}/click"] = click_step
        input_px = getattr(seg, "input_size", getattr(seg, "work_size", None))
        table.append(
            {
                "backend": name,
                "prompts": "+".join(sorted(seg.prompt_kinds)),
                "input": input_px,
                "decoder": seg.runtime.get("decoder"),
            }
        )
    step_ms = interleaved_ms(steps, repeats)
    encode_ms = interleaved_ms(encodes, max(1, encode_repeats))
    for row in table:
        name = str(row["backend"])
        row["encode_ms"] = encode_ms[name]
        row["box_ms"] = step_ms.get(f"{name}/box")
        row["click_ms"] = step_ms.get(f"{name}/click")
    return table


def decoder_bench(
    repeats: int = 20,
    backend: str = "litemedsam_clicks",
    warmup: int = 3,
    cache: EmbeddingCache | None = None,
) -> dict[str, float]:
    """Eager against ONNX ms for a box step and a click step of ``backend``, timed round-robin.

    On the bundled MR demo sample, as :func:`backend_table` times backends: the box alone, then
    a click at the target's centroid with the box and the box's logits (box-only backends: the
    box again, with its logits). Each round calls eager box, ONNX box, eager click, ONNX click,
    so load drift hits all alike; the figures are medians after ``warmup`` rounds. Also returns
    the speed-ups, the largest logit difference between the two decoders and the threads.
    ``cache``: the embedding cache to encode into (a new one by default).
    """
    from medseg_env.data import demo_dataset
    from medseg_env.segmenters import Prompts, make_segmenter

    sample = next(s for s in demo_dataset() if s.modality == "MR")
    rows, cols = sample.mask.nonzero()
    box = Prompts().with_box(
        np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    )
    cache = cache if cache is not None else EmbeddingCache()
    options = RANDOM_INIT.get(backend, {})
    eager = make_segmenter(backend, cache=cache, decoder="eager", **options)
    fast = make_segmenter(backend, cache=cache, decoder="onnx", **options)
    click = box.with_point(float(cols.mean()) + 0.5, float(rows.mean()) + 0.5, True)
    if not eager.supports("point"):
        click = box
    embedding = eager.encode(sample.image)
    logits = eager.predict(embedding, box).logits
    calls: dict[str, Callable[[], Prediction]] = {
        "eager_box": lambda: eager.predict(embedding, box),
        "onnx_box": lambda: fast.predict(embedding, box),
        "eager_click": lambda: eager.predict(embedding, click, logits),
        "onnx_click": lambda: fast.predict(embedding, click, logits),
    }
    largest = 0.0
    for step in ("box", "click"):
        a, b = calls[f"eager_{step}"](), calls[f"onnx_{step}"]()
        largest = max(largest, float((a.logits - b.logits).abs().max()))
    timed = cast(dict[str, Callable[[], object]], calls)
    if warmup > 0:
        interleaved_ms(timed, warmup)
    result = interleaved_ms(timed, repeats)
    result = {f"{name}_ms": ms for name, ms in result.items()}
    for step in ("box", "click"):
        result[f"{step}_speedup"] = result[f"eager_{step}_ms"] / result[f"onnx_{step}_ms"]
    result["max_logit_diff"] = largest
    result["threads"] = float(torch.get_num_threads())
    return result


def print_decoder_bench(backend: str, repeats: int, r: dict[str, float]) -> None:
    print(f"{backend}, {int(r['threads'])} threads, median of {repeats} rounds:")
    print("| step | eager ms | onnx ms | eager/onnx |")
    print("|---|---|---|---|")
    for step in ("box", "click"):
        eager_ms, fast_ms = r[f"eager_{step}_ms"], r[f"onnx_{step}_ms"]
        print(f"| {step} | {eager_ms:.1f} | {fast_ms:.1f} | {r[f'{step}_speedup']:.2f}x |")
    print(f"largest logit difference: {r['max_logit_diff']:.2e}")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--segmenter", default=default_config()["segmenter"])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument(
        "--encode-repeats", type=int, default=3, help="with --backends: rounds of encodes (3)"
    )
    parser.add_argument(
        "--backends",
        nargs="?",
        const="",
        default=None,
        metavar="NAMES",
        help=(
            "instead: one row per registered backend (encode, box and click predict ms), or "
            "per backend in NAMES (a,b,...); with --table: the backends of the table "
            "(default: every backend that builds offline with its defaults; 'all': every "
            "registered one, random-initialised where no weights ship)"
        ),
    )
    parser.add_argument(
        "--decoders",
        nargs="?",
        const="litemedsam_clicks",
        default=None,
        metavar="NAME",
        help=(
            "instead: the bare decoder call of SAM-family backend NAME (litemedsam_clicks), "
            "eager against ONNX, box and click, timed round-robin over --repeats rounds"
        ),
    )
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads")
    table = parser.add_argument_group("the one table (--table)")
    table.add_argument(
        "--table",
        action="store_true",
        help=(
            "instead: steps/s, ms per step, env overhead, × single env and peak memory per "
            "backend × cold/cached embeddings × eager/onnx decoder × bare, single env, "
            "vector env; a Markdown table on stdout"
        ),
    )
    table.add_argument(
        "--envs",
        default=",".join(map(str, TABLE_ENVS)),
        help=f"vector env sizes N (default {','.join(map(str, TABLE_ENVS))})",
    )
    table.add_argument(
        "--steps",
        type=int,
        default=TABLE_STEPS,
        help=f"at least this many sub-env steps a row, in whole rounds (default {TABLE_STEPS})",
    )
    table.add_argument(
        "--turns",
        type=int,
        default=TABLE_TURNS,
        help=f"actions an episode: a box, then clicks (default {TABLE_TURNS})",
    )
    table.add_argument(
        "--embeddings",
        default=",".join(EMBEDDINGS),
        help="cold, cached or both (default cold,cached)",
    )
    table.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    table.add_argument("--dataset", default="demo", help="registered name or path (demo)")
    table.add_argument("--seed", type=int, default=0)
    table.add_argument("--csv", help="also write the table's rows to this CSV file")
    table.add_argument(
        "--no-memory", action="store_true", help="skip the untimed peak-memory round of each row"
    )
    table.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    if args.csv and not args.table:
        parser.error("--csv needs --table")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decoders is not None:
        figures = decoder_bench(args.repeats, args.decoders)
        print_decoder_bench(args.decoders, args.repeats, figures)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump({"backend": args.decoders, **figures}, handle, indent=2, sort_keys=True)
        return
    if args.table:
        try:
            envs = [int(n) for n in _names(args.envs)]
            result = throughput_table(
                _names(args.backends or "") or None,
                envs=envs,
                steps=args.steps,
                turns=args.turns,
                device=args.device,
                dataset=args.dataset,
                seed=args.seed,
                embeddings=_names(args.embeddings),
                memory=not args.no_memory,
                progress=not args.no_progress,
            )
        except (ValueError, RuntimeError) as err:
            parser.error(str(err))
        print(table_markdown(result))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(result, handle, indent=2, sort_keys=True)
        if args.csv:
            write_csv(args.csv, result["rows"])
        return
    if args.backends is not None:
        names = _names(args.backends) or None
        rows = backend_table(args.repeats, names, encode_repeats=args.encode_repeats)
        print("| backend | prompts | input px | decoder | encode ms | box ms | click ms |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            cells = [r.get(k) for k in ("encode_ms", "box_ms", "click_ms")]
            text = ["–" if v is None else f"{v:.1f}" for v in cells]
            decoder = r["decoder"] or "–"
            print(
                f"| `{r['backend']}` | {r['prompts']} | {r['input']} | {decoder} | "
                + " | ".join(text)
                + " |"
            )
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(rows, handle, indent=2, sort_keys=True)
        return
    results = measure(args.segmenter, args.repeats)
    meta = {
        "segmenter": args.segmenter,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cuda": torch.cuda.is_available(),
    }
    print(f"# throughput ({meta})")
    for key, value in results.items():
        print(f"{key:>22}: {value:10.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "results": results}, handle, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()

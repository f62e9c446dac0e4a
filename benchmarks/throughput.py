"""Speed of the environment's parts, measured in one run so their ratios can be compared.

``python -m medseg_bench.throughput [--repeats N] [--segmenter NAME] [--json PATH]``

Prints milliseconds per call (median over repeats) for: a cold reset (image encode), a warm
reset (cached embedding), a box step (one decoder call), a click step after the box (one
decoder call with the mask input; click-capable segmenters only), an invalid step (no model
call), the per-step metrics, the surface metrics the benchmark adds, and what the text env
(``MedSeg-Text-v0``) adds to a reset and a box step, with PIL images and with data URLs.
Machines here are shared and noisy: compare ratios within one run, not absolute numbers across
runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

import medseg_env  # noqa: F401  (registers the envs)
from medseg_env import actions
from medseg_env.env import MedSegEnv, default_config
from medseg_env.geometry import box_from_mask
from medseg_env.metrics import dice_iou, hd95, nsd
from medseg_env.segmenters import EmbeddingCache
from medseg_env.wrappers.text_env import MedSegTextEnv


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


# Backends without shipped weights run as random-initialised models of their real architecture:
# the same layers at the same input size, so the same speed (never their masks).
RANDOM_INIT = {
    "sam": {"allow_random_init": True},
    "medsam": {"allow_random_init": True},
    "sam2": {"allow_random_init": True},
    "medsam2": {"allow_random_init": True},
}


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

    On one MR demo sample; the click follows the box with its logits as mask input, as the
    env's click turns do. ``predict`` is the step's cost: the env adds well under 5 %. The
    predict calls of all backends are timed round-robin (``interleaved_ms``), then the encodes
    the same way with ``encode_repeats`` rounds.
    """
    from medseg_env.data import demo_dataset
    from medseg_env.segmenters import (
        Embedding,
        Prompts,
        Segmenter,
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
            {"backend": name, "prompts": "+".join(sorted(seg.prompt_kinds)), "input": input_px}
        )
    step_ms = interleaved_ms(steps, repeats)
    encode_ms = interleaved_ms(encodes, max(1, encode_repeats))
    for row in table:
        name = str(row["backend"])
        row["encode_ms"] = encode_ms[name]
        row["box_ms"] = step_ms.get(f"{name}/box")
        row["click_ms"] = step_ms.get(f"{name}/click")
    return table


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
        action="store_true",
        help="instead: one row per registered backend (encode, box and click predict ms)",
    )
    args = parser.parse_args(argv)
    if args.backends:
        rows = backend_table(args.repeats, encode_repeats=args.encode_repeats)
        print("| backend | prompts | input px | encode ms | box ms | click ms |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            cells = [r.get(k) for k in ("encode_ms", "box_ms", "click_ms")]
            text = ["–" if v is None else f"{v:.1f}" for v in cells]
            print(
                f"| `{r['backend']}` | {r['prompts']} | {r['input']} | " + " | ".join(text) + " |"
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

"""Playing one expert trajectory through the text env: its journal entry and its images.

The expert is ``HybridExpert`` in one of MedSAM-Agent's two styles (``box``: a jittered box,
then corrective clicks; ``click``: clicks only), handed the text env itself: its oracle
(``MedSegTextEnv.oracle``) previews the action the reply text gives back (the expert's action
rendered in the protocol's grid, parsed and mapped to the canvas again), so the progress check
holds for the action the model will learn.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from PIL import Image

from medseg_agents.oracle import HybridExpert
from medseg_env import actions as A
from medseg_env.data import Dataset
from medseg_env.env import MedSegEnv
from medseg_env.segmenters import shared_segmenter
from medseg_env.text import get_protocol
from medseg_env.wrappers.text_env import MedSegTextEnv, make_text_env

from .config import ExportConfig
from .format import encode_mask, serialize
from .plan import TrajectorySpec


def make_expert(config: ExportConfig, style: str) -> HybridExpert:
    return HybridExpert(
        box_jitter_frac=config.box_jitter,
        tau=config.tau,
        max_tries=config.resamples,
        target_iou=config.target_iou,
        first=style,
    )


def make_env(config: ExportConfig, dataset: Dataset) -> MedSegTextEnv:
    """A fresh text env of the config (the protocol's turn budget and segmenter call)."""
    protocol = get_protocol(config.protocol)
    return make_text_env(
        protocol=protocol,
        images="pil",
        target_template=config.target_template,
        dataset=dataset,
        segmenter=shared_segmenter(config.segmenter),
        obs_size=config.obs_size,
        prompting=config.prompting or protocol.segmenter_call,
    )


def _sample_fields(dataset: Dataset, spec: TrajectorySpec) -> dict[str, Any]:
    sample = dataset[spec.sample_index]
    return {
        "id": spec.id,
        "sample_index": spec.sample_index,
        "sample_id": spec.sample_id,
        "source_id": sample.source_id,
        "modality": sample.modality,
        "target": sample.target,
        "k": spec.k,
        "seed": spec.seed,
        "style": spec.style,
    }


def play(
    env: MedSegTextEnv, expert: HybridExpert, dataset: Dataset, spec: TrajectorySpec
) -> tuple[dict[str, Any], dict[str, Image.Image]]:
    """One trajectory: its journal entry and the images it shows (by file name).

    The protocol's last turn is kept for the stop: a trajectory has at most ``max_turns - 1``
    prompts and ends with the protocol's stop reply. A trajectory in which the expert finds no
    first prompt, or whose action the env refuses, is ``skipped`` (the entry says why).
    """
    base = cast(MedSegEnv, env.unwrapped)
    expert.seed(spec.seed)
    messages, info = env.reset(seed=spec.seed, options={"sample_index": spec.sample_index})
    entry = _sample_fields(dataset, spec)
    entry.update(mask_shape=list(base.current_mask.shape), skipped=None, turns=[])
    images: dict[str, Image.Image] = {}
    done = False
    while not done:
        last_turn = base.turn + 1 >= base.max_turns and base.max_turns > 1
        if last_turn:
            action = A.stop()
        else:
            mask = base.current_mask
            obs = {"mask": (mask[..., None] * np.uint8(255)).astype(np.uint8)}
            action = expert.act(obs, info, env)
        is_stop = A.validate(action)[0] == A.ActionKind.STOP
        if is_stop and int(info.get("num_prompts", 0)) == 0:
            entry.update(skipped="the expert found no first prompt that makes progress", turns=[])
            return entry, {}
        reply = env.render_action(action)
        shown = serialize(messages, images)
        messages, _, terminated, truncated, info = env.step(reply)
        if info["invalid_action"] is not None:
            reason = f"turn {base.turn}: the env refused the action ({info['invalid_action']})"
            entry.update(skipped=reason, turns=[])
            return entry, {}
        entry["turns"].append(
            {
                "prompt": shown,
                "reply": reply,
                "call": info["parsed"]["call"],
                "dice": float(info["dice"]),
                "iou": float(info["iou"]),
                "mask": encode_mask(base.current_mask),
            }
        )
        done = terminated or truncated
    return entry, images

"""verl's parquet rows for ``MedSeg-Text-v0`` episodes (``python -m`` this module).

One row per (sample, seed) of a dataset, in the layout verl 0.9.1's ``RLHFDataset`` reads
(``verl/utils/dataset/rl_dataset.py``) and MedSAM-Agent's ``medsam_dataset.py`` built:

- ``prompt``: ``[system, user]`` chat messages with string contents: the protocol's system
  prompt, then ``"<image>"`` + the protocol's first-turn text (verl replaces ``<image>`` by the
  row's image, before the text, as the released code orders them);
- ``images``: ``[{"bytes": PNG}]``, the first turn's view of the sample (the protocol's image
  rule: for ``medsam_agent_rl`` the image stretched to 512×512), lossless;
- ``agent_name``: ``medseg_agent`` (``medseg_agents.training.verl.verl_agent_loop``);
- ``extra_info``: ``index``, ``sample_id``, ``seed``, ``need_tools_kwargs`` and
  ``tools_kwargs``: for each of the three tools ``{"create_kwargs": EpisodeSpec}`` (dataset,
  sample index and id, seed, protocol, segmenter, reward, env options), what the tools'
  ``create`` reads to open the episode;
- ``data_source`` (``medseg/<dataset>``), ``ability``, ``reward_model``
  (``{"style": "env", "ground_truth": sample_id}``: the env computes the reward; verl's reward
  function is never called, the agent loop sets the score).

The first turn is built with the text env's own pieces (``MedSegTextEnv.target_text``, the
protocol's ``first_user_text``, ``model_image`` with no mask), without loading the segmenter;
the agent loop checks each row's prompt against its episode's first turn.

    python -m medseg_agents.training.verl.verl_data --out data/verl    # demo -> train.parquet
    python -m medseg_agents.training.verl.verl_data --out DIR --dataset demo --val-dataset VAL \
        --seeds 0 1

A validation set comes from training sources (``VAL``: a manifest or folder of images kept out
of training); ``demo-heldout`` is the project's final held-out set, not for choosing runs.

Needs pandas and pyarrow, not verl.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg_env.data import load_dataset
from medseg_env.text import TOOL_NAMES, get_protocol
from medseg_env.text.messages import model_image
from medseg_env.wrappers.text_env import DEFAULT_TARGET_TEMPLATE

AGENT_NAME = "medseg_agent"
IMAGE_PLACEHOLDER = "<image>"
"""What verl's ``RLHFDataset._build_messages`` replaces by the row's next image."""


def create_kwargs(
    dataset: str,
    sample_index: int,
    sample_id: str,
    seed: int,
    *,
    protocol: str,
    segmenter: str,
    reward: str,
    env_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``create_kwargs`` of one episode (``verl_tools.EpisodeSpec``'s keys)."""
    return {
        "dataset": dataset,
        "sample_index": int(sample_index),
        "sample_id": sample_id,
        "seed": int(seed),
        "protocol": protocol,
        "segmenter": segmenter,
        "reward": reward,
        "env_options": json.dumps(env_options or {}, sort_keys=True),
    }


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def verl_rows(
    dataset: str = "demo",
    *,
    protocol: str = "medsam_agent_rl",
    segmenter: str = "litemedsam_clicks",
    reward: str = "medsam_agent",
    seeds: Sequence[int] = (0,),
    limit: int | None = None,
    env_options: dict[str, Any] | None = None,
    target_template: str = DEFAULT_TARGET_TEMPLATE,
) -> list[dict[str, Any]]:
    """The parquet rows of ``dataset`` (its first ``limit`` samples), one per (sample, seed)."""
    proto = get_protocol(protocol)
    if IMAGE_PLACEHOLDER in proto.first_user_text("x"):
        raise ValueError(
            f"protocol {proto.name!r} writes a literal {IMAGE_PLACEHOLDER!r} in its text, which "
            "verl's dataset would read as a second image; use medsam_agent_rl"
        )
    data = load_dataset(dataset)
    count = len(data) if limit is None else min(int(limit), len(data))
    rows: list[dict[str, Any]] = []
    for index in range(count):
        sample = data[index]
        target = target_template.format(target=sample.target, modality=sample.modality)
        text = proto.first_user_text(target)
        view = model_image(
            sample.image, None, proto.image_rule, proto.overlay_color, proto.overlay_alpha
        )
        image = {"bytes": png_bytes(view)}
        for seed in seeds:
            create = create_kwargs(
                dataset,
                index,
                sample.sample_id,
                seed,
                protocol=proto.name,
                segmenter=segmenter,
                reward=reward,
                env_options=env_options,
            )
            rows.append(
                {
                    "data_source": f"medseg/{dataset}",
                    "agent_name": AGENT_NAME,
                    "prompt": [
                        {"role": "system", "content": proto.system_prompt},
                        {"role": "user", "content": IMAGE_PLACEHOLDER + text},
                    ],
                    "images": [image],
                    "ability": "segmentation",
                    "reward_model": {"style": "env", "ground_truth": sample.sample_id},
                    "extra_info": {
                        "index": len(rows),
                        "sample_id": sample.sample_id,
                        "seed": int(seed),
                        "need_tools_kwargs": True,
                        "tools_kwargs": {
                            name: {"create_kwargs": dict(create)} for name in TOOL_NAMES
                        },
                    },
                }
            )
    return rows


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` as one parquet file (pandas + pyarrow)."""
    try:
        pd = importlib.import_module("pandas")
    except ImportError as err:  # pragma: no cover - the dev venv has pandas
        raise ImportError("writing verl's parquet needs pandas and pyarrow") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``medseg-train verl-data``."""
    parser.add_argument("--out", required=True, help="folder for train.parquet / val.parquet")
    parser.add_argument("--dataset", default="demo", help="the training dataset (default demo)")
    parser.add_argument(
        "--val-dataset",
        default="",
        help="the validation dataset (default: none). Carve it from training sources (a "
        "manifest of other images); demo-heldout is the final held-out set, not for tuning",
    )
    parser.add_argument("--protocol", default="medsam_agent_rl")
    parser.add_argument("--segmenter", default="litemedsam_clicks")
    parser.add_argument("--reward", default="medsam_agent")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one row per seed")
    parser.add_argument("--limit", type=int, default=None, help="first N samples of each")
    parser.add_argument(
        "--env-options", default="{}", help="more MedSeg-v0 options, as JSON (e.g. obs_size)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medseg-train verl-data", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Write ``train.parquet`` (and ``val.parquet``) into ``--out``."""
    options = json.loads(args.env_options)
    if not isinstance(options, dict):
        raise ValueError(f"--env-options must be a JSON object; got {args.env_options!r}")
    common: dict[str, Any] = dict(
        protocol=args.protocol,
        segmenter=args.segmenter,
        reward=args.reward,
        seeds=args.seeds,
        limit=args.limit,
        env_options=options,
    )
    out = Path(args.out)
    splits = [("train", args.dataset)] + ([("val", args.val_dataset)] if args.val_dataset else [])
    for split, name in splits:
        rows = verl_rows(name, **common)
        path = write_parquet(rows, out / f"{split}.parquet")
        print(f"{path}: {len(rows)} rows of {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

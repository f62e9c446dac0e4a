"""Fine-tune LiteMedSAM's prompt encoder + mask decoder for click prompts (image encoder frozen).

Recipe (SAM's interactive training, Kirillov et al. 2023, §A): each sample starts with a box
(probability ``--p-box``) or a click, then gets 3-8 rounds of corrective clicks taken from the
error of the model's own previous prediction (the RITM simulator, ``medseg_agents.clickers``,
with a random choice among near-maximal error pixels for variety). The previous low-res logits
are fed back as ``mask_input`` (detached between rounds). Every round gets a BCE + Dice loss,
later rounds weighted up, and the box's own answer weighted by ``--box-weight`` (so that
box-only quality is kept). Two terms make the model obey the clicks rather than copy the
fed-back mask, which it otherwise learns to do: a BCE on the logits at every clicked pixel
against the click's label (``--click-weight``), and dropping the mask input for a sample in a
round with probability ``--p-no-mask``. The image embeddings are computed once and cached
(``--cache``, the project's on-disk ``EmbeddingCache``), so training is decoder passes only.

The shipped weights are two runs. Stage 1 is this command's defaults. Stage 2 warm-starts from
stage 1 (``--init``, same images via ``--data-seed 0`` and stage 1's cache) with short
episodes, a loss on every round, more box starts and nuclei, a lighter click term and
``--regress-weight``: a hinge on a round's soft Dice falling below the previous round's, so
that a corrective click on an already good mask does not make it worse (see
``medseg_env/segmenters/weights/MODEL_CARD.md`` for the exact command and its results).

The training images are described in ``medseg_agents.training.click_model.data``; the held-out
split (pyradiomics ``brain2``, ``lung2`` and the stardist nuclei rows 256-511) is never read.

Usage::

    python -m medseg_agents.training.click_model.train --out DIR \
        --pyradiomics /tmp/src/pyradiomics --stardist /tmp/src/sd --nilearn /tmp/src/nl \
        [--seed 0] [--iters 500] [--encode-only]

Writes ``DIR/litemedsam_clicks.safetensors`` (prompt encoder + mask decoder state, prefixed
``prompt_encoder.`` / ``mask_decoder.``), ``DIR/checkpoint_XXXX.safetensors`` every
``--ckpt-every`` iterations, ``DIR/train_log.jsonl``, ``DIR/items.json`` and
``DIR/config.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .loop import train

FAMILY_WEIGHTS = {"pyradiomics": 0.5, "stardist": 0.2, "nilearn": 0.1, "procedural": 0.2}


def family_weights(text: str) -> dict[str, float]:
    """``"stardist=0.35,pyradiomics=0.4"`` → the default shares with those replaced."""
    out = dict(FAMILY_WEIGHTS)
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in out:
            raise argparse.ArgumentTypeError(
                f"unknown source family {name!r}; expected one of {sorted(out)}"
            )
        out[name] = float(value)
    return out


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Sources, output, cache and the image counts."""
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pyradiomics", type=Path, default=Path("/tmp/src/pyradiomics"))
    p.add_argument("--stardist", type=Path, default=Path("/tmp/src/sd"))
    p.add_argument("--nilearn", type=Path, default=Path("/tmp/src/nl"))
    p.add_argument("--cache", type=Path, default=None, help="embedding cache (default OUT/emb)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed of the image crops and views (default --seed); a warm-start stage keeps the "
        "first run's images by passing its seed here",
    )
    p.add_argument("--zooms", type=int, default=3, help="zoom crops per tumour slice")
    p.add_argument(
        "--zoom-outs", type=int, default=2, help="shrunk copies per tumour slice (small lesions)"
    )
    p.add_argument("--nuclei", type=int, default=40, help="nuclei crops")
    p.add_argument("--mni", type=int, default=16, help="MNI152 crops")
    p.add_argument("--shapes", type=int, default=20, help="procedural images")


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The optimisation and the simulated prompting."""
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--min-rounds", type=int, default=3, help="corrective rounds, min")
    p.add_argument("--max-rounds", type=int, default=8, help="corrective rounds, max")
    p.add_argument("--p-grad", type=float, default=0.3, help="P(loss on a middle round)")
    p.add_argument("--last-weight", type=float, default=3.0, help="loss weight of the last round")
    p.add_argument("--p-box", type=float, default=0.4, help="probability to start with a box")
    p.add_argument("--p-exact", type=float, default=0.5, help="probability of the exact RITM click")
    p.add_argument(
        "--p-no-mask", type=float, default=0.2, help="P(a round gets no fed-back mask input)"
    )
    p.add_argument(
        "--click-weight", type=float, default=1.0, help="weight of the BCE at the clicked pixels"
    )
    p.add_argument(
        "--regress-weight",
        type=float,
        default=0.0,
        help="weight of the hinge on a round's soft Dice falling below the previous round's",
    )
    p.add_argument(
        "--box-weight", type=float, default=3.0, help="loss factor of a box's first answer"
    )
    p.add_argument(
        "--family-weights",
        type=family_weights,
        default=dict(FAMILY_WEIGHTS),
        help="batch share of each source family, e.g. stardist=0.35 (others keep their default)",
    )
    p.add_argument("--warmup", type=int, default=20, help="linear lr warm-up iterations")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Checkpoints, device, warm start and image selection."""
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--encode-only", action="store_true")
    p.add_argument("--init", type=Path, default=None, help="start from these weights")
    p.add_argument("--cached-only", action="store_true", help="skip images not in --cache")
    p.add_argument(
        "--items",
        type=Path,
        default=None,
        help="use exactly these images: a run's items.json or a weights file (its metadata)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``medseg-train click-model-train``."""
    add_data_options(p)
    add_recipe_options(p)
    add_run_options(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medseg-train click-model-train", description=__doc__.split("\n\n")[0]
    )
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Train (see the module docstring)."""
    if args.cache is None:
        args.cache = args.out / "emb"
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

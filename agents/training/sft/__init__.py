"""The SFT export: expert trajectories through ``MedSeg-Text-v0`` → SFT chat datasets.

``medseg-train export-sft`` (``export_sft``). The expert is ``HybridExpert`` (MedSAM-Agent's
hybrid prompting with progress-constrained sampling) in MedSAM-Agent's two styles, drawn per
trajectory from ``mix``: ``box`` (a jittered box, then corrective clicks) and ``click`` (click
sequences, no box). Every corrective action must raise the IoU by at least ``tau`` (up to
``resamples`` candidates a turn; else the expert stops); the expert stops once the IoU reaches
``target_iou``.

Each trajectory is played through the text env of a registered protocol (``medsam_agent`` by
default) on one sample: the user turns and images are exactly the env's observation, the
assistant turns the protocol's ``render_action`` text of each expert action (``play``).

**Output folder** (``--out``; default ``$MEDSEG_SFT_DIR/<hash>`` or
``${XDG_CACHE_HOME:-~/.cache}/medseg-env/sft/<hash>``, never the current directory): TRL and
LLaMA-Factory rows, the images, the journal, the config and the counts, as ``format`` defines
them (the one definition the writer and every reader use). Where a protocol writes a literal
``<image>`` right after its image (MedSAM-Agent's EVAL path), that text becomes the image's
placeholder in the LLaMA-Factory rows; train on ``medsam_agent_rl`` exports, which have no
literal, to avoid the question. Checked with LLaMA-Factory 0.9.5's own loader
(``tests/training/test_llamafactory_loader.py``): use the ``qwen3_vl_nothink`` template for
Qwen3-VL Instruct, ``mask_history: true`` for the per-turn rows, and a ``cutoff_len`` above the
longest row (``configs/llamafactory_sft.yaml``). A protocol that keeps less history than a
trajectory (SegAgent keeps none) should be trained on the per-turn rows (``--records turn``).

**Replay check** (``verify``): after every export, and with ``--verify`` alone; a failure
raises ``ReplayCheckError`` (the CLI exits with status 1).

**Splits** (``plan``): ``split="train"`` (the default) or ``"val"`` exports one side of a
seeded split of the dataset into groups that never straddle it: ``split_by="image"`` (the
default; the 2D image a sample is cut from, by pixel content) or ``"source"``
(``sample.source_id``: on ``demo`` only 4 groups, 78 of the 90 targets in one). About
``val_fraction`` of the samples go to ``val``; the split depends on ``split_seed`` and the data
only, so a change of seed never moves a val sample into train. ``limit`` exports the first
``limit`` trajectories of the plan. A held-out dataset (``Dataset.heldout``, such as
``demo-heldout``) is refused: it is reserved for the final evaluation.

**Determinism and resume** (``journal``): every trajectory is seeded from (seed, dataset,
sample id, index) and written to the journal as it ends (fsynced; images first, atomically); a
re-run of the same config in the same folder skips the finished ones (a ``limit`` is not part
of the config, so a limited run is resumed by the full one). The same config, data and package
versions give byte-identical files. One export per folder (``medseg_env.files.folder_lock``).

Modules: ``config`` (``ExportConfig``, errors), ``plan``, ``play``, ``format``, ``journal``,
``export``, ``verify``, ``cli``.
"""

from .config import (
    SPLIT_BY,
    SPLITS,
    STYLES,
    ExportConfig,
    ExportError,
    ReplayCheckError,
    parse_mix,
)
from .export import ExportResult, export_sft
from .format import (
    CONFIG_FILE,
    DATA_FILES,
    FORMAT,
    FORMATS,
    IMAGE_DIR,
    IMAGE_TOKEN,
    JOURNAL_FILE,
    LF_FILE,
    LF_INFO_FILE,
    LF_NAME,
    LF_TURNS_FILE,
    RECORDS,
    STATS_FILE,
    TRL_FILE,
    TRL_TURNS_FILE,
    build_rows,
    dataset_info,
    load_trl_dataset,
    read_entries,
    read_export_doc,
    read_rows,
)
from .plan import TrajectorySpec, default_out_dir, load_export_dataset, make_plan, split_indices
from .play import play
from .verify import REPLAY_MIN_DICE, ReplayReport, verify

__all__ = [
    "CONFIG_FILE",
    "DATA_FILES",
    "FORMAT",
    "FORMATS",
    "IMAGE_DIR",
    "IMAGE_TOKEN",
    "JOURNAL_FILE",
    "LF_FILE",
    "LF_INFO_FILE",
    "LF_NAME",
    "LF_TURNS_FILE",
    "RECORDS",
    "REPLAY_MIN_DICE",
    "SPLITS",
    "SPLIT_BY",
    "STATS_FILE",
    "STYLES",
    "TRL_FILE",
    "TRL_TURNS_FILE",
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "ReplayCheckError",
    "ReplayReport",
    "TrajectorySpec",
    "build_rows",
    "dataset_info",
    "default_out_dir",
    "export_sft",
    "load_export_dataset",
    "load_trl_dataset",
    "make_plan",
    "parse_mix",
    "play",
    "read_entries",
    "read_export_doc",
    "read_rows",
    "split_indices",
    "verify",
]

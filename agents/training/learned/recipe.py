"""The learned agent's recipe, SFT then RL, as one resumable run (``medseg-train learned``).

Stages, each skipped when its output exists, so a run that was stopped picks up where it was:

1. **data**: the split of ``demo`` (``data.train_val``), every image encoded once into the run's
   embedding cache (``embeddings/``, reused by every later stage and run), and the expert's
   turns (``demos.npz``);
2. **sft**: behaviour cloning (``imitation``), the validation Dice every ``sft_eval_every``
   steps, the best checkpoint kept (``sft/best``);
3. **rl**: GRPO from the SFT weights (``grpo``), validated every ``rl_eval_every`` iterations,
   the best kept (``rl/best``).

Everything is chosen on the validation split; ``demo-heldout`` is never read. Each stage writes
its curve (``sft/curve.csv``, ``rl/curve.csv``); ``curves.png`` plots both and ``summary.json``
holds the best validation figures and each stage's wall time (summed over resumed runs).
The same config and seed give the same run (CPU, one process).
"""

from __future__ import annotations

import copy
import csv
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medseg_agents import make_policy
from medseg_agents.learned.checkpoint import load_checkpoint, save_checkpoint
from medseg_agents.learned.network import PolicySpec, PromptNet
from medseg_env.data import Dataset
from medseg_env.env import MedSegEnv
from medseg_env.files import atomic_write
from medseg_env.registry import parse_spec
from medseg_env.segmenters import EmbeddingCache, Segmenter, make_segmenter

from . import grpo, imitation
from .data import train_val
from .expert import Demonstrations, collect
from .rollout import play

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class RecipeConfig:
    """Everything that decides a run (``config.json``); the defaults are the shipped agent's."""

    dataset: str = "demo"
    segmenter: str = "litemedsam_clicks"
    orientations: int = 8
    per_sample: int = 2
    crop: int = 96
    cell: int = 1
    width: int = 12
    horizon: int = 5
    seed: int = 0
    sft_steps: int = 1500
    sft_batch: int = 32
    sft_lr: float = 1e-3
    sft_eval_every: int = 250
    rl_iterations: int = 60
    rl_eval_every: int = 5
    grpo: grpo.GRPOSettings = field(default_factory=grpo.GRPOSettings)

    @property
    def spec(self) -> PolicySpec:
        return PolicySpec(crop=self.crop, cell=self.cell, width=self.width, horizon=self.horizon)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipeConfig:
        data = dict(data)
        data["grpo"] = grpo.GRPOSettings(**data.get("grpo", {}))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown recipe config key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class Run:
    """What every stage shares: the folder, the config, the envs and the segmenter."""

    out: Path
    config: RecipeConfig
    train: Dataset
    val: Dataset
    segmenter: Segmenter
    train_envs: list[MedSegEnv]
    val_envs: list[MedSegEnv]
    log: Any = print


def _env(dataset: Dataset, segmenter: Segmenter, horizon: int) -> MedSegEnv:
    return MedSegEnv(
        dataset=dataset,
        segmenter=segmenter,
        max_turns=horizon,
        target_hint=True,
        reward="dice_gain",
    )


def prepare(
    out: str | Path,
    config: RecipeConfig,
    log: Any = print,
    dataset: Dataset | None = None,
    embeddings: str | Path | None = None,
) -> Run:
    """The run folder (refusing one of another config), the data split, the envs.

    ``dataset`` replaces the dataset ``config.dataset`` names (a test's small one);
    ``embeddings`` is the embedding cache's folder (default ``out/embeddings``; runs may share
    one, as entries are keyed by image content and model).
    """
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    saved = out / CONFIG_FILE
    doc = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    if saved.exists():
        if json.loads(saved.read_text()) != json.loads(doc):
            raise ValueError(
                f"{out} holds a run of another config ({saved}); choose another --out folder"
            )
    else:
        atomic_write(saved, doc)
    train, val = train_val(
        config.dataset if dataset is None else dataset, orientations=config.orientations
    )
    name, kwargs = parse_spec(config.segmenter, "segmenter")
    # every oriented image's embedding stays in memory (4 MiB each at 256 px) and on disk
    cache = EmbeddingCache(max_bytes=2 * 1024**3, disk_dir=embeddings or out / "embeddings")
    segmenter = make_segmenter(name, cache=cache, **kwargs)
    group = config.grpo.group
    return Run(
        out,
        config,
        train,
        val,
        segmenter,
        [_env(train, segmenter, config.horizon) for _ in range(group)],
        [_env(val, segmenter, config.horizon) for _ in range(group)],
        log,
    )


def encode_all(run: Run) -> None:
    """Encode every image of both splits once (a reset per sample fills the cache)."""
    for env in (run.train_envs[0], run.val_envs[0]):
        for index in tqdm(range(len(env.dataset)), desc=f"encode {env.dataset.name}"):
            env.reset(options={"sample_index": index})


def evaluate(net: PromptNet, run: Run) -> dict[str, float]:
    """Greedy episodes on every validation sample: mean Dice, overall and per source."""
    envs = run.val_envs
    dices: dict[str, list[float]] = {}
    for start in range(0, len(run.val), len(envs)):
        batch = list(range(start, min(start + len(envs), len(run.val))))
        for episode in play(net, envs, batch):
            dices.setdefault(episode.source, []).append(episode.dice)
    return _scores(dices)


def _scores(dices: dict[str, list[float]]) -> dict[str, float]:
    everything = [d for values in dices.values() for d in values]
    return {
        "val_dice": float(np.mean(everything)),
        **{f"val_{k}": float(np.mean(v)) for k, v in sorted(dices.items())},
    }


BASELINES = ("hint_click", "hint_box", "oracle_box", "hybrid_expert")
"""The rows the agent is compared with on the validation split (``summary.json``)."""


def evaluate_policy(name: str, run: Run) -> dict[str, float]:
    """A registered policy's validation Dice under the agent's horizon (for the summary)."""
    policy = make_policy(name)
    env = run.val_envs[0]
    dices: dict[str, list[float]] = {}
    for index in range(len(run.val)):
        policy.seed(index)
        obs, info = env.reset(options={"sample_index": index})
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(policy.act(obs, info, env))
            done = terminated or truncated
        dices.setdefault(str(info["source_id"]), []).append(float(info["dice"]))
    return _scores(dices)


# ---------------------------------------------------------------------------------------------
# Resumable state
# ---------------------------------------------------------------------------------------------


def _save_state(folder: Path, state: dict[str, Any]) -> None:
    atomic_write(folder / STATE_FILE, lambda tmp: torch.save(state, tmp))


def _load_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    if not path.exists():
        return None
    return torch.load(path, weights_only=True)


def _append_curve(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _read_curve(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def stage_data(run: Run) -> Demonstrations:
    path = run.out / "demos.npz"
    if path.exists():
        return Demonstrations.load(str(path)).at_cell(run.config.cell)
    start = time.perf_counter()
    encode_all(run)
    demos = collect(run.train_envs[0], run.config.spec, run.config.per_sample, run.config.seed)
    _add_time(run, "data", time.perf_counter() - start)
    start = time.perf_counter()
    baselines = {name: evaluate_policy(name, run) for name in BASELINES}
    _update_summary(run, {"baselines": baselines})
    _add_time(run, "baselines", time.perf_counter() - start)
    atomic_write(path, demos.write)  # last: its presence marks the stage done
    demos = demos.at_cell(run.config.cell)
    for name, scores in baselines.items():
        run.log(f"baseline {name}: val Dice {scores['val_dice']:.3f}")
    run.log(
        f"expert: {len(demos)} turns from {len(demos.dice)} trajectories, "
        f"Dice {demos.dice.mean():.3f}"
    )
    return demos


def stage_sft(run: Run, demos: Demonstrations) -> PromptNet:
    cfg, folder = run.config, run.out / "sft"
    folder.mkdir(exist_ok=True)
    torch.manual_seed(cfg.seed)
    net = PromptNet(cfg.spec)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.sft_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.sft_steps)
    rng = np.random.default_rng(cfg.seed)
    step, best = 0, -1.0
    state = _load_state(folder)
    if state is not None:
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = json.loads(state["rng"])
        step, best = int(state["step"]), float(state["best"])
    if step >= cfg.sft_steps:
        return _best(folder, cfg)
    if step == 0:
        _append_curve(
            folder / "curve.csv", {"step": 0, "loss": "", **evaluate(net, run), "seconds": 0.0}
        )
    while step < cfg.sft_steps:
        start = time.perf_counter()
        n = min(cfg.sft_eval_every, cfg.sft_steps - step)
        losses = imitation.bc_steps(net, optimizer, demos, rng, n, cfg.sft_batch)
        for _ in range(n):
            schedule.step()
        step += n
        scores = evaluate(net, run)
        best = _keep_if_best(folder, net, scores, best, {"stage": "sft", "step": step}, cfg)
        seconds = _add_time(run, "sft", time.perf_counter() - start)
        _append_curve(
            folder / "curve.csv",
            {
                "step": step,
                "loss": round(losses["loss"], 5),
                **scores,
                "seconds": round(seconds, 1),
            },
        )
        run.log(
            f"sft step {step}: loss {losses['loss']:.3f}, "
            f"val Dice {scores['val_dice']:.3f} (best {best:.3f})"
        )
        _save_state(
            folder,
            {
                "net": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": json.dumps(rng.bit_generator.state),
                "step": step,
                "best": best,
            },
        )
    return _best(folder, cfg)


def stage_rl(run: Run, sft: PromptNet) -> PromptNet:
    cfg, folder = run.config, run.out / "rl"
    folder.mkdir(exist_ok=True)
    settings = cfg.grpo
    net = copy.deepcopy(sft)
    reference = copy.deepcopy(sft).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    rng = np.random.default_rng(cfg.seed + 1)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    iteration, best = 0, -1.0
    state = _load_state(folder)
    if state is not None:
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = json.loads(state["rng"])
        generator.set_state(state["generator"])
        iteration, best = int(state["iteration"]), float(state["best"])
    if iteration >= cfg.rl_iterations:
        return _best(folder, cfg)
    if iteration == 0:
        scores = evaluate(net, run)
        best = scores["val_dice"]
        save_checkpoint(
            folder / "best", net, {"stage": "rl", "iteration": 0, **scores, "config": cfg.to_dict()}
        )
        _append_curve(
            folder / "curve.csv",
            {"iteration": 0, "return": "", "train_dice": "", "kl": "", **scores, "seconds": 0.0},
        )
    while iteration < cfg.rl_iterations:
        start = time.perf_counter()
        returns, dices = [], []
        for _ in range(cfg.rl_eval_every):
            samples = rng.choice(len(run.train), size=settings.targets, replace=False)
            episodes = grpo.collect(
                net, run.train_envs, samples.tolist(), settings.group, generator
            )
            stats = grpo.update(net, reference, optimizer, episodes, settings, rng)
            returns += [e.ret for e in episodes]
            dices += [e.dice for e in episodes]
            iteration += 1
            if iteration >= cfg.rl_iterations:
                break
        scores = evaluate(net, run)
        best = _keep_if_best(
            folder, net, scores, best, {"stage": "rl", "iteration": iteration}, cfg
        )
        seconds = _add_time(run, "rl", time.perf_counter() - start)
        _append_curve(
            folder / "curve.csv",
            {
                "iteration": iteration,
                "return": round(float(np.mean(returns)), 4),
                "train_dice": round(float(np.mean(dices)), 4),
                "kl": round(stats["kl"], 5),
                **scores,
                "seconds": round(seconds, 1),
            },
        )
        run.log(
            f"rl iteration {iteration}: train Dice {np.mean(dices):.3f}, "
            f"val Dice {scores['val_dice']:.3f} (best {best:.3f})"
        )
        _save_state(
            folder,
            {
                "net": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": json.dumps(rng.bit_generator.state),
                "generator": generator.get_state(),
                "iteration": iteration,
                "best": best,
            },
        )
    return _best(folder, cfg)


def _keep_if_best(
    folder: Path,
    net: PromptNet,
    scores: dict[str, float],
    best: float,
    where: dict[str, Any],
    cfg: RecipeConfig,
) -> float:
    """Save ``net`` as ``folder/best`` when its validation Dice beats ``best``; the new best."""
    if scores["val_dice"] <= best:
        return best
    save_checkpoint(folder / "best", net, {**where, **scores, "config": cfg.to_dict()})
    return scores["val_dice"]


def _best(folder: Path, cfg: RecipeConfig) -> PromptNet:
    net, _ = load_checkpoint(folder / "best")
    return net


def _update_summary(run: Run, entries: dict[str, Any]) -> None:
    path = run.out / SUMMARY_FILE
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(entries)
    atomic_write(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")


def _add_time(run: Run, stage: str, seconds: float) -> float:
    """Add to a stage's wall time in ``summary.json`` (summed over resumed runs); the total."""
    path = run.out / SUMMARY_FILE
    summary = json.loads(path.read_text()) if path.exists() else {}
    times = summary.setdefault("seconds", {})
    times[stage] = times.get(stage, 0.0) + seconds
    atomic_write(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return float(times[stage])


def train(
    out: str | Path,
    config: RecipeConfig | None = None,
    stages: str = "all",
    log: Any = print,
    dataset: Dataset | None = None,
    embeddings: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) the recipe into ``out``; returns ``summary.json``'s content."""
    config = config or RecipeConfig()
    run = prepare(out, config, log, dataset, embeddings)
    demos = stage_data(run)
    sft = stage_sft(run, demos)
    if stages != "sft":
        stage_rl(run, sft)
    plot_curves(run.out)
    path = run.out / SUMMARY_FILE
    summary = json.loads(path.read_text()) if path.exists() else {}
    for stage in ("sft", "rl"):
        meta_path = run.out / stage / "best" / "policy.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())["meta"]
            summary[stage] = {k: v for k, v in meta.items() if k != "config"}
    atomic_write(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def plot_curves(out: Path) -> None:
    """``curves.png``: the validation Dice of both stages against their steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft, rl = _read_curve(out / "sft" / "curve.csv"), _read_curve(out / "rl" / "curve.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, rows, key, title in (
        (axes[0], sft, "step", "SFT (behaviour cloning)"),
        (axes[1], rl, "iteration", "RL (GRPO)"),
    ):
        if rows:
            ax.plot(
                [int(r[key]) for r in rows],
                [float(r["val_dice"]) for r in rows],
                marker="o",
                label="validation Dice",
            )
            if key == "iteration":
                pts = [(int(r[key]), float(r["train_dice"])) for r in rows if r["train_dice"]]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=".", label="training Dice (sampled)")
        ax.set_xlabel(key + "s")
        ax.set_ylabel("Dice")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(out / "curves.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)

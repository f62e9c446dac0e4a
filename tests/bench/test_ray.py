"""``--ray`` on a real local Ray (``ray.init(num_cpus=2)``, one per module): the benchmark,
``precompute`` and the SFT export give the files of a local run; a killed worker's episodes
run again and are recorded once; a run resumes across local and Ray, both ways.

Real data (``demo``, not the held-out set), real models (the weight-free ``classical``
backend for speed, and one run with the default LiteMedSAM-clicks). The two-node cluster is
``test_ray_two_nodes.py``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import warnings
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from medseg_agents.baselines import HintClick
from medseg_bench import BenchConfig, run_benchmark
from medseg_bench.cli import main as bench_main
from medseg_bench.distributed import RayOptions, image_groups
from medseg_bench.plan import make_plan
from medseg_bench.records import Journal
from medseg_bench.runner import episode_batches

ray = pytest.importorskip("ray")
# The workers unpickle this module's DiesOnce by value: the tests are not installed there.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

CONFIG = BenchConfig(
    policies=("hint_click", "ritm"),
    datasets=("demo",),
    segmenters=("classical",),
    budget=3,
    limit=4,
    seed=0,
)
SAME_FILES = ("config.json", "episodes.csv", "summary.csv")  # summary.md has wall times
RAY = RayOptions(echo=False)
ONE_WORKER = RayOptions(workers=1, echo=False)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray of two CPUs for the module (what `--ray` with no address starts)."""
    if not ray.is_initialized():
        # "local": a Ray of its own, not the two-node cluster another test may run meanwhile
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def results_without_run(folder: Path) -> dict:
    doc = json.loads((folder / "results.json").read_text())
    doc.pop("run")
    return doc


def assert_same_results(a: Path, b: Path) -> None:
    for name in SAME_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert results_without_run(a) == results_without_run(b)
    # the same records (timings aside), each episode once
    ja, jb = Journal(a / "episodes.jsonl").load(), Journal(b / "episodes.jsonl").load()
    assert sorted(ja, key=lambda r: r.key) == sorted(jb, key=lambda r: r.key)
    assert max(Counter(r.key for r in jb).values()) == 1


def run(config: BenchConfig, out: Path, ray_options: RayOptions | None = None, **kwargs):
    return run_benchmark(config, out, progress=False, plots=False, ray=ray_options, **kwargs)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The local run every Ray run is compared with."""
    return run(CONFIG, tmp_path_factory.mktemp("bench") / "local")


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """``medseg-bench run`` of one config, locally and with ``--ray``: (folder, stdout, stderr)
    of each."""
    base = tmp_path_factory.mktemp("cli")
    argv = ["run", "-d", "demo", "--limit", "4", "-p", "hint_click", "ritm", "--budget", "3"]
    argv += ["-s", "classical", "--no-plots"]
    runs = {}
    for name, extra in (("local", []), ("ray", ["--ray", "--ray-workers", "2"])):
        capture = io.StringIO(), io.StringIO()
        with redirect_stdout(capture[0]), redirect_stderr(capture[1]):
            assert bench_main([*argv, "--out", str(base / name), *extra]) == 0
        runs[name] = (base / name, capture[0].getvalue(), capture[1].getvalue())
    return runs


def test_the_command_with_ray_writes_and_prints_what_a_local_run_does(local, cli_runs) -> None:
    (here, out_here, err_here), (there, out_there, err_there) = cli_runs["local"], cli_runs["ray"]
    assert_same_results(here, there)
    assert_same_results(local.out_dir, there)  # the API's run too
    # the same tables and lines, but for the folder's name; the same bar
    assert out_here.replace(str(here), "DIR") == out_there.replace(str(there), "DIR")
    assert "8 episodes: 8 run, 0 resumed" in out_there
    for err in (err_here, err_there):
        assert "medseg-bench: 100%" in err and "8/8" in err
    # what the Ray run says of itself: the Ray it used and its two workers
    assert "medseg-bench: Ray: using the Ray this process had already started" in err_there
    assert "1 node(s), 2 CPU(s), 0 GPU(s)" in err_there
    threads = torch.get_num_threads()  # the driver's, whatever --ray-cpus says
    workers = f"2 medseg-bench workers (1 CPU, 0 GPU, {threads} torch thread(s) each)"
    assert f"{workers} on 1 node(s)" in err_there
    doc = json.loads((there / "results.json").read_text())
    assert doc["run"]["ray"] == {
        "address": None,
        "nodes": 1,
        "workers": 2,
        "worker_nodes": 1,
        "worker_deaths": [],
    }
    assert doc["run"]["executed_episodes"] == 8


def _cut_journal(folder: Path, keep: int) -> None:
    """Leave ``folder`` as a run interrupted after ``keep`` episodes: its config and the first
    ``keep`` journal lines."""
    lines = (folder / "episodes.jsonl").read_bytes().splitlines(keepends=True)
    (folder / "episodes.jsonl").write_bytes(b"".join(lines[:keep]))
    for path in folder.iterdir():
        if path.name not in ("config.json", "episodes.jsonl"):
            path.unlink()


def test_a_run_started_on_ray_resumes_locally(local, cli_runs, tmp_path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(cli_runs["ray"][0], out)
    _cut_journal(out, 3)
    result = run(CONFIG, out)
    assert (result.resumed, result.executed) == (3, 5)
    assert_same_results(local.out_dir, out)


def test_a_local_run_of_the_default_segmenter_resumes_on_ray(tmp_path) -> None:
    # LiteMedSAM-clicks with its ONNX decoder, in a worker of one torch thread
    config = BenchConfig(
        policies=("hint_click", "ritm"), datasets=("demo",), budget=3, limit=1, seed=1
    )
    here = run(config, tmp_path / "local")
    out = tmp_path / "resumed"
    shutil.copytree(here.out_dir, out)
    _cut_journal(out, 1)
    there = run(config, out, ONE_WORKER)
    assert (there.resumed, there.executed) == (1, 1)
    assert_same_results(here.out_dir, out)
    runtime = json.loads((out / "results.json").read_text())["runtime"]
    assert runtime == {"litemedsam_clicks": {"decoder": "onnx", "device": "cpu"}}


class DiesOnce(HintClick):
    """``hint_click``, whose process is killed (SIGKILL, as by the OOM killer or ``kill -9``)
    the first time it acts on ``sample_id``; ``marker`` records that it happened (and the pid),
    so the episode played again on another worker goes as ``hint_click`` would."""

    def __init__(self, marker: Path, sample_id: str) -> None:
        super().__init__()
        self.marker, self.sample_id = marker, sample_id

    def act(self, obs, info, env=None):
        if info["sample_id"] == self.sample_id and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().act(obs, info, env)


def test_a_killed_worker_loses_no_episode_and_none_twice(local, tmp_path) -> None:
    plan = make_plan(CONFIG)
    last = plan.episodes[-1].sample_id  # the last sample's group: records exist by then
    marker = tmp_path / "killed.pid"
    policies = {"hint_click": DiesOnce(marker, last)}
    marker.write_text("")  # the local run: the policy never kills
    here = run(CONFIG, tmp_path / "local", policies=policies)
    marker.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        there = run(CONFIG, tmp_path / "ray", RAY, policies=policies)
    assert marker.read_text().isdigit(), "no worker was killed"
    deaths = [str(w.message) for w in caught if "died" in str(w.message)]
    assert len(deaths) == 1, deaths
    assert f"(pid {marker.read_text()} on" in deaths[0]
    assert "unfinished item(s) run again on another medseg-bench worker" in deaths[0]
    assert there.executed == 8 and len(there.records) == 8
    assert_same_results(here.out_dir, there.out_dir)  # every episode once, the same results
    assert_same_results(local.out_dir, there.out_dir)  # and those of the registry's hint_click
    doc = json.loads((there.out_dir / "results.json").read_text())
    assert len(doc["run"]["ray"]["worker_deaths"]) == 1
    assert doc["run"]["ray"]["workers"] == 2  # the two started; the replacement is not counted


def test_image_groups_keep_a_samples_batches_together() -> None:
    plan = make_plan(CONFIG)
    rank = {p: i for i, p in enumerate(CONFIG.policies)}
    todo = sorted(
        plan.episodes, key=lambda e: (e.segmenter, e.dataset, e.sample_index, rank[e.policy])
    )
    groups = image_groups(episode_batches(todo, plan))
    assert len(groups) == 4  # one per sample, both policies in each
    assert [[b[0].policy for b in g] for g in groups] == [["hint_click", "ritm"]] * 4
    assert len({b[0].sample_index for g in groups for b in g}) == 4


def test_precompute_on_ray_writes_the_local_cache(tmp_path) -> None:
    from medseg_env.precompute import precompute

    here = precompute("demo", "classical", cache_dir=tmp_path / "local", progress=False)
    there = precompute(
        "demo", "classical", cache_dir=tmp_path / "ray", progress=False, ray=ONE_WORKER
    )
    assert (there.images, there.encoded, there.skipped) == (here.images, here.encoded, 0)
    files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.*"))
    assert files == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.*"))
    for name in files:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()
    again = precompute(
        "demo", "classical", cache_dir=tmp_path / "ray", progress=False, ray=ONE_WORKER
    )
    assert (again.encoded, again.skipped) == (0, here.images)  # resumed: nothing to encode


def test_export_sft_on_ray_writes_the_local_export(tmp_path) -> None:
    from medseg_agents.training.sft import ExportConfig, export_sft

    config = ExportConfig(dataset="demo", segmenter="classical", per_sample=2)
    here = export_sft(config, tmp_path / "local", limit=6, progress=False)
    there = export_sft(config, tmp_path / "ray", limit=6, progress=False, ray=ONE_WORKER)
    assert (there.executed, there.exported) == (6, here.exported)
    for path in sorted((tmp_path / "local").rglob("*")):
        name = path.relative_to(tmp_path / "local")
        if path.is_dir() or name.name.startswith("."):
            continue
        other = tmp_path / "ray" / name
        if name.name == "trajectories.jsonl":  # the journal: the same entries, finishing order
            assert sorted(path.read_text().splitlines()) == sorted(other.read_text().splitlines())
        else:
            assert path.read_bytes() == other.read_bytes(), name

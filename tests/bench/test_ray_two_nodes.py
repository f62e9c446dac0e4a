"""``medseg-bench run --ray ADDRESS`` on a two-node Ray cluster on loopback (Ray's own
``ray.cluster_utils.Cluster``: a head with its dashboard and a second node, one CPU each, as
separate raylets), joined by its address as a user joins a cluster: one worker lands on each
node, the command prints the cluster's dashboard, and the results are those of a local run."""

from __future__ import annotations

import io
import json
import socket
from contextlib import redirect_stderr, redirect_stdout

import pytest

from medseg_bench import BenchConfig, run_benchmark
from medseg_bench.cli import main as bench_main
from medseg_bench.records import Journal

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

CONFIG = BenchConfig(
    policies=("hint_click", "ritm"),
    datasets=("demo",),
    segmenters=("classical",),
    budget=3,
    limit=4,
    seed=2,
)


@pytest.fixture(scope="module")
def two_nodes():
    """A head (with its dashboard) and a worker node of one CPU each; this process is not
    connected to it."""
    if ray.is_initialized():
        ray.shutdown()
    with socket.socket() as sock:  # a free port for the dashboard, not Ray's default 8265
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": port},
    )
    cluster.dashboard_port = port
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_a_two_node_cluster_gives_the_results_of_a_local_run(two_nodes, tmp_path) -> None:
    here = run_benchmark(CONFIG, tmp_path / "local", progress=False, plots=False)
    argv = ["run", "-d", "demo", "--limit", "4", "-p", "hint_click", "ritm", "--budget", "3"]
    argv += ["-s", "classical", "--seed", "2", "--no-plots", "--out", str(tmp_path / "ray")]
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        assert bench_main([*argv, "--ray", two_nodes.address]) == 0
    assert not ray.is_initialized()  # joined for the run, left after it
    err = stderr.getvalue()
    assert f"medseg-bench: Ray: joined the Ray cluster at {two_nodes.address}: 2 node(s)" in err
    assert f"dashboard at http://127.0.0.1:{two_nodes.dashboard_port}" in err
    there = tmp_path / "ray"
    for name in ("config.json", "episodes.csv", "summary.csv"):
        assert (here.out_dir / name).read_bytes() == (there / name).read_bytes(), name
    a, b = (json.loads((d / "results.json").read_text()) for d in (here.out_dir, there))
    run = b.pop("run")
    a.pop("run")
    assert a == b
    # one worker per node: the cluster's two CPUs, spread
    assert run["ray"] == {
        "address": two_nodes.address,
        "nodes": 2,
        "workers": 2,
        "worker_nodes": 2,
        "worker_deaths": [],
    }
    records = Journal(there / "episodes.jsonl").load()
    assert sorted(r.key for r in records) == sorted(r.key for r in here.records)

"""``medseg_env.cluster`` without starting Ray: the errors of ``--ray`` and its options.

The real Ray runs (a local Ray, a two-node cluster, a killed worker, resume across local and
Ray) are in ``tests/bench/test_ray.py`` and ``tests/bench/test_ray_two_nodes.py``.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg_bench.cli import main as bench_main
from medseg_env.cluster import (
    RAY_EXTRA,
    ClusterError,
    RayOptions,
    add_ray_arguments,
    check_reachable,
    connect,
    ray_options,
)

# Every --ray command in one interpreter where `import ray` fails (a None entry in sys.modules
# makes the import raise ImportError), as on a machine without the extra.
RAY_MISSING = r"""
import json, sys
sys.modules["ray"] = None
out = sys.argv[1]
from medseg_bench.cli import main as bench
from medseg_env.precompute import main as precompute
from medseg_agents.training.cli import main as train
codes = {
    "bench": bench(["run", "-d", "demo", "--limit", "1", "-p", "hint_click", "-s", "classical",
                    "--out", out + "/bench", "--no-progress", "--ray"]),
    "precompute": precompute(["demo", "-s", "classical", "--cache-dir", out + "/cache",
                              "--no-progress", "--ray"]),
    "export": train(["export-sft", "-d", "demo", "--limit", "1", "-s", "classical",
                     "--out", out + "/sft", "--no-progress", "--ray", "10.0.0.1:6379"]),
}
print(json.dumps(codes))
"""


def test_ray_missing_names_the_extra_and_writes_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", RAY_MISSING, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    assert codes == {"bench": 2, "precompute": 2, "export": 2}
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 3, done.stderr[-3000:]
    for line in errors:
        assert "--ray needs Ray, which is not installed" in line
        assert RAY_EXTRA in line and 'pip install "medseg-env[ray]"' in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_address_is_refused_at_once_by_name(tmp_path: Path, capsys) -> None:
    pytest.importorskip("ray")
    address = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"cannot reach the Ray cluster at '{address}'"):
        connect(address)
    assert time.monotonic() - started < 10  # not Ray's own minutes of retries

    out = tmp_path / "bench"
    argv = ["run", "-d", "demo", "--limit", "1", "-p", "hint_click", "-s", "classical"]
    assert bench_main([*argv, "--out", str(out), "--no-progress", "--ray", address]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Ray cluster at '{address}'" in err and "ray start --head" in err
    assert not out.exists()


@pytest.mark.parametrize("address", ["nonsense", "http://10.0.0.1:6379", "10.0.0.1", ":6379"])
def test_a_malformed_address_is_refused(address: str) -> None:
    with pytest.raises(ClusterError, match=r"is not host:port, ray://host:port or 'auto'"):
        check_reachable(address)


def test_ray_options_from_the_command_line() -> None:
    parser = argparse.ArgumentParser()
    add_ray_arguments(parser, "play")
    assert ray_options(parser.parse_args([])) is None
    assert ray_options(parser.parse_args(["--ray"])) == RayOptions()
    got = ray_options(parser.parse_args(["--ray", "h:1", "--ray-workers", "3", "--ray-gpus", "1"]))
    assert got == RayOptions(address="h:1", workers=3, gpus=1.0)
    with pytest.raises(ValueError, match="--ray-workers given without --ray"):
        ray_options(parser.parse_args(["--ray-workers", "2"]))
    for bad, message in (
        ({"workers": 0}, "--ray-workers must be an integer >= 1; got 0"),
        ({"cpus": 0.0}, "--ray-cpus must be > 0"),
        ({"gpus": -1.0}, "--ray-gpus must be >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            RayOptions(**bad)  # type: ignore[arg-type]
    assert RayOptions(workers=64).local_cpus() == 64  # a local Ray large enough for them
    assert RayOptions().local_cpus() is None


def test_ray_options_misuse_exits_2_in_every_command(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench"
    argv = ["run", "-d", "demo", "-p", "hint_click", "--out", str(out), "--ray-cpus", "2"]
    assert bench_main(argv) == 2
    assert "--ray-cpus given without --ray" in capsys.readouterr().err
    assert not out.exists()

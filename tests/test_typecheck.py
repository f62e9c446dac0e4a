"""mypy over the three packages, with the ``[tool.mypy]`` config of ``pyproject.toml``.

The folders are named differently from the packages (``agents/`` is ``medseg_agents``,
``benchmarks/`` is ``medseg_bench``), so mypy cannot find them by name from the repository
root: the check runs in a temporary folder of symlinks named after the packages.

A clean clone has no mypy cache, so the check is cold every time (most of it analysing torch,
transformers and the other typed packages the three import). mypy's parallel mode
(``--num-workers``, one worker per core up to two: the suite's machines have two) checks
independent modules side by side: the same checks, in about half the time on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"medseg_env": "medseg_env", "medseg_agents": "agents", "medseg_bench": "benchmarks"}


def num_workers() -> int:
    """mypy's ``--num-workers``: 2 with two or more cores, else 0 (no worker processes)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 if (cores or 1) >= 2 else 0


def run_mypy(packages: dict[str, Path], config: Path, workdir: Path) -> tuple[int, str]:
    """mypy's exit status and output over ``{package name: folder}``, run from ``workdir``."""
    for name, folder in packages.items():
        (workdir / name).symlink_to(folder, target_is_directory=True)
    command = [sys.executable, "-m", "mypy", "--config-file", str(config)]
    command += ["--cache-dir", str(workdir / ".mypy_cache")]
    command += ["--num-workers", str(num_workers())]
    for name in packages:
        command += ["-p", name]
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "MYPY_CACHE_DIR")}
    done = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    return done.returncode, done.stdout + done.stderr


def test_packages_typecheck(tmp_path: Path) -> None:
    packages = {name: ROOT / folder for name, folder in PACKAGES.items()}
    status, output = run_mypy(packages, ROOT / "pyproject.toml", tmp_path)
    assert status == 0, f"mypy found errors (exit status {status}):\n{output}"

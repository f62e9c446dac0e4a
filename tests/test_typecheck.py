"""mypy over the three packages, with the ``[tool.mypy]`` config of ``pyproject.toml``.

The folders are named differently from the packages (``agents/`` is ``medseg_agents``,
``benchmarks/`` is ``medseg_bench``), so mypy cannot find them by name from the repository
root: the check runs in a temporary folder of symlinks named after the packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"medseg_env": "medseg_env", "medseg_agents": "agents", "medseg_bench": "benchmarks"}


def run_mypy(packages: dict[str, Path], config: Path, workdir: Path) -> tuple[int, str]:
    """mypy's exit status and output over ``{package name: folder}``, run from ``workdir``."""
    for name, folder in packages.items():
        (workdir / name).symlink_to(folder, target_is_directory=True)
    command = [sys.executable, "-m", "mypy", "--config-file", str(config)]
    command += ["--cache-dir", str(workdir / ".mypy_cache")]
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

"""Fixtures of the MLLM tests: the tiny offline Qwen3-VL and a real OpenAI-compatible server.

``tiny_vlm_dir`` builds the tiny random-weight model once per session (about 0.2 s, 1 MB); it
and the offline switch live in ``tests/mllm_fixtures.py``, shared with ``tests/training``.
``openai_server`` serves it with ``transformers serve`` on 127.0.0.1 in a subprocess (about
9 s to start, most of it importing transformers) and yields ``(base_url, model_name)``:
``base_url`` ends in ``/v1`` for ``openai.OpenAI(base_url=...)``, and ``model_name`` is the
only model the server accepts (it is pinned to the folder; another name is an HTTP 400).

Everything runs offline: ``HF_HUB_OFFLINE=1`` here and in the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the MLLM tests need transformers (extra `mllm`)")

from mllm_fixtures import _hub_offline, tiny_vlm_dir  # noqa: E402, F401  (fixtures)

SERVER_START_DEADLINE_S = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_log(path: Path, limit: int = 6000) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return text[-limit:] or "(the server wrote nothing)"


@pytest.fixture(scope="session")
def openai_server(
    tiny_vlm_dir: Path,  # noqa: F811  (the imported fixture, requested by name)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str]]:
    """``transformers serve`` of the tiny model on 127.0.0.1; yields ``(base_url, model_name)``."""
    workdir = tmp_path_factory.mktemp("openai-server")
    hub_cache = workdir / "hf-hub-cache"  # /v1/models scans it, and fails if it is missing
    hub_cache.mkdir()
    log_path = workdir / "server.log"
    port = _free_port()
    model_name = str(tiny_vlm_dir)
    command = [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        model_name,  # `force_model`: loaded before the server listens, never unloaded
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    base_url = f"http://127.0.0.1:{port}/v1"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + SERVER_START_DEADLINE_S
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"`transformers serve` exited with status {process.returncode} before "
                    f"answering {base_url}/models:\n{_server_log(log_path)}"
                )
            try:
                with direct.open(f"{base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`transformers serve` did not answer {base_url}/models within "
                    f"{SERVER_START_DEADLINE_S:.0f} s:\n{_server_log(log_path)}"
                )
            time.sleep(0.2)
        yield base_url, model_name
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

"""Fixtures shared by the MLLM tests (``tests/mllm``) and the trainer tests (``tests/training``):
the tiny offline Qwen3-VL and the switch that keeps the Hugging Face Hub offline.

A conftest makes them its own with ``from mllm_fixtures import _hub_offline, tiny_vlm_dir``
(``tests/`` is on ``sys.path``); ``_hub_offline`` is then autouse for that folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _hub_offline() -> Iterator[None]:
    """No Hugging Face Hub access in these tests, however huggingface_hub was imported."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3-VL model folder (seed 0), built once per session."""
    from medseg_agents.testing.tiny_qwen import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tmp_path_factory.mktemp("tiny-qwen3-vl"), seed=0)

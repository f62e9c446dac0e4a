"""Fixtures of the trainer tests: the tiny offline Qwen3-VL (``tests/mllm_fixtures.py``) and no
writes outside the test's own folder."""

from __future__ import annotations

import pytest
from mllm_fixtures import _hub_offline, tiny_vlm_dir  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def _no_writes_outside_tmp(tmp_path, monkeypatch):
    """Run from tmp_path, and point the default export folder there too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDSEG_SFT_DIR", str(tmp_path / "default-sft-dir"))

"""``python -m medseg_bench.memory``: the embedding cache stays within its bound and the heap
stays flat over many episodes (the invariants; the 10,000-episode figures belong to the
benchmark itself)."""

from __future__ import annotations

import hashlib
import json

import pytest

from medseg_bench import memory
from medseg_env.data import Dataset

MIB = 1024**2
EMBEDDING = MIB  # a classical embedding: (1, 4, 256, 256) float32


@pytest.fixture(scope="module")
def one_per_image(demo: Dataset) -> Dataset:
    """One demo sample per distinct image (20): every episode of a pass is a new image."""
    by_image = {hashlib.sha256(s.image.tobytes()).digest(): s for s in demo}
    return Dataset(list(by_image.values()), name="demo-one-per-image")


def test_cache_bounded_and_heap_flat_over_many_episodes(one_per_image: Dataset) -> None:
    images = len(one_per_image)
    bound = int(2.5 * EMBEDDING)  # two embeddings of the 20 images
    result = memory.run(
        160,
        segmenter="classical",
        cache_bytes=bound,
        every=40,
        dataset=one_per_image,
        max_turns=3,
        trace=True,
    )
    rows = result.checkpoints
    assert [r.episode for r in rows] == [40, 80, 120, 160]
    assert result.meta["embedding_bytes"] == EMBEDDING and images > 2
    for row in rows:
        # the bound holds at every checkpoint, and after every episode (the peak)
        assert row.cache_bytes <= bound and row.cache_peak_bytes <= bound
        # the byte count agrees with the entries actually held
        assert row.cache_entries == 2 and row.cache_bytes == 2 * EMBEDDING
    last = rows[-1]
    # evicted images were encoded again: many more encodes than images or entries
    assert last.encoder_calls > images and result.meta["evictions"] > images
    assert last.encoder_calls == last.cache_misses
    # real work was done: boxes, clicks and stops, a few turns an episode
    actions = result.meta["actions"]
    assert min(actions.get(k, 0) for k in ("box", "positive_click", "stop")) > 0
    assert last.steps > last.episode
    # the Python heap (NumPy arrays included) stays flat once every image has been seen:
    # no per-episode or per-encode leak
    change = memory.growth(rows, 40, 160)
    assert change["traced_growth_mib"] is not None and abs(change["traced_growth_mib"]) < 2


def test_checkpoint_list() -> None:
    assert memory.checkpoint_list(2000, 500, [1000, 10_000, 0, 123]) == [123, 500, 1000, 1500, 2000]
    assert memory.checkpoint_list(7, 0) == [7]


def test_cli_writes_only_the_files_asked_for(tmp_path, capsys) -> None:
    # tests/bench/conftest.py runs every test from tmp_path: nothing else may appear there
    status = memory.main(
        "--episodes 6 --every 3 --checkpoints 3,6 --cache-mb 2 --max-turns 2 --no-trace "
        "--json m.json --csv m.csv".split()
    )
    out = capsys.readouterr().out
    assert status == 0 and "verdict: flat from episode 3 to 6" in out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "default-bench-dir") == [
        "m.csv",
        "m.json",
    ]
    data = json.loads((tmp_path / "m.json").read_text())
    assert [r["episode"] for r in data["checkpoints"]] == [3, 6]
    assert data["checkpoints"][0]["traced_bytes"] is None  # --no-trace
    assert data["meta"]["cache_max_bytes"] == 2 * MIB and data["meta"]["embeddings_in_bound"] == 2
    assert (tmp_path / "m.csv").read_text().splitlines()[0].startswith("episode,steps,seconds")

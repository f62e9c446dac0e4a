"""The ONNX graph cache (``medseg_env.segmenters.onnx_cache``): keys, damage, atomic writes, an
unwritable folder, the folder's bound. On a small graph: the decoder's own graph goes through
it in ``test_fast_decoder.py``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from medseg_env.files import current_umask
from medseg_env.segmenters import onnx_cache as oc


def small_model(value: float = 1.0) -> onnx.ModelProto:
    """``y = x + w`` with a 64 KiB weight, so a flipped byte in the middle lands in it."""
    weight = numpy_helper.from_array(np.full(16384, value, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16384])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16384])],
        [weight],
    )
    return helper.make_model(graph)


def test_a_stored_graph_loads_back_under_its_key_only(tmp_path):
    cache = oc.GraphCache(tmp_path)
    data = cache.store("m.nomask-absorbed.g2", small_model())
    assert cache.path("m.nomask-absorbed.g2") == tmp_path / "m.nomask-absorbed.g2.onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["m.nomask-absorbed.g2.onnx"]  # no temp file
    assert cache.load("m.nomask-absorbed.g2") == data
    assert cache.load("another") is None  # missing
    (tmp_path / "another.onnx").write_bytes(data)  # a valid graph written for another key
    assert cache.load("another") is None
    assert oc.GraphCache(tmp_path).path("a/b c") == tmp_path / "a_b_c.onnx"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "bit-flip"])
def test_a_damaged_graph_is_a_miss(tmp_path, damage):
    cache = oc.GraphCache(tmp_path)
    data = cache.store("k", small_model())
    path = cache.path("k")
    if damage == "garbage":
        path.write_bytes(b"not an onnx file" * 100)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a weight deep in the file: only the digest can tell
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(flipped))
    assert cache.load("k") is None
    assert cache.store("k", small_model()) == data and path.read_bytes() == data  # whole again
    assert cache.load("k") == data


def test_the_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails midway leaves no file (not a partial one) and no temporary file, and
    says where it could not write; the graph is still returned."""
    replaced = []
    real_replace = os.replace

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    def spying_replace(src, dst):
        replaced.append((Path(src), Path(dst), Path(src).stat().st_size))
        real_replace(src, dst)

    cache = oc.GraphCache(tmp_path)
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.warns(UserWarning, match="could not write the decoder graph"):
        data = cache.store("k", small_model())
    assert onnx.load_model_from_string(data).graph.name == "small"
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(os, "replace", spying_replace)
    cache.store("k", small_model())
    [(src, dst, size)] = replaced  # written under a temporary name, then renamed whole
    assert src.parent == dst.parent == tmp_path and src != dst
    assert dst == cache.path("k") and size == dst.stat().st_size
    assert dst.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # as the embedding cache
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]


def test_an_unwritable_folder_only_warns(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = oc.GraphCache(blocker / "onnx")
    with pytest.warns(UserWarning, match=oc.ONNX_DIR_ENV):
        assert cache.store("k", small_model())
    assert cache.load("k") is None


def test_default_folder_is_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(oc.ONNX_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert oc.onnx_cache_dir() == tmp_path / "medseg-env" / "onnx"
    assert oc.GraphCache().folder == tmp_path / "medseg-env" / "onnx"
    monkeypatch.setenv(oc.ONNX_DIR_ENV, "~/x")
    assert oc.onnx_cache_dir() == Path.home() / "x"


def test_the_folder_is_bounded(tmp_path):
    """The least recently used graphs go first (a load marks a graph used), never the one just
    written; a store prunes."""
    cache = oc.GraphCache(tmp_path, max_bytes=None)
    cache.max_bytes = 3 * len(cache.store("size", small_model()))  # three graphs fit
    cache.path("size").unlink()
    for index, key in enumerate("abc"):
        cache.store(key, small_model())
        os.utime(cache.path(key), (index, index))
    assert cache.load("a") is not None  # used now
    cache.store("d", small_model(2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "c.onnx", "d.onnx"]
    assert oc.GraphCache(tmp_path, max_bytes=None).prune() == []
    # oldest use first: c (written long ago), then a (loaded just now); never the kept d
    removed = oc.GraphCache(tmp_path, max_bytes=0).prune(keep=cache.path("d"))
    assert removed == [cache.path("c"), cache.path("a")]

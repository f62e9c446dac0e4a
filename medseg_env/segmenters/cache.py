"""Image-embedding cache: an in-memory LRU bounded by bytes, plus optional on-disk entries.

Keys hash the image content (shape, dtype and bytes) together with the model id, so the same
image under another model, or another image under the same name, never collides. Disk entries
are written to a temporary file and renamed, so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .types import Embedding

DEFAULT_MAX_BYTES = 512 * 1024**2
CACHE_DIR_ENV = "MEDSEG_CACHE_DIR"


def image_key(image: np.ndarray, model_id: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"{model_id}|{image.shape}|{image.dtype}|".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """LRU of embeddings holding at most ``max_bytes`` of tensors in memory.

    Args:
        max_bytes: memory bound; the least recently used entries are dropped past it.
        disk_dir: when given, entries are also stored there as safetensors files and read
            back on a memory miss (for example across processes or runs).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, disk_dir: str | Path | None = None):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0; got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._entries: OrderedDict[str, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Embedding | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
        entry = self._read_disk(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._remember(key, entry)
        return entry

    def put(self, key: str, embedding: Embedding) -> None:
        self._remember(key, embedding)
        self._write_disk(key, embedding)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _remember(self, key: str, embedding: Embedding) -> None:
        size = embedding.nbytes
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            if size > self.max_bytes:
                return
            self._entries[key] = embedding
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes

    def _path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / key[:2] / f"{key}.safetensors"

    def _read_disk(self, key: str) -> Embedding | None:
        if self.disk_dir is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads(handle.metadata()["medseg"])
            features = load_file(str(path))["features"]
        except Exception:  # a damaged entry is a miss, never a crash; it gets rewritten
            return None
        return Embedding(features, tuple(meta["image_size"]), meta["model_id"])

    def _write_disk(self, key: str, embedding: Embedding) -> None:
        if self.disk_dir is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"image_size": list(embedding.image_size), "model_id": embedding.model_id}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(
                {"features": embedding.features.contiguous()},
                tmp,
                metadata={"medseg": json.dumps(meta)},
            )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def __getstate__(self) -> dict:
        # Pickled envs carry their configuration, not megabytes of tensors.
        return {"max_bytes": self.max_bytes, "disk_dir": self.disk_dir}

    def __setstate__(self, state: dict) -> None:
        type(self).__init__(self, state["max_bytes"], state["disk_dir"])


_DEFAULT: EmbeddingCache | None = None
_DEFAULT_LOCK = threading.Lock()


def default_cache() -> EmbeddingCache:
    """The process-wide cache shared by segmenters built without one.

    Sharing it means a new env on the same images (``gym.make`` again, a vector env's copies)
    re-encodes nothing. ``$MEDSEG_CACHE_DIR``, when set, adds the on-disk layer.
    """
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = EmbeddingCache(disk_dir=os.environ.get(CACHE_DIR_ENV) or None)
        return _DEFAULT

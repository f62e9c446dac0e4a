"""Image-embedding cache: an in-memory LRU bounded by bytes, plus optional on-disk entries.

Keys hash the image content (shape, dtype and bytes) together with the model id, so the same
image under another model, or another image under the same name, never collides. Disk entries
are written to a temporary file and renamed, so a crash never leaves a half-written entry.

The disk layer is a help, never a requirement. An entry is used only when it holds what was
asked for (its key, model, image size, the model's feature shape and dtype, and the checksum of
its tensor all match); anything else is a miss, and the entry is replaced by the next ``put``.
A directory that cannot be written (read-only, full, a file in the way) gives one
``RuntimeWarning`` per cache, after which the cache carries on in memory.

``python -m medseg_env precompute`` fills the disk layer for whole datasets ahead of a run
(``medseg_env.precompute``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..files import atomic_write
from .types import Embedding

DEFAULT_MAX_BYTES = 512 * 1024**2
CACHE_DIR_ENV = "MEDSEG_CACHE_DIR"

#: The shape and dtype every embedding of a model has, when that is fixed (see ``get``).
FeatureSpec = tuple[tuple[int, ...], torch.dtype]


def image_key(image: np.ndarray, model_id: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"{model_id}|{image.shape}|{image.dtype}|".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def expand_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` with environment variables and ``~`` expanded, made absolute.

    So ``MEDSEG_CACHE_DIR='~/cache'`` means the home directory's ``cache``, never ``./~/cache``,
    and a later ``chdir`` does not move the cache.
    """
    return Path(os.path.expanduser(os.path.expandvars(os.fspath(path)))).absolute()


def _tensor_sha256(features: torch.Tensor) -> str:
    data = features.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


class EmbeddingCache:
    """LRU of embeddings holding at most ``max_bytes`` of tensors in memory.

    Args:
        max_bytes: memory bound; the least recently used entries are dropped past it.
        disk_dir: when given, entries are also stored there as safetensors files and read
            back on a memory miss (for example across processes or runs). ``~`` and
            environment variables are expanded. Files and folders get the usual permissions
            for the process umask, so a shared cache works across users.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, disk_dir: str | Path | None = None):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0; got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.disk_dir = expand_dir(disk_dir) if disk_dir not in (None, "") else None
        self._entries: OrderedDict[str, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._warned = False
        self.hits = 0
        self.misses = 0
        #: The error of the latest disk write that failed (warned about once), else None.
        self.last_write_error: BaseException | None = None

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self,
        key: str,
        *,
        model_id: str | None = None,
        image_size: tuple[int, int] | None = None,
        features: FeatureSpec | None = None,
    ) -> Embedding | None:
        """The embedding stored under ``key``, or ``None``.

        ``model_id``, ``image_size`` and ``features`` (shape and dtype), when given, are what
        the caller expects: an entry that differs is a miss, and is replaced by the next
        ``put`` of that key.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if _matches(entry, model_id, image_size, features):
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry
                self._forget(key)
        entry = self._read_disk(key)
        if entry is None or not _matches(entry, model_id, image_size, features):
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        self._remember(key, entry)
        return entry

    def put(self, key: str, embedding: Embedding) -> None:
        """Store ``embedding`` under ``key``, in memory and (when configured) on disk.

        A disk write that fails warns once per cache and leaves the memory entry in place.
        """
        self._remember(key, embedding)
        self._write_disk(key, embedding)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _forget(self, key: str) -> None:  # with self._lock held
        dropped = self._entries.pop(key, None)
        if dropped is not None:
            self._bytes -= dropped.nbytes

    def _remember(self, key: str, embedding: Embedding) -> None:
        size = embedding.nbytes
        with self._lock:
            if key in self._entries:
                if self._entries[key] is embedding:
                    self._entries.move_to_end(key)
                    return
                self._forget(key)
            if size > self.max_bytes:
                return
            self._entries[key] = embedding
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes

    def disk_path(self, key: str) -> Path | None:
        """Where the disk entry of ``key`` lives (``<disk_dir>/<key[:2]>/<key>.safetensors``),
        or None without a disk layer. The file may be absent or damaged: ``get`` checks it."""
        return None if self.disk_dir is None else self._path(key)

    def _path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / key[:2] / f"{key}.safetensors"

    def _read_disk(self, key: str) -> Embedding | None:
        if self.disk_dir is None:
            return None
        path = self._path(key)
        # Anything unreadable, damaged or inconsistent is a miss, never a crash; it gets
        # rewritten by the next put.
        try:
            if not path.is_file():
                return None
            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads(handle.metadata()["medseg"])
                features = handle.get_tensor("features")
            image_size = tuple(int(n) for n in meta["image_size"])
            consistent = (
                meta["key"] == key
                and isinstance(meta["model_id"], str)
                and len(image_size) == 2
                and meta["shape"] == list(features.shape)
                and meta["dtype"] == str(features.dtype)
                and meta["sha256"] == _tensor_sha256(features)
            )
        except Exception:
            return None
        if not consistent:
            return None
        return Embedding(features, (image_size[0], image_size[1]), meta["model_id"])

    def _write_disk(self, key: str, embedding: Embedding) -> None:
        if self.disk_dir is None:
            return
        path = self._path(key)
        features = embedding.features.detach().cpu().contiguous()
        meta = {
            "key": key,
            "model_id": embedding.model_id,
            "image_size": [int(n) for n in embedding.image_size],
            "shape": list(features.shape),
            "dtype": str(features.dtype),
            "sha256": _tensor_sha256(features),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # mode 0o777 & ~umask
            atomic_write(
                path,
                lambda tmp: save_file(
                    {"features": features}, tmp, metadata={"medseg": json.dumps(meta)}
                ),
            )
        except (OSError, SafetensorError) as err:
            self.last_write_error = err
            self._warn_once(err)

    def _warn_once(self, err: BaseException) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        warnings.warn(
            f"embedding cache directory {str(self.disk_dir)!r} cannot be written "
            f"({type(err).__name__}: {err}); caching in memory only. Set ${CACHE_DIR_ENV} "
            "(or disk_dir=) to a writable directory to keep embeddings across runs.",
            RuntimeWarning,
            stacklevel=4,
        )

    def __getstate__(self) -> dict:
        # Pickled envs carry their configuration, not megabytes of tensors.
        return {"max_bytes": self.max_bytes, "disk_dir": self.disk_dir}

    def __setstate__(self, state: dict) -> None:
        type(self).__init__(self, state["max_bytes"], state["disk_dir"])


def _matches(
    entry: Embedding,
    model_id: str | None,
    image_size: tuple[int, int] | None,
    features: FeatureSpec | None,
) -> bool:
    if model_id is not None and entry.model_id != model_id:
        return False
    if image_size is not None and tuple(entry.image_size) != tuple(image_size):
        return False
    if features is not None:
        shape, dtype = features
        if tuple(entry.features.shape) != tuple(shape) or entry.features.dtype != dtype:
            return False
    return True


_DEFAULT: EmbeddingCache | None = None
_DEFAULT_LOCK = threading.Lock()


def default_cache() -> EmbeddingCache:
    """The process-wide cache shared by segmenters built without one.

    Sharing it means a new env on the same images (``gym.make`` again, a vector env's copies)
    re-encodes nothing. ``$MEDSEG_CACHE_DIR``, when set, adds the on-disk layer (``~`` and
    environment variables in it are expanded).
    """
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = EmbeddingCache(disk_dir=os.environ.get(CACHE_DIR_ENV) or None)
        return _DEFAULT

"""The on-disk cache of ONNX decoder graphs: one file per model, graph kind and weights.

A graph is built (exported) once per key and read back by every later process
(``onnx_decoder.OnnxDecoder``). The folder is ``$MEDSEG_ONNX_DIR``, else
``${XDG_CACHE_HOME:-~/.cache}/medseg-env/onnx`` (:func:`onnx_cache_dir`).

- Files are written atomically (``medseg_env.files.atomic_write``: a temporary file renamed
  over the target), so a reader never sees half a graph, and two processes that build the same
  graph at once both leave a whole file.
- Each file carries its key and a SHA-256 of its own content in its metadata: a file that fails
  to parse, fails its digest or was written for another key is a miss, and is rebuilt.
- An unwritable folder only costs the rebuild in each process (with a warning).
- The folder is bounded (:data:`MAX_BYTES`): after each write, the least recently used graphs
  go until the rest fit (a read marks a file used). Weights trained and evaluated one after the
  other would otherwise leave a graph set per checkpoint behind.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..files import atomic_write, default_folder

if TYPE_CHECKING:
    import onnx

ONNX_DIR_ENV = "MEDSEG_ONNX_DIR"
MAX_BYTES = 512 * 1024**2
"""The folder's bound: about 25 graphs of LiteMedSAM's decoder (20 MB each)."""

_DIGEST_KEY = "medseg_env.sha256"  # metadata: the digest of the model without this entry
_KEY_KEY = "medseg_env.key"  # metadata: the cache key the file was written for


def onnx_cache_dir() -> Path:
    """``$MEDSEG_ONNX_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/medseg-env/onnx``."""
    return default_folder("onnx", ONNX_DIR_ENV)


def weights_digest(*modules: nn.Module) -> str:
    """SHA-256 of the modules' state (names, shapes, dtypes and bytes), in order."""
    digest = hashlib.sha256()
    for module in modules:
        for name, value in module.state_dict().items():
            array = value.detach().cpu().contiguous().numpy()
            digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def safe_name(text: str) -> str:
    """``text`` with every character but letters, digits and ``-_.`` replaced by ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _model_digest(model: onnx.ModelProto) -> str:
    """SHA-256 of the serialized model without its digest entry."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [p for p in copy.metadata_props if p.key != _DIGEST_KEY]
    del copy.metadata_props[:]
    copy.metadata_props.extend(kept)
    return hashlib.sha256(copy.SerializeToString()).hexdigest()


class GraphCache:
    """Graph files in ``folder`` (:func:`onnx_cache_dir` by default), one per key.

    Args:
        folder: where the files go.
        max_bytes: the folder's bound (:data:`MAX_BYTES`); None: unbounded.
    """

    def __init__(self, folder: str | Path | None = None, max_bytes: int | None = MAX_BYTES):
        self.folder = Path(folder) if folder is not None else onnx_cache_dir()
        self.max_bytes = max_bytes

    def path(self, key: str) -> Path:
        """The file of ``key`` (a name made of letters, digits and ``-_.``)."""
        return self.folder / f"{safe_name(key)}.onnx"

    def load(self, key: str) -> bytes | None:
        """The cached graph's bytes, or None when it is missing, damaged or not ``key``'s."""
        import onnx

        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            model = onnx.load_model_from_string(data)
        except Exception:  # protobuf's DecodeError and whatever else a damaged file raises
            return None
        meta = {p.key: p.value for p in model.metadata_props}
        if meta.get(_KEY_KEY) != key or meta.get(_DIGEST_KEY) != _model_digest(model):
            return None
        try:
            os.utime(path)  # used now: the last file the bound removes
        except OSError:
            pass
        return data

    def store(self, key: str, model: onnx.ModelProto) -> bytes:
        """Stamp ``model`` with ``key`` and its digest, write it atomically, and return its
        bytes; a failed write only warns (the caller still has the graph)."""
        import onnx

        onnx.helper.set_model_props(model, {_KEY_KEY: key})
        onnx.helper.set_model_props(model, {_KEY_KEY: key, _DIGEST_KEY: _model_digest(model)})
        data = model.SerializeToString()
        path = self.path(key)
        try:
            atomic_write(path, data, make_parents=True)
        except OSError as err:
            warnings.warn(
                f"could not write the decoder graph to {path} ({err}); it is rebuilt in each "
                f"process. Set ${ONNX_DIR_ENV} to a writable folder.",
                stacklevel=4,
            )
            return data
        self.prune(keep=path)
        return data

    def prune(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used graphs until the folder fits ``max_bytes`` (never
        ``keep``); returns the removed files. Files another process removes first are skipped."""
        if self.max_bytes is None:
            return []
        files = []
        for path in self.folder.glob("*.onnx"):
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        removed = []
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            removed.append(path)
        return removed

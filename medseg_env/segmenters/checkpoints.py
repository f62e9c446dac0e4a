"""Reading weight files safely: safetensors, or ``torch.load(weights_only=True)``; checksums.

Every weight file a backend loads is verified against a SHA-256 recorded in code before use.
Hashing a large file takes a while, so ``cached_file_sha256`` hashes each file once per process
and hashes it again only when the file changes (another size, inode or timestamp).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any

import torch

_SHA256 = re.compile(r"[0-9a-f]{64}")


class WeightsChecksumError(RuntimeError):
    """A weights file is not the one this code was released with (corrupt, or modified)."""


def normalize_sha256(value: str, what: str = "sha256") -> str:
    """``value`` as 64 lower-case hex digits (surrounding space and upper case are accepted).

    Raises ``ValueError`` for anything that is not a SHA-256 written in hex.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string of 64 hex digits; got {type(value).__name__}")
    text = value.strip().lower()
    if not _SHA256.fullmatch(text):
        raise ValueError(f"{what} must be a SHA-256: 64 hexadecimal digits; got {value!r}")
    return text


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file's bytes, computed now (see ``cached_file_sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_HASHES: dict[str, tuple[tuple[int, ...], str]] = {}
_HASHES_LOCK = threading.Lock()


def _identity(stat: os.stat_result) -> tuple[int, ...]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def cached_file_sha256(path: str | Path) -> str:
    """``file_sha256(path)``, computed once per process for each state of the file.

    The result is remembered under the resolved path together with the file's size, inode,
    modification and change times, so a file that is rewritten or replaced is hashed again.
    """
    resolved = Path(path).resolve()
    before = _identity(resolved.stat())
    with _HASHES_LOCK:
        known = _HASHES.get(str(resolved))
    if known is not None and known[0] == before:
        return known[1]
    digest = file_sha256(resolved)
    if _identity(resolved.stat()) == before:  # not changed while it was being read
        with _HASHES_LOCK:
            _HASHES[str(resolved)] = (before, digest)
    return digest


def check_nonempty(path: str | Path, what: str = "weights file") -> Path:
    """``path``, after checking that it is a file and not empty (clear errors naming it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes); reinstall or re-download it")
    return path


def verify_sha256(
    path: str | Path, expected: str, what: str = "weights file", hint: str = ""
) -> str:
    """Return the file's SHA-256, raising ``WeightsChecksumError`` when it is not ``expected``.

    ``expected`` may be written in upper case or with surrounding space. The file is hashed
    once per process (``cached_file_sha256``).
    """
    expected = normalize_sha256(expected, f"the expected SHA-256 of {what}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    actual = cached_file_sha256(path)
    if actual != expected:
        raise WeightsChecksumError(
            f"checksum mismatch for {what} {path}: SHA-256 is {actual}, expected {expected}. "
            f"The file is corrupt or has been modified.{' ' + hint if hint else ''}"
        )
    return actual


def load_safetensors(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file on the CPU; clear errors that name the file."""
    path = check_nonempty(path, what)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError and friends: truncated, not safetensors at all
        raise ValueError(
            f"{what} {str(path)!r} could not be read as safetensors (truncated or damaged?): {err}"
        ) from err


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, safely: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    check_nonempty(path, "checkpoint")
    if path.suffix == ".safetensors":
        state: Any = load_safetensors(path, "checkpoint")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"checkpoint {str(path)!r} could not be read as a PyTorch state dict "
                f"(torch.load with weights_only=True): {err}"
            ) from err
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a dict")
    return {k.removeprefix("module."): v for k, v in state.items()}

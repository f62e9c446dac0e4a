"""Safe writes and folder locks: the one place every writer of the three packages gets them.

- :func:`atomic_write` writes a file through a temporary file beside it and ``os.replace``, so
  a reader (or a run resumed after a crash) sees the old file or the new one, never half of one.
  The benchmark's results, the SFT export, the embedding cache and the ONNX graph cache all
  write through it.
- :func:`folder_lock` holds a folder for one process (``fcntl.flock``), so two runs never
  write the same results folder at once.
- :func:`default_folder` is where every default output or cache folder lives:
  ``$<ENV_VAR>`` if set, else ``${XDG_CACHE_HOME:-~/.cache}/medseg-env/<kind>`` (the
  benchmark's results, the SFT export, the embedding cache, the ONNX graph cache), never the
  current directory.

Files get the usual permissions for the process umask (``mkstemp`` makes 0600), so a cache or
results folder shared between users works.
"""

from __future__ import annotations

import os
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

Writer = Callable[[Path], None]
"""Writes a file at the given path (``safetensors.torch.save_file`` bound to its tensors)."""


def expand_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` with environment variables and ``~`` expanded, made absolute.

    So ``MEDSEG_CACHE_DIR='~/cache'`` means the home directory's ``cache``, never ``./~/cache``,
    and a later ``chdir`` does not move the folder.
    """
    return Path(os.path.expanduser(os.path.expandvars(os.fspath(path)))).absolute()


def default_folder(kind: str, env_var: str) -> Path:
    """``$env_var`` if set (and not empty), else ``${XDG_CACHE_HOME:-~/.cache}/medseg-env/<kind>``.

    The one rule for the default folders of the three packages (``kind`` is ``bench``, ``sft``,
    ``embeddings``, ``onnx``...). The result goes through :func:`expand_folder`: absolute, with
    ``~`` and environment variables expanded, so it never depends on the current directory.
    """
    configured = os.environ.get(env_var)
    if configured:
        return expand_folder(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return expand_folder(Path(base) / "medseg-env" / kind)


def _umask_at_import() -> int:
    mask = os.umask(0)  # the only portable way to read it; restored at once, at import
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``).

    ``os.umask`` can only read it by setting it, which races with other threads creating
    files; elsewhere the value at import is used.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def atomic_write(
    path: str | os.PathLike[str], data: str | bytes | Writer, *, make_parents: bool = False
) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder and ``os.replace``.

    ``data`` is text (UTF-8), bytes, or a writer called with the temporary file's path (for
    libraries that write files themselves, such as safetensors). The bytes are synced before
    the rename. On any error, or an interruption, the temporary file is removed and ``path``
    is left as it was; the error propagates.

    Args:
        make_parents: create the missing parent folders first.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if callable(data):
            os.close(fd)
            data(Path(tmp))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        else:
            payload = data.encode() if isinstance(data, str) else data
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock (the message names the folder and the holder)."""


def _lock_holder(fd: int) -> str:
    """What the lock file says about its holder ("pid 123 on host"), or ""."""
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _acquire(path: Path, folder: Path, what: str) -> int | None:
    """The locked file's descriptor, or None (with a warning) where files cannot be locked."""
    if fcntl is None:
        warnings.warn(
            f"no file locking on this platform: nothing stops a second {what} on {folder}",
            stacklevel=4,
        )
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise FolderInUseError(f"cannot create the lock file {path}: {err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd) or "pid unknown"
            os.close(fd)
            raise FolderInUseError(
                f"{folder} is in use by another {what} ({holder}; lock file {path}). "
                "Wait for it to end, or choose another --out folder."
            ) from None
        except OSError as err:  # a filesystem without locks (some network mounts)
            os.close(fd)
            warnings.warn(
                f"cannot lock {path} ({err}): nothing stops a second {what} on {folder}",
                stacklevel=4,
            )
            return None
        # The previous holder may have removed the file between our open and our flock: then
        # the lock is on a file nobody else sees any more. Start again on the current one.
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


@contextmanager
def folder_lock(folder: Path, lock_name: str, what: str = "run") -> Iterator[None]:
    """Hold ``folder`` for one process: a second one on the same folder is refused meanwhile.

    The lock is ``fcntl.flock`` on ``folder/lock_name``, not a file created with ``O_EXCL``:
    the kernel releases a flock when its holder dies, however it dies (SIGKILL, out of memory),
    so a crashed run never blocks the next one and there is no guessing from a PID whether the
    holder still lives (PIDs are reused, and a PID written on another host of a shared
    filesystem means nothing here). The file holds the holder's PID and host only for the
    messages, and is removed when the holder ends, normally or not (exception, Ctrl-C). A file
    left behind (its run was killed) is taken over with a warning.

    Args:
        what: names the holder in messages ("medseg-bench run", "SFT export").

    Raises:
        FolderInUseError: another process holds the lock.
    """
    path = folder / lock_name
    fd = _acquire(path, folder, what)
    if fd is None:  # no locking here: warned
        yield
        return
    try:
        previous = _lock_holder(fd)
        if previous:
            warnings.warn(
                f"{path}: taking over a stale lock left by {previous}, a {what} that did not "
                "end cleanly and is no longer running",
                stacklevel=3,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: nobody can take it in between
        os.close(fd)  # releases the lock

"""Writing files so that a reader, or the next start after a kill, sees the old content or the new, never half.

The one way hpcrun writes a file that must survive a kill: a temporary file beside the target, flushed and
fsynced, renamed over the target, and the folder fsynced so the rename itself is on disk. (As submitit's
``temporary_save_path``; torchtitan's checkpointer does the same for its folders.)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Makes a rename or a new entry in ``path`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` in place and fsyncs it (for files inside a folder that is renamed into place
    afterwards, such as a checkpoint's staging folder: the folder's rename is the atomic step)."""
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes | str, mode: int | None = None, durable: bool = True) -> None:
    """Replaces ``path`` with ``data`` atomically and durably.

    Args:
        path: the file to write (its folder must exist).
        data: text or bytes.
        mode: permission bits for the file (default: the temporary file's, 0600).
        durable: fsync the file before its rename and the folder after; False when the caller writes many files
            and makes them all durable at once afterwards (:func:`sync_filesystem`); the rename is atomic either
            way.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def publish_folder(staging: Path, folder: Path) -> None:
    """Makes a folder written aside (``staging``) appear whole at ``folder``: its files fsynced, one rename, the
    parent fsynced. Raises OSError when ``folder`` exists already (another process published it first)."""
    for f in Path(staging).rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    os.rename(staging, folder)
    fsync_dir(Path(folder).parent)


def atomic_write_json(path: Path, data: Any, indent: int | None = 1, durable: bool = True) -> None:
    """:func:`atomic_write` of ``data`` as JSON."""
    atomic_write(path, json.dumps(data, indent=indent, sort_keys=False), durable=durable)


def sync_filesystem(path: Path) -> None:
    """Makes everything written to the file system that holds ``path`` durable: one ``syncfs`` (Linux) for a
    batch of files written with ``durable=False`` (a sweep's thousand run directories), where an fsync of each
    file and folder would cost two round trips apiece. Elsewhere (no syncfs): ``os.sync``."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", str(path))
    finally:
        os.close(fd)


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it is missing or unreadable (a torn or foreign file)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default

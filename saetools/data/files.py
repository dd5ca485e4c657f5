"""Writing files so that nothing already saved is lost.

Every file saetools writes (SAEs, checkpoints' stream state, activation stores, reports) goes
through these helpers: the new content is written beside its destination and moved into place
with one rename, which the operating system makes atomic. A write interrupted part-way (an
exception, ``KeyboardInterrupt``, a full disk) leaves the previous file or folder as it was and
removes its own temporary files. Destinations are checked before any work starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_file", "atomic_write_bytes", "atomic_write_text", "check_writable_dir"]


def check_writable_dir(path: str | Path, *, what: str) -> Path:
    """Create ``path`` (and its parents) if needed and prove it writable, or raise a clear error.

    Args:
        path: the folder that will be written to.
        what: what will be written there, for the message (e.g. ``"checkpoints"``).

    Raises:
        NotADirectoryError: ``path`` (or a parent) exists and is a file.
        OSError: the folder cannot be created or written (``PermissionError`` and the like, with
            the path and the fix in the message).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"cannot write {what} to {path}: it is a file, not a folder; pass a folder path"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".saetools-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:  # same error class (PermissionError, NotADirectoryError, ...), clearer message
        raise type(err)(
            err.errno,
            f"cannot write {what} to {path}: {err.strerror or err}. Pass a folder you "
            "can write to (check the spelling and the permissions)",
        ) from err
    return path


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (``safetensors``,
    ``papermill``). It is moved onto ``path`` when the block ends without an exception and the
    writer wrote something; otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.getsize(tmp):
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and one rename."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder's new content in a temporary folder beside it, then swap it in.

    Yields the temporary folder to write into. On success it replaces ``path`` (an existing
    folder is moved aside first and removed only once the new one is in place); on any
    exception, the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    check_writable_dir(path.parent, what=f"the folder {path.name}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.{uuid.uuid4().hex}.old"
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""Atomic file writes: the one place for "never leave a half-written file, never lose the one already there".

Every file ctiir writes for a user (checkpoints, ``config.yaml``, ``results.json``/``.md``, CIRR submission
files, check-data's reports and filtered copies) goes through :func:`atomic_open` or :func:`write_atomic`:

1. the data goes to a new temporary file in the destination's folder (same file system, so step 3 is a rename),
   created with the process's umask like any new file;
2. it is flushed and ``fsync``-ed, so a crash after the rename cannot leave an empty file behind it;
3. it is published with ``os.replace`` (``overwrite=True``), or with ``os.link``, which fails if the name
   exists, so a file that appeared in the meantime is never replaced (``overwrite=False``);
4. the folder is ``fsync``-ed (where the platform allows it), so the rename itself is durable.

An exception (or a kill) before step 3 leaves the old file as it was, and the temporary file is removed
(after a kill, a ``.<name>.*.tmp`` file may stay behind; it is never read).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "write_atomic"]

# Errors of os.link that mean "this file system has no hard links", not "the name exists".
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK}


def _temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusively created file beside ``path`` (mode 0o666 less the umask, like any new file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a platform that cannot open folders (Windows) skips it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (e.g. network mounts) refuse fsync on a folder; the rename still happened
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic and fails if ``path`` exists, even if it appeared a moment ago
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
        # No hard links here (e.g. some network or FAT file systems): check, then rename (a small race).
        if path.exists():
            raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", *, overwrite: bool = True, encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit it becomes ``path`` in one rename.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes). With ``overwrite=False`` an existing ``path`` is an error
    (``FileExistsError``), checked again at the moment of publishing. If the block raises, ``path`` is left
    as it was and the temporary file is removed.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole new file: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        if mode == "wb":
            handle: IO[Any] = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path, overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    sync_folder(path.parent)


def write_atomic(path: str | Path, data: str | bytes, *, overwrite: bool = True, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically (see the module docstring); returns ``path``."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", overwrite=overwrite, encoding=encoding) as out:
        out.write(data)
    return Path(path)

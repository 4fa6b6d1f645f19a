"""Atomic replacement of a *set* of files in one folder (an index is several files that must agree).

One ``os.replace`` is atomic, several are not: a crash between two of them would leave new embeddings
beside old ids. So a commit goes in three steps:

1. every new file is written to a hidden temporary beside its final name and flushed to disk;
2. a journal (``.commit.json``) naming those temporaries is created with one ``os.replace``: the commit point;
3. each temporary is renamed over its final name, the files to drop are removed, and the journal is deleted.

A crash before step 2 leaves the previous files untouched (the temporaries are ignored and cleaned up by the
next write). A crash after it is finished by :func:`recover`, which every reader and writer calls first, so
a reader sees either the whole old set or the whole new one. One writer at a time per folder is assumed.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ctiir.io import sync_folder, write_atomic

JOURNAL = ".commit.json"
_TMP_MARK = ".tmp-"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _roll_forward(folder: Path, journal: Mapping[str, Any]) -> None:
    for name, tmp in journal["files"].items():
        if (folder / tmp).exists():
            os.replace(folder / tmp, folder / name)
    for name in journal.get("remove", []):
        (folder / name).unlink(missing_ok=True)
    sync_folder(folder)
    (folder / JOURNAL).unlink(missing_ok=True)
    sync_folder(folder)


def pending_commit(folder: Path) -> bool:
    return (Path(folder) / JOURNAL).exists()


def recover(folder: Path) -> None:
    """Finish a commit whose journal was written, and delete temporaries of one that never reached it."""
    folder = Path(folder)
    journal_path = folder / JOURNAL
    if journal_path.exists():
        try:
            journal = json.loads(journal_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise OSError(f"{journal_path}: unreadable commit journal ({err}); it is written atomically, so this "
                          "file was changed by something else") from err
        _roll_forward(folder, journal)
    for stray in folder.glob(f".*{_TMP_MARK}*"):
        stray.unlink(missing_ok=True)


def commit(folder: Path, writers: Mapping[str, Callable[[Path], None]], remove: Iterable[str] = ()) -> None:
    """Replace the files ``writers`` names (each writer writes its file at the path it is given) and remove
    the files in ``remove``, all or nothing."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recover(folder)
    token = uuid.uuid4().hex[:8]
    staged: dict[str, str] = {}
    try:
        for name, write in writers.items():
            tmp = folder / f".{name}{_TMP_MARK}{token}"
            staged[name] = tmp.name
            write(tmp)
            _fsync_file(tmp)
        dropped = [name for name in remove if name not in writers]
        write_atomic(folder / JOURNAL, json.dumps({"files": staged, "remove": dropped}))
    except BaseException:
        for tmp_name in staged.values():
            (folder / tmp_name).unlink(missing_ok=True)
        raise
    _roll_forward(folder, {"files": staged, "remove": dropped})

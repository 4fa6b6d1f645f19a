"""Atomic writes: a failure in the middle of writing a checkpoint, results.json/md, a submission file, a
check-data output or a synthetic dataset leaves the file that was there before intact (``ctiir.io``)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import ctiir.checkpoints
import ctiir.io
from ctiir.checkpoints import SafeCheckpointIO, load_checkpoint
from ctiir.io import atomic_open, write_atomic


class HalfWriter:
    """A file whose disk fills up halfway through the first write."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def write(self, data: Any) -> int:
        self.handle.write(data[: max(1, len(data) // 2)])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Names of files whose write fails halfway (add to the returned set). Every atomic write in ctiir goes
    through ``ctiir.io.atomic_open``: a module that wrote its files another way would not fail here."""
    names: set[str] = set()
    real = ctiir.io.atomic_open

    @contextlib.contextmanager
    def failing(path: Any, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
        with real(path, mode, **kwargs) as handle:
            yield HalfWriter(handle) if Path(path).name in names else handle

    monkeypatch.setattr(ctiir.io, "atomic_open", failing)
    monkeypatch.setattr(ctiir.checkpoints, "atomic_open", failing)
    return names


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------- ctiir.io
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, disk_full: set[str]) -> None:
    target = tmp_path / "results.json"
    write_atomic(target, '{"old": true}')
    disk_full.add("results.json")
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, json.dumps({"new": "x" * 1000}))
    assert target.read_text() == '{"old": true}' and leftovers(tmp_path) == []


def test_no_overwrite_refuses_an_existing_file_even_one_that_appears_while_writing(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("mine")
    with pytest.raises(FileExistsError, match="out.json already exists"):
        write_atomic(target, "theirs", overwrite=False)
    late = tmp_path / "late.json"
    with pytest.raises(FileExistsError, match="late.json already exists"):
        with atomic_open(late, overwrite=False) as handle:
            handle.write("ours")
            late.write_text("someone else's")  # created between the check and the rename
    assert target.read_text() == "mine" and late.read_text() == "someone else's" and leftovers(tmp_path) == []


def test_a_new_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode


# ---------------------------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_write_that_fails_keeps_the_previous_checkpoint(tmp_path: Path, disk_full: set[str]) -> None:
    io, path = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "pytorch-lightning_version": "2", "step": 1}, path)
    disk_full.add("last.ckpt")
    with pytest.raises((OSError, RuntimeError)):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}, "pytorch-lightning_version": "2", "step": 2}, path)
    assert io.load_checkpoint(path)["step"] == 1 and leftovers(tmp_path) == []


KILL_WHILE_SAVING = """
import os, signal, sys, torch
import ctiir.io
from ctiir.checkpoints import SafeCheckpointIO

path = sys.argv[1]
io = SafeCheckpointIO()
io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "pytorch-lightning_version": "2", "step": 1}, path)
real_fdopen = ctiir.io.os.fdopen

class Killed:
    def __init__(self, handle):
        self.handle = handle
    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real kill mid-write
    def __getattr__(self, name):
        return getattr(self.handle, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)

ctiir.io.os.fdopen = lambda *a, **k: Killed(real_fdopen(*a, **k))
io.save_checkpoint({"state_dict": {"w": torch.zeros(1_000_000)}, "pytorch-lightning_version": "2", "step": 2}, path)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_run_killed_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(KILL_WHILE_SAVING))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script), str(path)], env=env, capture_output=True, timeout=300)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    assert load_checkpoint(path)["step"] == 1
    assert len(leftovers(tmp_path)) == 1, "the half-written temporary file stays beside it, never read"


# ---------------------------------------------------------------------------------------------- results
def test_results_files_are_replaced_atomically(tmp_path: Path, disk_full: set[str]) -> None:
    from ctiir.pipeline import PipelineConfig, StageConfig, run_progressive

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = {"results.json": '{"stages": {"I": {"skipped": true}}}', "results.md": "the old table\n"}
    disabled = {name: StageConfig(enabled=False) for name in ("I", "II", "III")}
    cfg = PipelineConfig(run_dir=str(run_dir), stages=disabled, overwrite=True, progress_bar=False)
    for name in old:
        for file, text in old.items():
            (run_dir / file).write_text(text)
        disk_full.clear()
        disk_full.add(name)
        with pytest.raises(OSError, match="No space left"):
            run_progressive(cfg)
        assert (run_dir / name).read_text() == old[name], "the file being written when the disk filled is intact"
    disk_full.clear()
    run_progressive(cfg)
    assert json.loads((run_dir / "results.json").read_text())["stages"]["III"] == {"skipped": True}
    assert leftovers(run_dir) == []


def test_submission_files_are_both_written_or_neither(tmp_path: Path, disk_full: set[str]) -> None:
    from ctiir.submission import submission_paths, write_cirr_submission

    names = [f"img{i}" for i in range(60)]
    top50, top3 = [names[:50], names[1:51]], [names[:3], names[3:6]]
    recall, subset = submission_paths(tmp_path, "run1")
    disk_full.add(subset.name)
    with pytest.raises(OSError, match="No space left"):
        write_cirr_submission([1, 2], top50, top3, tmp_path, "run1")
    assert not recall.exists() and not subset.exists() and leftovers(tmp_path) == []
    disk_full.clear()
    assert write_cirr_submission([1, 2], top50, top3, tmp_path, "run1") == (recall, subset)
    assert json.loads(recall.read_text())["1"] == names[:50]


def test_check_data_json_report_is_never_partial(tmp_path: Path, disk_full: set[str]) -> None:
    from ctiir.checkdata.core import write_filtered

    disk_full.add("cap.dress.val.json")
    with pytest.raises(OSError, match="No space left"):
        write_filtered(tmp_path / "filtered", {"captions/cap.dress.val.json": [{"a": 1}]}, [tmp_path / "src"])
    assert not (tmp_path / "filtered" / "captions" / "cap.dress.val.json").exists()
    assert leftovers(tmp_path / "filtered" / "captions") == []


def test_a_synthetic_overwrite_that_fails_while_swapping_puts_the_old_dataset_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctiir.datamodules import synthetic

    out = synthetic.generate(tmp_path / "ds", seed=0, size="tiny")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if ".partial-" in str(src):
            raise OSError(errno.EIO, "I/O error (injected) while moving the new dataset in")
        real_replace(src, dst)

    monkeypatch.setattr(synthetic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        synthetic.generate(out, seed=1, size="tiny", overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]

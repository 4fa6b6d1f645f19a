"""Progress bars of the evaluation's encoding loops and the CIRR submission (``ctiir.progress``): shown on rank 0
only, only when the run shows progress, inside Lightning's rich display when there is one, and complete."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from rich.console import Console
from rich.progress import Progress

import ctiir.callbacks.retrieval as retrieval_module
from ctiir.callbacks import RetrievalEvaluation
from ctiir.progress import encoding_progress, trainer_progress
from tests.test_retrieval_callback import FakeData, FakeStage


def test_a_bar_on_its_own_console_counts_every_item() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    with encoding_progress("cirr test gallery", 7, enabled=True, console=console) as advance:
        for _ in range(3):
            advance(2)
        advance(1)
    assert "cirr test gallery" in buffer.getvalue() and "7/7" in buffer.getvalue()


def test_a_disabled_bar_prints_nothing() -> None:
    buffer = io.StringIO()
    with encoding_progress("x", 5, enabled=False, console=Console(file=buffer, force_terminal=True)) as advance:
        advance(5)
    assert buffer.getvalue() == ""


class Recording(Progress):
    """A live display that remembers each task as it was when removed."""

    def __init__(self) -> None:
        super().__init__(console=Console(file=io.StringIO(), force_terminal=True))
        self.removed: list[tuple[str, float, float | None]] = []

    def remove_task(self, task_id: Any) -> None:
        task = self._tasks[task_id]
        self.removed.append((task.description, task.completed, task.total))
        super().remove_task(task_id)


def test_a_bar_inside_a_live_display_is_a_task_of_it_and_goes_away() -> None:
    host = Recording()
    with host:
        with encoding_progress("toy-a/x gallery", 9, enabled=True, host=host) as advance:
            advance(4)
            advance(5)
        assert host.task_ids == []
    assert host.removed == [("toy-a/x gallery", 9, 9)]


def test_trainer_progress_follows_the_trainer() -> None:
    enabled_bar = SimpleNamespace(is_enabled=True, progress=None)
    assert trainer_progress(SimpleNamespace(progress_bar_callback=None, is_global_zero=True)) == (False, None)
    assert trainer_progress(SimpleNamespace(progress_bar_callback=enabled_bar, is_global_zero=False)) == (False, None)
    assert trainer_progress(SimpleNamespace(progress_bar_callback=enabled_bar, is_global_zero=True)) == (True, None)
    disabled = SimpleNamespace(is_enabled=False, progress=None)
    assert trainer_progress(SimpleNamespace(progress_bar_callback=disabled, is_global_zero=True)) == (False, None)
    tqdm = TQDMProgressBar()
    assert trainer_progress(SimpleNamespace(progress_bar_callback=tqdm, is_global_zero=True)) == (True, None)
    host = Recording()
    rich_bar = SimpleNamespace(is_enabled=True, progress=host)
    assert trainer_progress(SimpleNamespace(progress_bar_callback=rich_bar, is_global_zero=True)) == (True, None), (
        "a display that is not live is not a host"
    )
    with host:
        assert trainer_progress(SimpleNamespace(progress_bar_callback=rich_bar, is_global_zero=True)) == (True, host)


@contextmanager
def spy(calls: list[dict[str, Any]], description: str, total: int, **kwargs: Any) -> Iterator[Any]:
    record = {"description": description, "total": total, "advanced": 0, **kwargs}
    calls.append(record)
    with encoding_progress(description, total, **kwargs) as advance:

        def counted(n: int) -> None:
            record["advanced"] += n
            advance(n)

        yield counted


@pytest.mark.parametrize("shown", [True, False])
def test_the_retrieval_callback_shows_a_bar_per_pass_when_the_trainer_shows_progress(
    monkeypatch: pytest.MonkeyPatch, shown: bool
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(retrieval_module, "encoding_progress", lambda *a, **k: spy(calls, *a, **k))
    callback = RetrievalEvaluation()
    bars = [RichProgressBar()] if shown else []
    t = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=shown, callbacks=[callback, *bars],
    )
    t.validate(FakeStage(), datamodule=FakeData(), verbose=False)
    described = [(c["description"], c["total"], c["advanced"]) for c in calls]
    assert described == [
        (f"{key} {part}", size, size)
        for key in ("toy-a/x", "toy-a/y", "toy-b")
        for part, size in (("gallery", 9), ("queries", 11))
    ]
    assert all(c["enabled"] is shown for c in calls)
    if shown:  # inside Lightning's live rich display, not a second one
        assert all(c["host"] is bars[0].progress for c in calls)


@pytest.mark.parametrize("shown", [True, False])
def test_the_cirr_submission_shows_a_bar_per_pass(monkeypatch: pytest.MonkeyPatch, tmp_path, shown: bool) -> None:
    import ctiir.submission as submission_module
    from ctiir.datamodules.cirr import CIRRDataModule
    from tests.test_submission import TF, FakeModule, cirr_test_split

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(submission_module, "encoding_progress", lambda *a, **k: spy(calls, *a, **k))
    cirr_test_split(tmp_path)
    data = CIRRDataModule(str(tmp_path), image_root=str(tmp_path / "img_raw"), batch_size=7)
    data.set_transforms(TF, TF)
    submission_module.predict_cirr_submission(FakeModule(), data, tmp_path / "sub", progress=shown)
    assert [(c["description"], c["total"], c["advanced"], c["enabled"]) for c in calls] == [
        ("test gallery", 54, 54, shown), ("test queries", 54, 54, shown),
    ]

"""Progress bars for ctiir's own loops: the retrieval evaluation's encoding and the CIRR submission's.

Both encode a whole gallery and every query outside Lightning's loops, which on a real benchmark takes
minutes with nothing on screen. They show a rich bar, on rank 0 only and only where the run shows progress
at all (a trainer with its progress bar enabled; a command without ``--progress_bar=false``). Inside a
trainer that uses Lightning's ``RichProgressBar`` the bar is a task of that live display (two live
displays would fight over the terminal); otherwise it is a transient display of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Advance = Callable[[int], None]


def _columns() -> tuple[Any, ...]:
    return (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


@contextmanager
def encoding_progress(
    description: str,
    total: int,
    *,
    enabled: bool,
    host: Progress | None = None,
    console: Console | None = None,
) -> Iterator[Advance]:
    """Yield ``advance(n)``: a bar of ``total`` items when ``enabled``, else a function that does nothing.

    ``host``: a live ``Progress`` to add the bar to (Lightning's ``RichProgressBar.progress``); the task is
    removed when the block ends. Without one, a transient ``Progress`` of its own on ``console`` (default:
    rich's console, i.e. the terminal).
    """
    if not enabled or total <= 0:
        yield lambda n: None
        return
    if host is not None:
        task = host.add_task(description, total=total)
        try:
            yield lambda n: host.update(task, advance=n)
        finally:
            host.remove_task(task)
        return
    with Progress(*_columns(), transient=True, console=console) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.update(task, advance=n)


def trainer_progress(trainer: Any) -> tuple[bool, Progress | None]:
    """``(show, host)`` for a loop run inside ``trainer``: whether to show a bar, and the live display to add it to.

    Shown only on global rank 0 and only when the trainer has an enabled progress-bar callback. ``host`` is
    the ``Progress`` of a ``RichProgressBar`` whose display is live, else ``None`` (a TQDM bar, or a rich one
    between stages: the bar then gets a display of its own).
    """
    bar = getattr(trainer, "progress_bar_callback", None)
    if bar is None or not getattr(trainer, "is_global_zero", True) or not getattr(bar, "is_enabled", False):
        return False, None
    progress = getattr(bar, "progress", None)
    live = getattr(progress, "live", None)
    return True, progress if isinstance(progress, Progress) and getattr(live, "is_started", False) else None

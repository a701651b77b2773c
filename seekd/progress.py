"""Progress bars (rich) for work a user waits on: weight loading, downloads, benchmarks, profiling."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`. Drawn on stderr only when it is a terminal, so logs and pipes stay clean."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@contextlib.contextmanager
def transfer_bar(description: str, total: int, completed: int = 0) -> Iterator[Callable[[int], None]]:
    """Yields a thread-safe `advance(n_bytes)` (negative for bytes thrown away): size, speed and ETA,
    on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with progress:
        task = progress.add_task(description, total=total, completed=completed)
        yield lambda n: progress.advance(task, n)

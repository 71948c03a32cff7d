"""Progress bars on stderr (rich), silent when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(description: str, total: float) -> Iterator[Callable[..., None]]:
    """Yields advance(amount=0, *, completed=None, total=None)."""
    if not sys.stderr.isatty():
        yield lambda *a, **k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), TaskProgressColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(amount: float = 0, *, completed: float | None = None, total: float | None = None) -> None:
            if completed is not None:
                bar.update(task, completed=completed, total=total)
            else:
                bar.advance(task, amount)

        yield advance

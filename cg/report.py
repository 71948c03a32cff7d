"""What cg says on stderr besides errors (those are cli's funnel): warnings, notes, plain
status lines, and progress (rich), the last silent when stderr is not a terminal. Every note goes
through say(), the one place that respects --quiet and says a thing once per process."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_said: set[str] = set()  # the `once` keys said in this process


def say(text: str, *, quiet: bool = False, once: str | None = None) -> None:
    """A line on stderr; nothing with quiet, and nothing when the once key was said already
    (a model's missing tokens hold for the whole run, not each target)."""
    if quiet or (once is not None and once in _said):
        return
    if once is not None:
        _said.add(once)
    print(text, file=sys.stderr)


def warn(message: str, *, quiet: bool = False, once: str | None = None) -> None:
    say(f"Warning: {message}", quiet=quiet, once=once)


def note(message: str, *, quiet: bool = False, once: str | None = None) -> None:
    say(f"Note: {message}", quiet=quiet, once=once)


def forget() -> None:
    """Say every once-note again (tests: each test is its own run)."""
    _said.clear()


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


class PromptIndicator:
    """One line on stderr while the prompt is evaluated: tokens done of total, and the rate.

    Shown from the second batch on (a prompt of one batch is quick), on a terminal only; closed,
    and the line erased, before the completion's first text prints. Decoding never runs with it.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None
        self._start = time.perf_counter()
        self._first_done = 0

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._start, self._first_done = time.perf_counter(), done
            self._bar = Progress(TextColumn("Reading the prompt"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("tokens {task.fields[rate]}"), console=Console(stderr=True),
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task("prompt", total=total, rate="")
        elapsed = time.perf_counter() - self._start
        rate = f"({(done - self._first_done) / elapsed:.0f}/s)" if elapsed > 0 and done > self._first_done else ""
        self._bar.update(self._task, completed=done, total=total, rate=rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

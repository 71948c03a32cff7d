"""Ctrl-C, SIGTERM and SIGHUP as exceptions, raised where Python code can clean up.

Python runs a signal handler between two bytecodes of the main thread, wherever they are. Inside
a ctypes callback (llama.cpp's log callback runs during model loading and quantization) an
exception cannot reach the caller: ctypes prints "Exception ignored on calling ctypes callback"
and llama.cpp carries on, so a Ctrl-C there was lost and cg went on to write its output. Such
callbacks run inside `deferred()`: a signal arriving there is noted, and `check()` raises it once
the C call has returned (llama_log.capture calls it on the way out; writers call it before they
replace a file).

`install()` (cg's entry point calls it first) makes SIGTERM and SIGHUP raise `Terminated`, so
that `finally` blocks remove temp files as they do for Ctrl-C, and the process exits 143 / 129.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_depth = 0
_pending: BaseException | None = None
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """SIGTERM or SIGHUP: like KeyboardInterrupt, not an error of the program (a BaseException)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exception_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def exit_code(exc: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended."""
    return exc.exit_code if isinstance(exc, Terminated) else 128 + signal.SIGINT


def _handler(signum: int, _frame: FrameType | None) -> None:
    global _pending  # noqa: PLW0603 - the one pending signal of this process
    exc = exception_for(signum)
    if _depth > 0:
        _pending = _pending or exc
        return
    raise exc


def install() -> None:
    """SIGINT, SIGTERM and SIGHUP raise (or, inside a callback, are noted) in the main thread."""
    for signum in HANDLED:
        signal.signal(signum, _handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Code called back from C: a signal (or a KeyboardInterrupt Python's default handler raised
    here) is kept for check() instead of being lost inside the callback."""
    global _depth, _pending  # noqa: PLW0603
    _depth += 1
    try:
        yield
    except BaseException as exc:
        _pending = _pending or exc
    finally:
        _depth -= 1


def check() -> None:
    """Raise a signal that arrived inside a callback, now that Python code can handle it."""
    global _pending
    if _pending is not None and _depth == 0:
        exc, _pending = _pending, None
        raise exc


def pending() -> bool:
    return _pending is not None

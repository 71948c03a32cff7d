"""Ctrl-C, SIGTERM and SIGHUP as exceptions, raised where Python code can clean up.

Python runs a signal handler between two bytecodes of the main thread, wherever they are. Inside
a ctypes callback (llama.cpp's log callback runs during model loading and quantization) an
exception cannot reach the caller: ctypes prints "Exception ignored on calling ctypes callback"
and llama.cpp carries on, so a Ctrl-C there was lost and cg went on to write its output. Such
callbacks are marked `@from_c`: the handler looks at the frame it interrupted, and a signal that
lands anywhere inside one (its very first line included, before any `with` could be entered) is
only noted; `check()` raises it once the C call has returned (llama_log.capture calls it on the
way out, the decode loop at each token, writers before they replace a file, the entry point
before it exits). `deferred()` does the same for code that runs under Python's own handler.

`install()` (cg's entry point calls it first) makes SIGTERM and SIGHUP raise `Terminated`, so
that `finally` blocks remove temp files as they do for Ctrl-C, and the process exits 143 / 129.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType, FrameType
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

_depth = 0
_pending: BaseException | None = None
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_from_c: set[CodeType] = set()  # the code of functions C calls back


class Terminated(BaseException):
    """SIGTERM or SIGHUP: like KeyboardInterrupt, not an error of the program (a BaseException)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


INTERRUPTED = 128 + signal.SIGINT  # the exit code of a Ctrl-C


def exception_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def exit_code(exc: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended."""
    return exc.exit_code if isinstance(exc, Terminated) else INTERRUPTED


def from_c(function: F) -> F:
    """Mark a function that C calls back (a ctypes callback): a signal landing inside it, at
    whatever line, waits for check()."""
    _from_c.add(function.__code__)
    return function


def _inside_callback(frame: FrameType | None) -> bool:
    """The interrupted frame, or one of its callers, is a callback from C. Walking the frames
    (not a flag the callback sets) covers the instants before its first statement runs."""
    while frame is not None:
        if frame.f_code in _from_c:
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending  # noqa: PLW0603 - the one pending signal of this process
    exc = exception_for(signum)
    if _depth > 0 or _inside_callback(frame):
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

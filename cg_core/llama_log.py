"""llama.cpp's log, captured: shown on stderr only with --verbose, kept so errors can quote it.

llama.cpp reports why a model failed to load or quantize only through its log callback. The
callback is marked interrupts.from_c (and runs inside interrupts.deferred() for Python's own
handler): a Ctrl-C that lands there, at any line, is raised when the capture ends, after the C
call returned, instead of being lost inside ctypes.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import interrupts

_ERROR_LEVEL = 3
_CONT_LEVEL = 5


class LogBuffer:
    def __init__(self, echo: bool, on_text: Callable[[str], None] | None = None):
        self.echo = echo
        self.on_text = on_text
        self.lines: list[tuple[int, str]] = []
        self._level = 1

    def add(self, level: int, text: str) -> None:
        if level == _CONT_LEVEL:
            level = self._level
        self._level = level
        self.lines.append((level, text))
        if self.echo:
            sys.stderr.write(text)
        if self.on_text is not None:
            self.on_text(text)

    def last_error(self) -> str:
        errors = [t.strip() for lvl, t in self.lines if lvl == _ERROR_LEVEL and t.strip()]
        return errors[-1] if errors else ""


_active: list[LogBuffer] = []
_callback: Any = None  # kept alive: llama.cpp holds a raw pointer to it


def _install() -> None:
    global _callback  # noqa: PLW0603 - one callback per process, installed once
    if _callback is not None:
        return
    import llama_cpp
    import llama_cpp._logger

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]  # a ctypes CFUNCTYPE
    @interrupts.from_c
    def callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        with interrupts.deferred():
            message = text.decode("utf-8", errors="replace")
            if _active:
                _active[-1].add(level, message)
            elif level == _ERROR_LEVEL:
                sys.stderr.write(message)

    _callback = callback
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


@contextmanager
def capture(echo: bool = False, on_text: Callable[[str], None] | None = None) -> Iterator[LogBuffer]:
    _install()
    buf = LogBuffer(echo, on_text)
    _active.append(buf)
    try:
        yield buf
    finally:
        _active.remove(buf)
    interrupts.check()  # a Ctrl-C that arrived while llama.cpp was calling back

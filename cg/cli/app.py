"""The Typer application and its sub-apps, and stdout handling. Options are flags.py's;
commands live in generation.py and manage.py."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import sys
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cg.errors import InputError, UsageError

if TYPE_CHECKING:
    from cg.engine import Event

app = typer.Typer(
    name="cg",
    help="CodeGemma in the terminal: fill-in-the-middle completion, generation and GGUF conversion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from cg.cli.doctor import version_line

        write_result(version_line() + "\n")
        raise typer.Exit()


VersionOpt = Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                          help="Print cg's, llama-cpp-python's and llama.cpp's versions.")]


@app.callback()
def _root(version: VersionOpt = False) -> None:
    """CodeGemma in the terminal: fill-in-the-middle completion, generation and GGUF conversion."""


models_app = typer.Typer(help="List, remove and choose installed models.", invoke_without_command=True,
                         add_completion=False, rich_markup_mode=None)
app.add_typer(models_app, name="models")
eval_app = typer.Typer(help="Measure what a model is worth on code benchmarks.", no_args_is_help=True,
                       add_completion=False, rich_markup_mode=None)
app.add_typer(eval_app, name="eval")

class PipeClosed(Exception):
    """stdout's reader went away (`cg ... | head`): not an error for a pipe tool. Not an OSError,
    so Click does not turn it into exit 1."""


def write_result(text: str | bytes) -> None:
    """Write a result to stdout now (stdout carries results only). Text goes out as UTF-8, a file
    name that is not UTF-8 as its own bytes (surrogateescape, as Python read it from argv)."""
    if sys.stdout is None:
        raise UsageError("standard output is closed: cg has nowhere to print its result",
                         "Redirect it instead of closing it, e.g. > out.txt or > /dev/null.")
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise PipeClosed from None


def read_text(path: Path, what: str) -> str:
    """A UTF-8 file the user named (--prefix-file, --context): a regular file, of source size."""
    from cg.files.textfile import read_bytes

    data, _ = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 text: {path}", "cg reads UTF-8 source files.") from None


def read_stdin() -> str:
    from cg.files.textfile import MAX_SOURCE_BYTES

    if sys.stdin is None or sys.stdin.isatty():
        return ""
    data = sys.stdin.buffer.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise InputError("standard input is over 16 MiB: not source code", "Pipe a source file into cg.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("standard input is not UTF-8 text", "Pipe UTF-8 source code into cg.") from None


def stdin_pending() -> bool:
    """Does standard input hold text (a pipe or a file with data)? Looks without reading or
    waiting: the bytes a pipe holds (FIONREAD), what is left of a file. A terminal, /dev/null or
    a pipe nobody has written to yet hold nothing."""
    stream = sys.stdin
    if stream is None or stream.isatty():
        return False
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # an in-memory stream (io.UnsupportedOperation is both)
        buffer = getattr(stream, "buffer", stream)
        try:
            here = buffer.tell()
            end = buffer.seek(0, os.SEEK_END)
            buffer.seek(here)
        except (OSError, ValueError):  # not seekable: nothing to tell
            return False
        return bool(end > here)
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return os.fstat(fd).st_size > os.lseek(fd, 0, os.SEEK_CUR)
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        count = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        return bool(int.from_bytes(count, sys.byteorder))
    return False


def refuse_stdin(given: str) -> None:
    """Input given on the command line and standard input too: cg would read one and drop the other."""
    if stdin_pending():
        raise UsageError(f"{given} and standard input both given: cg reads only one of them",
                         "Pass the input one way (in a loop that reads standard input, add < /dev/null).")


def end_line() -> None:
    """On a terminal, end the output's last line so the shell's prompt does not join it (as
    simonw/llm does); a pipe or file gets exactly the text."""
    if sys.stdout is not None and sys.stdout.isatty():
        write_result("\n")


def emit(events: Iterator[Event], as_json: bool) -> None:
    """Write final text as it arrives (stdout gets exactly the text), or one JSON object."""
    for event in events:
        if event.text and not as_json:
            write_result(event.text)
        if event.result is not None:
            if as_json:
                write_result(json.dumps(event.result.to_json(), ensure_ascii=False) + "\n")
            elif event.result.text and not event.result.text.endswith("\n"):
                end_line()

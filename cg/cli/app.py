"""The Typer application and its sub-apps, and stdout handling. Options are options.py's;
commands live in generation.py and manage.py."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import InputError

if TYPE_CHECKING:
    from ..complete import Event
    from ..postprocess import FenceStream

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
        from ..doctor import version_line

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
    """Write a result to stdout now (stdout carries results only)."""
    try:
        if isinstance(text, bytes):
            sys.stdout.flush()
            sys.stdout.buffer.write(text)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
    except BrokenPipeError:
        raise PipeClosed from None


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}", "Check the path.") from None
    except IsADirectoryError:
        raise InputError(f"{what} is a directory: {path}", "Pass a file.") from None
    except PermissionError:
        raise InputError(f"cannot read {what} {path}: permission denied", "Check the file's permissions.") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 text: {path}", "cg reads UTF-8 source files.") from None


def read_stdin() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("standard input is not UTF-8 text", "Pipe UTF-8 source code into cg.") from None


def emit(events: Iterator[Event], as_json: bool) -> None:
    """Write final text as it arrives (stdout gets exactly the text), or one JSON object."""
    parts = []
    for event in events:
        parts.append(event.text)
        if event.text and not as_json:
            write_result(event.text)
        if event.result is not None and as_json:
            event.result.text = "".join(parts)
            write_result(json.dumps(event.result.to_json(), ensure_ascii=False) + "\n")


def through(events: Iterator[Event], transform: FenceStream) -> Iterator[Event]:
    """Pass a stream through a text transform (FenceStream), keeping it a stream."""
    from ..complete import Event

    for event in events:
        text = transform.feed(event.text)
        if event.result is not None:
            yield Event(text + transform.finish(), event.token, event.finish_reason, event.result)
            return
        if text:
            yield Event(text, event.token)



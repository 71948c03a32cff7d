"""The `cg` command: a thin Typer shell over the library. main() is the one error funnel.

Heavy modules (llama_cpp, numpy, huggingface_hub, gguf) load inside the commands, so `cg --help`
stays instant.
"""

from __future__ import annotations

import os
import re
import sys

import click
import typer

from cg import settings
from cg.cli import (
    generation,  # noqa: F401  (defining the commands registers them)
    manage,  # noqa: F401  (defining the commands registers them)
)
from cg.cli.app import PipeClosed, app
from cg.errors import ReportedError, exit_code, report_signal
from cg_core import interrupts


class _NeverRaised(Exception):
    pass


def _fail(message: str, hint: str, code: int) -> int:
    print(f"Error: {message}", file=sys.stderr)
    if hint:
        print(f"Hint: {hint}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush cannot fail
    (Python exits 120 when it does)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _one_line(message: str) -> str:
    """Click's message on one line, each sentence once (Typer and Click both add "Did you mean")."""
    sentences: list[str] = []
    for part in re.split(r"(?<=[.?!])\s+", " ".join(message.split())):
        if part and part not in sentences:
            sentences.append(part)
    return " ".join(sentences)


def _command_path(exc: click.UsageError, root: click.Command, args: list[str]) -> str:
    """The command whose --help helps: the one the arguments name, as deep as they go (Click
    reports some parse errors against the group that called it)."""
    path, command = ["cg"], root
    for arg in args:
        if not isinstance(command, click.Group) or arg.startswith("-"):
            break
        sub = command.get_command(exc.ctx or click.Context(command), arg)
        if sub is None:
            break
        path.append(arg)
        command = sub
    found = " ".join(path)
    reported = exc.ctx.command_path if exc.ctx else "cg"
    return found if len(found) > len(reported) else reported


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, map every failure to `Error:` + `Hint:` and an exit code."""
    # Click 8.2+ raises NoArgsIsHelpError for a bare group; older Clicks show the help themselves.
    no_args_is_help: type[BaseException] = getattr(click.exceptions, "NoArgsIsHelpError", _NeverRaised)
    try:
        command = typer.main.get_command(app)
        rc = command.main(args=argv, prog_name="cg", standalone_mode=False)
        if rc == interrupts.INTERRUPTED:  # Typer turns Ctrl-C into a silent Exit(130)
            return report_signal(KeyboardInterrupt())
        return rc if isinstance(rc, int) else 0  # click returns typer.Exit's code here
    except PipeClosed:
        _silence_stdout()
        return 0
    except ReportedError as exc:
        if settings.debug():
            raise
        return _fail(exc.message, exc.hint, exit_code(exc))
    except no_args_is_help as exc:
        ctx = getattr(exc, "ctx", None)
        print(ctx.get_help() if ctx else "", file=sys.stderr)
        return 2
    except click.UsageError as exc:
        cmd = _command_path(exc, command, sys.argv[1:] if argv is None else argv)
        return _fail(_one_line(exc.format_message()), f"Run `{cmd} --help` to see the options.", 2)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        return report_signal(KeyboardInterrupt())
    except interrupts.Terminated as exc:
        return report_signal(exc)
    except Exception as exc:  # the funnel: no traceback unless asked for
        if settings.debug():
            raise
        return _fail(f"{type(exc).__name__}: {exc}", "Run again with CG_DEBUG=1 for the traceback.", 1)



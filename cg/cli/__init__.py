"""The `cg` command: a thin Typer shell over the library. main() is the one error funnel.

Heavy modules (llama_cpp, numpy, huggingface_hub, gguf) load inside the commands, so `cg --help`
stays instant.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import ReportedError, exit_code
from . import generation, manage  # noqa: F401  (defining the commands registers them)
from .app import PipeClosed, app


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, map every failure to `Error:` + `Hint:` and an exit code."""
    import click

    command = typer.main.get_command(app)
    # Click 8.2+ raises NoArgsIsHelpError for a bare group; older Clicks show the help themselves.
    no_args_is_help: type[BaseException] = getattr(click.exceptions, "NoArgsIsHelpError", _NeverRaised)
    try:
        rc = command.main(args=argv, prog_name="cg", standalone_mode=False)
        if rc == 130:  # Typer turns Ctrl-C into a silent Exit(130)
            return _fail("interrupted", "", 130)
        return rc if isinstance(rc, int) else 0  # click returns typer.Exit's code here
    except PipeClosed:
        _silence_stdout()
        return 0
    except ReportedError as exc:
        if os.environ.get("CG_DEBUG") == "1":
            raise
        return _fail(exc.message, exc.hint, exit_code(exc))
    except no_args_is_help as exc:
        ctx = getattr(exc, "ctx", None)
        print(ctx.get_help() if ctx else "", file=sys.stderr)
        return 2
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "cg"
        return _fail(exc.format_message().splitlines()[0], f"Run `{cmd} --help` to see the options.", 2)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        return _fail("interrupted", "", 130)
    except Exception as exc:  # the funnel: no traceback unless asked for
        if os.environ.get("CG_DEBUG") == "1":
            raise
        return _fail(f"{type(exc).__name__}: {exc}", "Run again with CG_DEBUG=1 for the traceback.", 1)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()

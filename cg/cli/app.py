"""The Typer application and its sub-apps, the options shared by commands (each declared once,
its default from the library), and stdout handling. Commands live in run.py and manage.py."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..complete import RunOptions
from ..errors import InputError, UsageError
from ..server import Api

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

# Options shared by several commands, defined once; their defaults come from the library.
ModelOpt = Annotated[str | None, typer.Option("--model", "-m",
                                                 help="GGUF path or installed model name (env CG_MODEL).")]
CtxOpt = Annotated[int, typer.Option("--ctx", min=64, help="Context size in tokens.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", min=1, help="CPU threads (default: all cores).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; same input and seed give the same output.")]
TempOpt = Annotated[float, typer.Option("--temperature", min=0.0, help="0 is greedy (default).")]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)]
TopKOpt = Annotated[int, typer.Option("--top-k", min=0)]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Most tokens to generate.")]
MaxTimeOpt = Annotated[float | None, typer.Option("--max-time", min=0.0,
                                                     help="Seconds; then stop at the next newline.")]
JsonOpt = Annotated[bool, typer.Option("--json",
                                       help="Print one JSON object with text, stop reason, counts and timings.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log on stderr.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No warnings or notes on stderr.")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="Extra stop text (repeatable).")]
BiasOpt = Annotated[list[str] | None, typer.Option("--logit-bias",
                                                      help="TOKEN_ID=BIAS added to a token's logit (repeatable).")]
MaxLinesOpt = Annotated[int | None, typer.Option("--max-lines", min=1, help="Cut after this many lines.")]
SingleLineOpt = Annotated[bool, typer.Option("--single-line", help="Stop at the end of the first line.")]
GpuLayersOpt = Annotated[int | None, typer.Option(
    "--gpu-layers", "-ngl", envvar="CG_GPU_LAYERS", min=-1,
    help="Layers to run on the GPU (-1: all). Default: all when llama.cpp has a GPU backend, else 0.")]
WindowOpt = Annotated[int | None, typer.Option(
    "--max-prompt-tokens", envvar="CG_MAX_PROMPT_TOKENS", min=16,
    help="Most prompt tokens. Default: 2048 when the model runs on the CPU, else the whole context.")]
BlockStopOpt = Annotated[bool, typer.Option("--block-stop/--no-block-stop",
                                            help="End where the code block at the cursor ends (default: on).")]
ServerOpt = Annotated[str | None, typer.Option(
    "--server", envvar="CG_SERVER", help="Run on this llama-server or OpenAI-compatible server (URL) instead.")]
ServerApiOpt = Annotated[Api | None, typer.Option(
    "--server-api", case_sensitive=False,
    help="llama (llama-server's native API) or openai (/v1/completions); default: found from the URL.")]
ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="CG_API_KEY", help="The server's API key.")]
ContextOpt = Annotated[list[Path] | None, typer.Option("--context", "-c",
                                                          help="Another file to show the model first (repeatable).")]


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


def run_options(*, model: str | None, ctx: int, threads: int | None, seed: int, temperature: float, top_p: float,
                 top_k: int, max_tokens: int, max_time: float | None, verbose: bool, quiet: bool,
                 gpu_layers: int | None, max_prompt_tokens: int | None, logit_bias: list[str] | None = None,
                 as_json: bool = False, server: str | None = None, server_api: str | None = None,
                 api_key: str | None = None) -> RunOptions:
    return RunOptions(model=model, n_ctx=ctx, threads=threads, seed=seed, verbose=verbose,
                      temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                      max_time=max_time, quiet=quiet, logit_bias=_parse_bias(logit_bias or []), prompt_cache=True,
                      gpu_layers=gpu_layers, max_prompt_tokens=max_prompt_tokens,
                      progress=not quiet and not as_json and sys.stderr.isatty(),
                      server=server or None, server_api=server_api, api_key=api_key)


def _parse_bias(items: list[str]) -> dict[int, float] | None:
    bias = {}
    for item in items:
        token, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            bias[int(token)] = float(value)
        except ValueError:
            raise UsageError(f"--logit-bias {item!r} is not TOKEN_ID=BIAS", "Example: --logit-bias 70=-100") from None
    return bias or None


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



"""Command-line options, each declared once with its default from the library.

`model_options` gives every command that runs a model the same options (model, context, where
it runs, sampling, limits, output noise) and hands the command one Request built from them,
as simonw/llm's option decorators do. A command that declares one of them itself (eval's
--max-tokens has its own default) keeps its own; a new shared option is one entry in SHARED.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer

from cg import settings
from cg.errors import UsageError
from cg.request import Api, Request, Sampling
from cg.settings import CTX_STEP, DEFAULT_CTX, DEFAULT_MAX_TOKENS, SPLICE_BY_DEFAULT
from cg_core.tokens import BY_NAME

F = TypeVar("F", bound=Callable[..., Any])
_BAN_EXAMPLE = f"--logit-bias {BY_NAME['fim_sep'].codegemma_id}=-100"  # <|file_separator|> banned


class FiniteFloat(click.ParamType):  # type: ignore[type-arg]  # generic in newer Clicks only
    """A float within [low, high] that is a number: NaN passes every comparison, so a range
    alone lets `--temperature nan` through."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None):
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            bounds = f"{self.low if self.low is not None else '-inf'}..{self.high if self.high is not None else 'inf'}"
            self.fail(f"{value} is not in the range {bounds}.", param, ctx)
        return number


class Integer(click.IntRange):
    """A whole number within bounds. click.IntRange's type name is "integer range", so `-n abc`
    said "'abc' is not a valid integer range": it is an integer that was asked for."""

    name = "integer"


def int_option(*names: str, min: int | None = None, max: int | None = None, help: str | None = None,
               envvar: str | None = None) -> Any:
    return typer.Option(*names, click_type=Integer(min, max), help=help, envvar=envvar)


def _float_option(*names: str, low: float | None = None, high: float | None = None, help: str | None = None,
                  envvar: str | None = None) -> Any:
    return typer.Option(*names, click_type=FiniteFloat(low, high), help=help, envvar=envvar)


# Options some commands share without running a model, or with a meaning of their own.
ModelOpt = Annotated[str | None, typer.Option("--model", "-m",
                                              help=f"GGUF path or installed model name (env {settings.MODEL.name}).")]
CtxOpt = Annotated[int, int_option("--ctx", min=64, help=f"Context size in tokens (llama.cpp rounds it up to a "
                                                         f"multiple of {CTX_STEP}).")]
ThreadsOpt = Annotated[int | None, int_option("--threads", "-t", min=1, help="CPU threads (default: all cores).")]
GpuLayersOpt = Annotated[int | None, int_option(
    "--gpu-layers", "-ngl", envvar=settings.GPU_LAYERS.name, min=-1,
    help="Layers to run on the GPU (-1: all). Default: all when llama.cpp has a GPU backend, else 0.")]
MaxPromptTokensOpt = Annotated[int | None, int_option(
    "--max-prompt-tokens", envvar=settings.MAX_PROMPT_TOKENS.name, min=16,
    help=f"Most prompt tokens. Default: {settings.CPU_WINDOW} when the model runs on the CPU, else the whole "
         "context.")]
ExactOpt = Annotated[bool, typer.Option(
    "--exact", help="Reuse earlier prompts only where the result is bit for bit a fresh run's: no reuse after "
                    f"a change (env {settings.EXACT.name})" + (" (the default)." if not SPLICE_BY_DEFAULT else "."))]
SpliceOpt = Annotated[bool, typer.Option(
    "--splice", help="Also reuse what follows a change in an earlier prompt: faster, close to a fresh run but "
                     f"not bit for bit (env {settings.SPLICE.name})" + (" (the default)." if SPLICE_BY_DEFAULT
                                                                        else "; README: Prompt reuse."))]
ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", envvar=settings.API_KEY.name, help="The server's API key.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log on stderr.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No warnings or notes on stderr.")]
MaxTokensOpt = Annotated[int, int_option("--max-tokens", "-n", min=1, help="Most tokens to generate.")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="Extra stop text (repeatable).")]
MaxLinesOpt = Annotated[int | None, int_option("--max-lines", min=1, help="Cut after this many lines.")]
SingleLineOpt = Annotated[bool, typer.Option("--single-line", help="Stop at the end of the first line.")]
BlockStopOpt = Annotated[bool, typer.Option("--block-stop/--no-block-stop",
                                            help="End where the code block at the cursor ends (default: on).")]
RequireFimOpt = Annotated[bool, typer.Option(
    "--require-fim", help="Fail on a model without FIM tokens instead of continuing the prefix.")]


@dataclass(frozen=True)
class Shared:
    """One option every model-running command takes: its parameter, and where it goes."""

    name: str
    annotation: Any
    default: Any
    field: str  # the Request field, or "sampling.<field>"


SAMPLING = Sampling()
SHARED = (
    Shared("model", ModelOpt, None, "model"),
    Shared("ctx", CtxOpt, DEFAULT_CTX, "n_ctx"),
    Shared("threads", ThreadsOpt, None, "threads"),
    Shared("gpu_layers", GpuLayersOpt, None, "gpu_layers"),
    Shared("max_prompt_tokens", MaxPromptTokensOpt, None, "max_prompt_tokens"),
    Shared("server", Annotated[str | None, typer.Option(
        "--server", envvar=settings.SERVER.name,
        help="Run on this llama-server or OpenAI-compatible server (URL) instead.")],
        None, "server"),
    Shared("server_api", Annotated[Api | None, typer.Option(
        "--server-api", case_sensitive=False,
        help="llama (llama-server's native API) or openai (/v1/completions); default: found from the URL.")],
        None, "server_api"),
    Shared("api_key", ApiKeyOpt, None, "api_key"),
    Shared("seed", Annotated[int, typer.Option(
        "--seed", help="Random seed; same input and seed give the same output.")], SAMPLING.seed, "sampling.seed"),
    Shared("temperature", Annotated[float, _float_option("--temperature", low=0.0, help="0 is greedy (default).")],
           SAMPLING.temperature, "sampling.temperature"),
    Shared("top_p", Annotated[float, _float_option("--top-p", low=0.0, high=1.0)], SAMPLING.top_p, "sampling.top_p"),
    Shared("top_k", Annotated[int, int_option("--top-k", min=0)], SAMPLING.top_k, "sampling.top_k"),
    Shared("min_p", Annotated[float, _float_option("--min-p", low=0.0, high=1.0)], SAMPLING.min_p, "sampling.min_p"),
    Shared("repeat_penalty", Annotated[float, _float_option("--repeat-penalty", low=0.0,
                                                            help="1.0 is none (default, as Google advises).")],
           SAMPLING.repeat_penalty, "sampling.repeat_penalty"),
    Shared("max_tokens", MaxTokensOpt, DEFAULT_MAX_TOKENS, "max_tokens"),
    Shared("max_time", Annotated[float | None, _float_option(
        "--max-time", low=0.0, help="Seconds; then stop at the next newline.")], None, "max_time"),
    Shared("logit_bias", Annotated[list[str] | None, typer.Option(
        "--logit-bias", help="TOKEN_ID=BIAS added to a token's logit (repeatable).")], None, "logit_bias"),
    Shared("exact", ExactOpt, False, "exact"),
    Shared("splice", SpliceOpt, False, "splice"),
    Shared("verbose", VerboseOpt, False, "verbose"),
    Shared("quiet", QuietOpt, False, "quiet"),
)


def model_options(command: F) -> F:
    """Add SHARED to a command's options; the command gets them as `run: Request`."""
    own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != "run"]
    taken = {p.name for p in own}
    shared = [s for s in SHARED if s.name not in taken]
    params = own + [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=s.default,
                                      annotation=s.annotation) for s in shared]

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        given = {s.name: values.pop(s.name) for s in shared}
        return command(**values, run=run_options(given, as_json=bool(values.get("as_json"))))

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]


def exact_choice(exact: bool, splice: bool) -> bool | None:
    """Request.exact from --exact / --splice (None: neither, CG_EXACT / CG_SPLICE or the default decide)."""
    if splice and exact:
        raise UsageError("--exact and --splice contradict each other", "Pass one of them (or CG_EXACT / CG_SPLICE).")
    return True if exact else False if splice else None


def run_options(given: dict[str, Any], *, as_json: bool = False) -> Request:
    """The Request from the shared options' values (those a command left out keep their
    defaults; what neither gives, the environment decides when the request is resolved: a flag
    on the command line beats CG_EXACT / CG_SPLICE)."""
    run: dict[str, Any] = {"prompt_cache": True}
    sampling: dict[str, Any] = {}
    for s in SHARED:
        if s.name not in given:
            continue
        value = given[s.name]
        if s.field.startswith("sampling."):
            sampling[s.field.removeprefix("sampling.")] = value
        else:
            run[s.field] = value
    run["logit_bias"] = parse_bias(run.get("logit_bias") or [])
    run["exact"] = exact_choice(bool(run.get("exact")), bool(run.pop("splice", False)))
    run["progress"] = not run.get("quiet") and not as_json and sys.stderr.isatty()
    request = Request(**run, sampling=dataclasses.replace(SAMPLING, **sampling))
    return request.resolved()  # a bad CG_* value is an error before any model loads


def parse_bias(items: list[str]) -> dict[int, float] | None:
    bias = {}
    for item in items:
        token, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            bias[int(token)] = float(value)
        except ValueError:
            raise UsageError(f"--logit-bias {item!r} is not TOKEN_ID=BIAS", f"Example: {_BAN_EXAMPLE}") from None
        if not math.isfinite(bias[int(token)]):
            raise UsageError(f"--logit-bias {item!r}: the bias must be a finite number",
                             f"Example: {_BAN_EXAMPLE} (a large negative bias bans a token).")
    return bias or None


ContextFilesOpt = Annotated[list[Path] | None, typer.Option(
    "--context", "-c", help="Another file to show the model first (repeatable).")]

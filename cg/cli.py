"""The `cg` command: a thin Typer shell over the library. main() is the one error funnel.

Heavy modules (llama_cpp, numpy, huggingface_hub, gguf) load inside the commands, so `cg --help`
stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

import typer

from quantize.errors import QuantizeError
from quantize.llama_quant import OutType

from .complete import DEFAULT_CTX, DEFAULT_MAX_TOKENS, EVAL_MAX_TOKENS, GENERATE_MAX_TOKENS, RunOptions
from .engine import Sampling
from .errors import CgError, InputError, UsageError, exit_code

if TYPE_CHECKING:
    from .complete import Event
    from .postprocess import FenceStream

app = typer.Typer(
    name="cg",
    help="CodeGemma in the terminal: fill-in-the-middle completion, generation and GGUF conversion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
models_app = typer.Typer(help="List, remove and choose installed models.", invoke_without_command=True,
                         add_completion=False, rich_markup_mode=None)
app.add_typer(models_app, name="models")
eval_app = typer.Typer(help="Measure what a model is worth on code benchmarks.", no_args_is_help=True,
                       add_completion=False, rich_markup_mode=None)
app.add_typer(eval_app, name="eval")

# Options shared by several commands, defined once; their defaults come from the library.
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m",
                                                 help="GGUF path or installed model name (env CG_MODEL).")]
CtxOpt = Annotated[int, typer.Option("--ctx", min=64, help="Context size in tokens.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="CPU threads (default: all cores).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; same input and seed give the same output.")]
TempOpt = Annotated[float, typer.Option("--temperature", min=0.0, help="0 is greedy (default).")]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)]
TopKOpt = Annotated[int, typer.Option("--top-k", min=0)]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Most tokens to generate.")]
MaxTimeOpt = Annotated[Optional[float], typer.Option("--max-time", min=0.0,
                                                     help="Seconds; then stop at the next newline.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object with text, stop reason, counts and timings.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log on stderr.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No warnings or notes on stderr.")]
StopOpt = Annotated[Optional[list[str]], typer.Option("--stop", help="Extra stop text (repeatable).")]
BiasOpt = Annotated[Optional[list[str]], typer.Option("--logit-bias",
                                                      help="TOKEN_ID=BIAS added to a token's logit (repeatable).")]
MaxLinesOpt = Annotated[Optional[int], typer.Option("--max-lines", min=1, help="Cut after this many lines.")]
SingleLineOpt = Annotated[bool, typer.Option("--single-line", help="Stop at the end of the first line.")]
ContextOpt = Annotated[Optional[list[Path]], typer.Option("--context", "-c",
                                                          help="Another file to show the model first (repeatable).")]


class _PipeClosed(Exception):
    """stdout's reader went away (`cg ... | head`): not an error for a pipe tool. Not an OSError,
    so Click does not turn it into exit 1."""


def _out(text: str | bytes) -> None:
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
        raise _PipeClosed from None


def _run_options(*, model: str | None, ctx: int, threads: int | None, seed: int, temperature: float, top_p: float,
                 top_k: int, max_tokens: int, max_time: float | None, verbose: bool, quiet: bool,
                 logit_bias: list[str] | None = None) -> RunOptions:
    return RunOptions(model=model, n_ctx=ctx, threads=threads, seed=seed, verbose=verbose,
                      temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                      max_time=max_time, quiet=quiet, logit_bias=_parse_bias(logit_bias or []), prompt_cache=True)


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


def _read_text(path: Path, what: str) -> str:
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


def _read_stdin() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("standard input is not UTF-8 text", "Pipe UTF-8 source code into cg.") from None


def _emit(events: Iterator[Event], as_json: bool) -> None:
    """Write final text as it arrives (stdout gets exactly the text), or one JSON object."""
    parts = []
    for event in events:
        parts.append(event.text)
        if event.text and not as_json:
            _out(event.text)
        if event.result is not None and as_json:
            event.result.text = "".join(parts)
            _out(json.dumps(event.result.to_json(), ensure_ascii=False) + "\n")


def _through(events: Iterator[Event], transform: FenceStream) -> Iterator[Event]:
    """Pass a stream through a text transform (FenceStream), keeping it a stream."""
    from .complete import Event

    for event in events:
        text = transform.feed(event.text)
        if event.result is not None:
            yield Event(text + transform.finish(), event.token, event.finish_reason, event.result)
            return
        if text:
            yield Event(text, event.token)


@app.command()
def complete(
    prefix: Annotated[Optional[str], typer.Option("--prefix", help="Text before the cursor.")] = None,
    suffix: Annotated[Optional[str], typer.Option("--suffix", help="Text after the cursor.")] = None,
    prefix_file: Annotated[Optional[Path], typer.Option("--prefix-file")] = None,
    suffix_file: Annotated[Optional[Path], typer.Option("--suffix-file")] = None,
    marker: Annotated[str, typer.Option("--marker", help="Splits standard input into prefix and suffix.")] = "<CURSOR>",
    path: Annotated[Optional[str], typer.Option("--path", help="File path sent as the header line.")] = None,
    context: ContextOpt = None,
    spm: Annotated[bool, typer.Option("--spm", help="Suffix-prefix-middle order instead of PSM.")] = False,
    max_lines: MaxLinesOpt = None,
    single_line: SingleLineOpt = False,
    require_fim: Annotated[bool, typer.Option("--require-fim", help="Fail on a model without FIM tokens.")] = False,
    stop: StopOpt = None,
    logit_bias: BiasOpt = None,
    as_json: JsonOpt = False,
    model: ModelOpt = None,
    ctx: CtxOpt = DEFAULT_CTX,
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    temperature: TempOpt = Sampling.temperature,
    top_p: TopPOpt = Sampling.top_p,
    top_k: TopKOpt = Sampling.top_k,
    max_tokens: MaxTokensOpt = DEFAULT_MAX_TOKENS,
    max_time: MaxTimeOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fill in the middle. Input: --prefix/--suffix, files, or stdin split at <CURSOR>.

    Example: printf 'def add(a, b):\\n<CURSOR>\\n' | cg complete
    """
    from .complete import stream_complete

    pre, suf = _complete_input(prefix, suffix, prefix_file, suffix_file, marker)
    ctx_files = [(str(p), _read_text(p, "context file")) for p in context or []]
    opts = _run_options(model=model, ctx=ctx, threads=threads, seed=seed, temperature=temperature, top_p=top_p,
                        top_k=top_k, max_tokens=max_tokens, max_time=max_time, verbose=verbose, quiet=quiet,
                        logit_bias=logit_bias)
    events = stream_complete(pre, suf, opts=opts, path=path, context=ctx_files, spm=spm, max_lines=max_lines,
                             single_line=single_line, require_fim=require_fim, stop=stop or ())
    _emit(events, as_json)


def _complete_input(prefix: str | None, suffix: str | None, prefix_file: Path | None, suffix_file: Path | None,
                    marker: str) -> tuple[str, str]:
    if prefix is not None and prefix_file is not None:
        raise UsageError("--prefix and --prefix-file both given", "Use one of them.")
    if suffix is not None and suffix_file is not None:
        raise UsageError("--suffix and --suffix-file both given", "Use one of them.")
    pre = _read_text(prefix_file, "prefix file") if prefix_file else prefix
    suf = _read_text(suffix_file, "suffix file") if suffix_file else suffix
    if pre is None and suf is None:
        if not marker:
            raise UsageError("--marker must not be empty")
        text = _read_stdin()
        pre, _, suf = text.partition(marker)
    return pre or "", suf or ""


@app.command()
def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt (default: standard input).")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Keep a fenced code block as it is.")] = False,
    chat: Annotated[Optional[bool], typer.Option("--chat/--no-chat",
                                                 help="Force the instruction turn format on or off.")] = None,
    stop: StopOpt = None,
    logit_bias: BiasOpt = None,
    as_json: JsonOpt = False,
    model: ModelOpt = None,
    ctx: CtxOpt = DEFAULT_CTX,
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    temperature: TempOpt = Sampling.temperature,
    top_p: TopPOpt = Sampling.top_p,
    top_k: TopKOpt = Sampling.top_k,
    max_tokens: MaxTokensOpt = GENERATE_MAX_TOKENS,
    max_time: MaxTimeOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate code from a prompt (instruction models answer it, base models continue it)."""
    from .complete import stream_generate
    from .postprocess import FenceStream

    text = prompt if prompt is not None else _read_stdin()
    opts = _run_options(model=model, ctx=ctx, threads=threads, seed=seed, temperature=temperature, top_p=top_p,
                        top_k=top_k, max_tokens=max_tokens, max_time=max_time, verbose=verbose, quiet=quiet,
                        logit_bias=logit_bias)
    events = stream_generate(text, opts=opts, chat=chat, stop=stop or ())
    if not raw:
        events = _through(events, FenceStream())
    _emit(events, as_json)


@app.command()
def infill(
    targets: Annotated[list[str], typer.Argument(help="FILE:LINE[:COL] positions, or FILEs whose marker lines to fill.")],
    write: Annotated[bool, typer.Option("--write", "-w", help="Insert the completions into the files.")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Print a unified diff (for git apply / patch -p1).")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if any marker remains (lists them); writes nothing.")] = False,
    null: Annotated[bool, typer.Option("--null", "-z", help="With --check: list each marked FILE once, "
                                                            "NUL-terminated (for xargs -0, mapfile -d '').")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --write: replace read-only files too.")] = False,
    marker: Annotated[str, typer.Option("--marker", help="Marker comment text.")] = "cg: fill",
    encoding: Annotated[str, typer.Option("--encoding", help="Source file encoding.")] = "utf-8",
    context: Annotated[Optional[list[str]], typer.Option(
        "--context", "-c", help="Context FILE (repeatable), or 'auto' for the local imports.")] = None,
    max_lines: MaxLinesOpt = None,
    single_line: SingleLineOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per target.")] = False,
    model: ModelOpt = None,
    ctx: CtxOpt = DEFAULT_CTX,
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    temperature: TempOpt = Sampling.temperature,
    top_p: TopPOpt = Sampling.top_p,
    top_k: TopKOpt = Sampling.top_k,
    max_tokens: MaxTokensOpt = DEFAULT_MAX_TOKENS,
    max_time: MaxTimeOpt = None,
    logit_bias: BiasOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fill positions or marker comments (`# cg: fill`) in files; for scripts and git hooks."""
    from . import infill as infill_mod

    if check:
        left = infill_mod.check(targets, marker, encoding)
        if null:
            _out("".join(f"{path}\0" for path in dict.fromkeys(str(p) for p, _ in left)))
        else:
            _out("".join(f"{path}:{line}\n" for path, line in left))
        if left:
            raise typer.Exit(1)
        return
    opts = _run_options(model=model, ctx=ctx, threads=threads, seed=seed, temperature=temperature, top_p=top_p,
                        top_k=top_k, max_tokens=max_tokens, max_time=max_time, verbose=verbose, quiet=quiet,
                        logit_bias=logit_bias)
    ctx_arg = "auto" if context == ["auto"] else [Path(c) for c in context or []]
    results = infill_mod.infill(targets, opts=opts, write=write, force=force, marker=marker, encoding=encoding,
                                context=ctx_arg, max_lines=max_lines, single_line=single_line)
    filled = [f for r in results for f in r.filled]
    if as_json:
        for f in filled:
            data = {"file": str(f.target.path), "line": f.target.line, "col": f.target.col, **f.completion.to_json()}
            _out(json.dumps(data, ensure_ascii=False) + "\n")
    elif diff:
        _out(b"".join(r.diff() for r in results))
    elif not write:
        _out("\n".join(f.completion.text for f in filled))


def default_model_name(src_dir: Path, out_type: OutType) -> str:
    """FOLDER-TYPE, from the folder's real name (`cg quantize .` names it after the folder)."""
    return f"{src_dir.resolve().name.lower()}-{out_type.value}"


@app.command()
def quantize(
    src_dir: Annotated[Path, typer.Argument(help="Hugging Face checkpoint folder (config.json, *.safetensors, "
                                                 "tokenizer.model).")],
    type: Annotated[OutType, typer.Option("--type", case_sensitive=False, help="Output type.")] = OutType.Q4_K_M,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .gguf (default: cg's model store).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Name in the model store (default: FOLDER-TYPE).")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Convert a CodeGemma checkpoint to GGUF and quantize it with llama.cpp."""
    from quantize.convert import convert

    from . import store
    from .progress import progress_bar

    model_name = name or default_model_name(src_dir, type)
    target = output or store.ensure_dir(store.models_dir()) / f"{model_name}.gguf"
    result = convert(src_dir, target, type=type, force=force, threads=threads, progress=progress_bar)
    if output is None:
        ids, _ = store.gguf_special_ids(result.path)
        store.register(store.ModelRecord(name=model_name, path=str(result.path), quant=type.value,
                                         source=result.source, special_ids=ids))
    _out(f"{result.path}\n")


@app.command()
def download(
    model: Annotated[Optional[str], typer.Argument(
        help="codegemma-2b (default), codegemma-1.1-2b, codegemma-7b, codegemma-7b-it, codegemma-1.1-7b-it, "
             "or any hub repo id.")] = None,
    quant: Annotated[OutType, typer.Option("--quant", case_sensitive=False, help="Output type.")] = OutType.Q4_K_M,
    token: Annotated[Optional[str], typer.Option("--token", help="Hub token (default: HF_TOKEN, then `hf auth login`'s).")] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit (default: main).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an installed model of the same name.")] = False,
    keep_source: Annotated[bool, typer.Option(
        "--keep-source", help="Keep the safetensors checkpoint beside the GGUF in cg's store.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Name in the model store (default: MODEL-QUANT).")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Download CodeGemma from the Hugging Face hub, ready for `cg complete` (prints its name)."""
    from .hub import download as fetch

    record = fetch(model, quant=quant.value, token=token, revision=revision, force=force, keep_source=keep_source,
                   name=name, threads=threads)
    print(f"Installed {record.name}: {record.path}", file=sys.stderr)
    _out(f"{record.name}\n")


@eval_app.command("humaneval-infill")
def eval_humaneval_infill(
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="single-line (1033 tasks) or multi-line (5815).")] = "single-line",
    model: ModelOpt = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Run N tasks spread evenly over the set.")] = None,
    jobs: Annotated[Optional[int], typer.Option(
        "--jobs", "-j", min=1, help="Programs scored at once (default: cores-1, at most 4).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Per-task results as JSON lines (- for stdout).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted --out file.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out file.")] = False,
    self_check: Annotated[bool, typer.Option(
        "--self-check", help="Fill each task with its canonical text (must score 100%).")] = False,
    stop_words: Annotated[bool, typer.Option(
        "--stop-words", help="Also stop at HumanEval's usual words (\\nclass, \\ndef, \\n#, \\nif).")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds each test program may run.")] = 10.0,
    memory: Annotated[int, typer.Option("--memory-mb", min=64, help="Memory limit of each test program.")] = 1024,
    max_tokens: MaxTokensOpt = EVAL_MAX_TOKENS,
    ctx: CtxOpt = DEFAULT_CTX,
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """HumanEval infilling pass@1 through the same path as `cg complete` (tests run sandboxed)."""
    from .evaluate.humaneval import EvalOptions, default_jobs, evaluate
    from .evaluate.sandbox import Limits

    if resume and force:
        raise UsageError("--resume and --force contradict each other", "Pass one of them.")
    if (resume or force) and out is None:
        raise UsageError("--resume and --force need --out FILE")
    eo = EvalOptions(benchmark=benchmark, limit=limit, jobs=jobs or default_jobs(), out=out, resume=resume,
                     force=force, self_check=self_check, stop_words=stop_words,
                     limits=Limits(timeout=timeout, memory_mb=memory),
                     run=RunOptions(model=model, n_ctx=ctx, threads=threads, max_tokens=max_tokens, quiet=True))
    summary = evaluate(eo)
    text = json.dumps(summary.to_json()) + "\n" if as_json else summary.table()
    if out is not None and str(out) == "-":
        sys.stderr.write(text)
    else:
        _out(text)


@models_app.callback()
def models_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List installed models (* marks the one used by default)."""
    if ctx.invoked_subcommand is not None:
        return
    from . import store

    records = store.list_models()
    chosen = store.best_installed()
    rows: list[dict[str, Any]] = [
        {"name": r.name, "quant": r.quant, "size": r.size, "source": r.source, "revision": r.revision,
         "path": r.path, "default": chosen is not None and chosen.name == r.name} for r in records]
    if as_json:
        _out(json.dumps(rows, indent=2) + "\n")
        return
    if not rows:
        print("No models installed; cg uses the bundled Gemma 3 270M. Get CodeGemma: cg download codegemma-2b",
              file=sys.stderr)
        return
    for row in rows:
        mark = "*" if row["default"] else " "
        size = f"{row['size'] / 2**20:.0f} MiB"
        src = f"{row['source']}@{row['revision'][:10]}" if row["source"] else "-"
        _out(f"{mark} {row['name']}\t{row['quant'] or '-'}\t{size}\t{src}\t{row['path']}\n")


@models_app.command("rm")
def models_rm(name: str) -> None:
    """Remove an installed model and its file."""
    from . import store

    rec = store.remove(name)
    print(f"Removed {rec.name}", file=sys.stderr)


@models_app.command("default")
def models_default(name: str) -> None:
    """Use NAME when no --model or CG_MODEL is given."""
    from . import store

    store.set_default(name)
    print(f"Default model: {name}", file=sys.stderr)


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
    except _PipeClosed:
        _silence_stdout()
        return 0
    except (CgError, QuantizeError) as exc:
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

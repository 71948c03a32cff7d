"""Commands that run a model: complete, generate, infill."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..complete import DEFAULT_CTX, DEFAULT_MAX_TOKENS, GENERATE_MAX_TOKENS
from ..engine import Sampling
from ..errors import UsageError
from .app import (
    ApiKeyOpt,
    BiasOpt,
    BlockStopOpt,
    ContextOpt,
    CtxOpt,
    GpuLayersOpt,
    JsonOpt,
    MaxLinesOpt,
    MaxTimeOpt,
    MaxTokensOpt,
    ModelOpt,
    QuietOpt,
    SeedOpt,
    ServerApiOpt,
    ServerOpt,
    SingleLineOpt,
    StopOpt,
    TempOpt,
    ThreadsOpt,
    TopKOpt,
    TopPOpt,
    VerboseOpt,
    WindowOpt,
    app,
    emit,
    read_stdin,
    read_text,
    run_options,
    through,
    write_result,
)


@app.command()
def complete(
    prefix: Annotated[str | None, typer.Option("--prefix", help="Text before the cursor.")] = None,
    suffix: Annotated[str | None, typer.Option("--suffix", help="Text after the cursor.")] = None,
    prefix_file: Annotated[Path | None, typer.Option("--prefix-file")] = None,
    suffix_file: Annotated[Path | None, typer.Option("--suffix-file")] = None,
    marker: Annotated[str, typer.Option("--marker", help="Splits standard input into prefix and suffix.")] = "<CURSOR>",
    path: Annotated[str | None, typer.Option("--path", help="File path sent as the header line.")] = None,
    context: ContextOpt = None,
    spm: Annotated[bool, typer.Option("--spm", help="Suffix-prefix-middle order instead of PSM.")] = False,
    max_lines: MaxLinesOpt = None,
    single_line: SingleLineOpt = False,
    require_fim: Annotated[bool, typer.Option("--require-fim", help="Fail on a model without FIM tokens.")] = False,
    block_stop: BlockStopOpt = True,
    stop: StopOpt = None,
    logit_bias: BiasOpt = None,
    as_json: JsonOpt = False,
    model: ModelOpt = None,
    ctx: CtxOpt = DEFAULT_CTX,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    max_prompt_tokens: WindowOpt = None,
    server: ServerOpt = None,
    server_api: ServerApiOpt = None,
    api_key: ApiKeyOpt = None,
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
    from ..complete import stream_complete

    pre, suf = _complete_input(prefix, suffix, prefix_file, suffix_file, marker)
    ctx_files = [(str(p), read_text(p, "context file")) for p in context or []]
    opts = run_options(model=model, ctx=ctx, threads=threads, seed=seed, temperature=temperature, top_p=top_p,
                        top_k=top_k, max_tokens=max_tokens, max_time=max_time, verbose=verbose, quiet=quiet,
                        gpu_layers=gpu_layers, max_prompt_tokens=max_prompt_tokens, logit_bias=logit_bias,
                        as_json=as_json, server=server, server_api=server_api, api_key=api_key)
    events = stream_complete(pre, suf, opts=opts, path=path, context=ctx_files, spm=spm, max_lines=max_lines,
                             single_line=single_line, require_fim=require_fim, stop=stop or (), block_stop=block_stop)
    emit(events, as_json)


def _complete_input(prefix: str | None, suffix: str | None, prefix_file: Path | None, suffix_file: Path | None,
                    marker: str) -> tuple[str, str]:
    if prefix is not None and prefix_file is not None:
        raise UsageError("--prefix and --prefix-file both given", "Use one of them.")
    if suffix is not None and suffix_file is not None:
        raise UsageError("--suffix and --suffix-file both given", "Use one of them.")
    pre = read_text(prefix_file, "prefix file") if prefix_file else prefix
    suf = read_text(suffix_file, "suffix file") if suffix_file else suffix
    if pre is None and suf is None:
        if not marker:
            raise UsageError("--marker must not be empty")
        text = read_stdin()
        pre, _, suf = text.partition(marker)
    return pre or "", suf or ""


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt (default: standard input).")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Keep a fenced code block as it is.")] = False,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat",
                                                 help="Force the instruction turn format on or off.")] = None,
    stop: StopOpt = None,
    logit_bias: BiasOpt = None,
    as_json: JsonOpt = False,
    model: ModelOpt = None,
    ctx: CtxOpt = DEFAULT_CTX,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    max_prompt_tokens: WindowOpt = None,
    server: ServerOpt = None,
    server_api: ServerApiOpt = None,
    api_key: ApiKeyOpt = None,
    seed: SeedOpt = 0,
    temperature: TempOpt = Sampling.temperature,
    top_p: TopPOpt = Sampling.top_p,
    top_k: TopKOpt = Sampling.top_k,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", "-n", min=1, help=f"Most tokens to generate (default {GENERATE_MAX_TOKENS}; given, the answer "
                                          "no longer ends after one definition).")] = None,
    max_time: MaxTimeOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate code from a prompt (instruction models answer it, base models continue it)."""
    from ..complete import stream_generate
    from ..postprocess import FenceStream

    text = prompt if prompt is not None else read_stdin()
    opts = run_options(model=model, ctx=ctx, threads=threads, seed=seed, temperature=temperature, top_p=top_p,
                        top_k=top_k, max_tokens=max_tokens or GENERATE_MAX_TOKENS, max_time=max_time, verbose=verbose,
                        quiet=quiet,
                        gpu_layers=gpu_layers, max_prompt_tokens=max_prompt_tokens, logit_bias=logit_bias,
                        as_json=as_json, server=server, server_api=server_api, api_key=api_key)
    events = stream_generate(text, opts=opts, chat=chat, stop=stop or (),
                             one_definition=None if max_tokens is None else False)
    if not raw:
        events = through(events, FenceStream())
    emit(events, as_json)


@app.command()
def infill(
    targets: Annotated[list[str], typer.Argument(
        help="FILE:LINE[:COL] positions, or FILEs whose marker lines to fill.")],
    write: Annotated[bool, typer.Option("--write", "-w", help="Insert the completions into the files.")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Print a unified diff (for git apply / patch -p1).")] = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Exit 1 if any marker remains (lists them); writes nothing.")] = False,
    null: Annotated[bool, typer.Option("--null", "-z", help="With --check: list each marked FILE once, "
                                                            "NUL-terminated (for xargs -0, mapfile -d '').")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --write: replace read-only files too.")] = False,
    marker: Annotated[str, typer.Option("--marker", help="Marker comment text.")] = "cg: fill",
    encoding: Annotated[str, typer.Option("--encoding", help="Source file encoding.")] = "utf-8",
    context: Annotated[list[str] | None, typer.Option(
        "--context", "-c", help="Context FILE (repeatable), or 'auto' for the local imports.")] = None,
    max_lines: MaxLinesOpt = None,
    single_line: SingleLineOpt = False,
    block_stop: BlockStopOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per target.")] = False,
    model: ModelOpt = None,
    ctx: CtxOpt = DEFAULT_CTX,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    max_prompt_tokens: WindowOpt = None,
    server: ServerOpt = None,
    server_api: ServerApiOpt = None,
    api_key: ApiKeyOpt = None,
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
    from .. import infill as infill_mod

    if check:
        left = infill_mod.check(targets, marker, encoding)
        if null:
            write_result("".join(f"{path}\0" for path in dict.fromkeys(str(p) for p, _ in left)))
        else:
            write_result("".join(f"{path}:{line}\n" for path, line in left))
        if left:
            raise typer.Exit(1)
        return
    opts = run_options(model=model, ctx=ctx, threads=threads, seed=seed, temperature=temperature, top_p=top_p,
                        top_k=top_k, max_tokens=max_tokens, max_time=max_time, verbose=verbose, quiet=quiet,
                        gpu_layers=gpu_layers, max_prompt_tokens=max_prompt_tokens, logit_bias=logit_bias,
                        as_json=as_json, server=server, server_api=server_api, api_key=api_key)
    ctx_arg = "auto" if context == ["auto"] else [Path(c) for c in context or []]
    results = infill_mod.infill(targets, opts=opts, write=write, force=force, marker=marker, encoding=encoding,
                                context=ctx_arg, max_lines=max_lines, single_line=single_line, block_stop=block_stop)
    filled = [f for r in results for f in r.filled]
    if as_json:
        for f in filled:
            data = {"file": str(f.target.path), "line": f.target.line, "col": f.target.col, **f.completion.to_json()}
            write_result(json.dumps(data, ensure_ascii=False) + "\n")
    elif diff:
        write_result(b"".join(r.diff() for r in results))
    elif not write:
        write_result("\n".join(f.completion.text for f in filled))




@app.command()
def serve(
    model: Annotated[str | None, typer.Argument(
        help="Installed model name or GGUF path (default: as complete).")] = None,
    ctx: CtxOpt = DEFAULT_CTX,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Parallel slots (for cg eval --jobs).")] = 1,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8080,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    api_key: ApiKeyOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Start llama.cpp's llama-server for a model, with the flags cg needs; Ctrl-C stops it."""
    from ..serve import ServeOptions
    from ..serve import serve as run_server

    def ready(url: str) -> None:
        write_result(f"{url}\nexport CG_SERVER={url}\n")
        print(f"llama-server is serving {model or 'the default model'} at {url}; Ctrl-C stops it.", file=sys.stderr)

    run_server(ServeOptions(model=model, ctx=ctx, jobs=jobs, host=host, port=port, threads=threads,
                            gpu_layers=gpu_layers, api_key=api_key, verbose=verbose), ready)

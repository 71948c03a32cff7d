"""Commands that run a model: complete, generate, infill; and check, which finds the markers
infill fills without running anything."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cg import report
from cg.cli.app import app, emit, read_stdin, read_text, refuse_stdin, write_result
from cg.errors import UsageError
from cg.request import Request
from cg.settings import DEFAULT_MARKER, GENERATE_MAX_TOKENS

if TYPE_CHECKING:
    from cg.infill import FileResult, Filled

from cg.cli.flags import (
    BlockStopOpt,
    ContextFilesOpt,
    MaxLinesOpt,
    RequireFimOpt,
    SingleLineOpt,
    StopOpt,
    int_option,
    model_options,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object with text, stop reason, counts and "
                                                      "timings.")]
MarkerOpt = Annotated[str, typer.Option("--marker", help="Marker comment text.")]
EncodingOpt = Annotated[str, typer.Option("--encoding", help="Source file encoding.")]


@app.command()
@model_options
def complete(
    prefix: Annotated[str | None, typer.Option("--prefix", help="Text before the cursor.")] = None,
    suffix: Annotated[str | None, typer.Option("--suffix", help="Text after the cursor.")] = None,
    prefix_file: Annotated[Path | None, typer.Option("--prefix-file")] = None,
    suffix_file: Annotated[Path | None, typer.Option("--suffix-file")] = None,
    marker: Annotated[str, typer.Option("--marker", help="Splits standard input into prefix and suffix.")] = "<CURSOR>",
    path: Annotated[str | None, typer.Option("--path", help="File path sent as the header line.")] = None,
    context: ContextFilesOpt = None,
    spm: Annotated[bool, typer.Option("--spm", help="Suffix-prefix-middle order instead of PSM.")] = False,
    max_lines: MaxLinesOpt = None,
    single_line: SingleLineOpt = False,
    require_fim: RequireFimOpt = False,
    block_stop: BlockStopOpt = True,
    stop: StopOpt = None,
    as_json: JsonOpt = False,
    *,
    run: Request,
) -> None:
    """Fill in the middle. Input: --prefix/--suffix, files, or stdin split at <CURSOR>.

    Example: printf 'def add(a, b):\\n<CURSOR>\\n' | cg complete
    """
    from cg.complete import stream_complete

    pre, suf = _complete_input(prefix, suffix, prefix_file, suffix_file, marker, run)
    ctx_files = _context_files(context or [], path, pre + suf, run)
    request = replace(run, path=path, context=ctx_files, spm=spm, max_lines=max_lines, single_line=single_line,
                      require_fim=require_fim, stop=tuple(stop or ()), block_stop=block_stop)
    emit(stream_complete(pre, suf, request), as_json)


def _context_files(context: list[Path], path: str | None, text: str, run: Request) -> list[tuple[str, str]]:
    """--context FILE... as given, or `auto`: the local files that --path's code imports (as
    cg infill's --context auto, named as infill names them)."""
    from cg.files import repo_context
    from cg.infill import header_path

    if [str(c) for c in context] == [repo_context.AUTO]:
        found = repo_context.auto_context(Path(path) if path else None, text,
                                          lambda said: report.note(said, quiet=run.quiet))
        return [(header_path(f), body) for f, body in found]
    return [(str(f), body) for f, body in repo_context.named_context(context)]


def _complete_input(prefix: str | None, suffix: str | None, prefix_file: Path | None, suffix_file: Path | None,
                    marker: str, run: Request) -> tuple[str, str]:
    if prefix is not None and prefix_file is not None:
        raise UsageError("--prefix and --prefix-file both given", "Use one of them.")
    if suffix is not None and suffix_file is not None:
        raise UsageError("--suffix and --suffix-file both given", "Use one of them.")
    pre = read_text(prefix_file, "prefix file") if prefix_file else prefix
    suf = read_text(suffix_file, "suffix file") if suffix_file else suffix
    if pre is not None or suf is not None:
        refuse_stdin("--prefix" if pre is not None else "--suffix")
    else:
        if not marker:
            raise UsageError("--marker must not be empty")
        text = read_stdin()
        _say_markers(text, marker, run)
        pre, _, suf = text.partition(marker)
    return pre or "", suf or ""


def _say_markers(text: str, marker: str, run: Request) -> None:
    """Input without the cursor marker, or with several, works: but never silently."""
    count = text.count(marker)
    if count == 0 and text.strip():
        found = re.search(re.escape(marker), text, re.IGNORECASE)
        mistyped = f" (found {found.group()!r}: the marker is case-sensitive)" if found else ""
        report.note(f"no {marker} in the input{mistyped}: completing after the end", quiet=run.quiet)
    elif count > 1:
        report.note(f"{count} {marker} markers in the input: the first is the cursor, the others stay as text",
                    quiet=run.quiet)


@app.command()
@model_options
def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt (default: standard input).")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Keep the answer as written: fences and the text after "
                                                    "them.")] = False,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat",
                                                 help="Force the instruction turn format on or off.")] = None,
    stop: StopOpt = None,
    as_json: JsonOpt = False,
    max_tokens: Annotated[int | None, int_option(
        "--max-tokens", "-n", min=1, help=f"Most tokens to generate (default {GENERATE_MAX_TOKENS}; given, the answer "
                                          "no longer ends after one definition).")] = None,
    *,
    run: Request,
) -> None:
    """Generate code from a prompt (instruction models answer it, base models continue it)."""
    from cg.complete import stream_generate

    if prompt is not None:
        refuse_stdin("a prompt argument")
    text = prompt if prompt is not None else read_stdin()
    request = replace(run, max_tokens=max_tokens or GENERATE_MAX_TOKENS, raw=raw, chat=chat, stop=tuple(stop or ()),
                      one_definition=None if max_tokens is None else False)
    emit(stream_generate(text, request), as_json)


@app.command()
@model_options
def infill(
    targets: Annotated[list[str], typer.Argument(
        metavar="FILE[:LINE[:COL]]...", help="FILE:LINE[:COL] positions, or FILEs whose marker lines to fill.")],
    write: Annotated[bool, typer.Option("--write", "-w", help="Insert the completions into the files.")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Print a unified diff (for git apply / patch -p1).")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --write: replace read-only files too.")] = False,
    marker: MarkerOpt = DEFAULT_MARKER,
    encoding: EncodingOpt = "utf-8",
    context: Annotated[list[str] | None, typer.Option(
        "--context", "-c", help="Context FILE (repeatable), or 'auto' for the local imports.")] = None,
    max_lines: MaxLinesOpt = None,
    single_line: SingleLineOpt = False,
    require_fim: RequireFimOpt = False,
    block_stop: BlockStopOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per target.")] = False,
    *,
    run: Request,
) -> None:
    """Fill positions or marker comments (`# cg: fill`) in files; for scripts and git hooks.

    FILE:LINE[:COL] fills at the end of LINE (or at column COL, 1-based); a bare FILE fills its
    marker lines. Prints the completions, or writes them (--write), or a diff (--diff).
    """
    from cg import infill as infill_mod

    if diff and as_json:
        raise UsageError("--diff and --json both given: each is a whole output", "Use one of them.")
    ctx_arg = "auto" if context == ["auto"] else [Path(c) for c in context or []]
    request = replace(run, max_lines=max_lines, single_line=single_line, block_stop=block_stop,
                      require_fim=require_fim)
    results = infill_mod.infill(targets, request, write=write, force=force, marker=marker, encoding=encoding,
                                context=ctx_arg)
    filled = [f for r in results for f in r.filled]
    if as_json:
        for f in filled:
            data = {"file": str(f.target.path), "line": f.target.line, "col": f.target.col, **f.completion.to_json()}
            write_result(json.dumps(data, ensure_ascii=False) + "\n")
    elif diff:
        write_result(b"".join(r.diff() for r in results))
    elif not write:
        _print_completions(filled)
    if write:
        for r in results:
            _say_filled(r, run)


def _print_completions(filled: list[Filled]) -> None:
    """In a pipe, the completions joined by a line break, exactly (--json tells them apart). On
    a terminal, each under a `==> FILE:LINE <==` line (as head(1) labels files) when there are
    several, and the last line ended."""
    from cg.infill import shown

    if not sys.stdout.isatty():
        write_result("\n".join(f.completion.text for f in filled))
        return
    if len(filled) == 1:
        write_result(_line_ended(filled[0].completion.text))
    else:
        write_result("\n".join(f"==> {shown(f.target)} <==\n{_line_ended(f.completion.text)}" for f in filled))


def _line_ended(text: str) -> str:
    return text + "\n" if text and not text.endswith("\n") else text


def _say_filled(result: FileResult, run: Request) -> None:
    markers = sum(f.target.marker for f in result.filled)
    places = [f"{result.source.path}:{f.target.line}" for f in result.filled if not f.target.marker]
    what = ([f"{markers} marker{'s' if markers != 1 else ''} in {result.source.path}"] if markers else []) + places
    changed = result.source.apply(result.edits) != result.source.text
    report.note(("filled " if changed else "nothing to write (the completions are empty): ") + ", ".join(what),
                quiet=run.quiet)


@app.command()
def check(
    files: Annotated[list[str] | None, typer.Argument(
        metavar="[FILE]...", help="Files to look for marker lines in (none: nothing to check, exit 0).")] = None,
    null: Annotated[bool, typer.Option("--null", "-z", help="List each marked FILE once, NUL-terminated (for "
                                                            "xargs -0, mapfile -d '').")] = False,
    marker: MarkerOpt = DEFAULT_MARKER,
    encoding: EncodingOpt = "utf-8",
) -> None:
    """Exit 1 and list FILE:LINE for every marker comment left (`# cg: fill`); loads no model,
    writes nothing. For git hooks: `cg check $(git ls-files '*.py')`."""
    from cg import infill as infill_mod

    left = infill_mod.check(files or [], marker, encoding)  # `$(git ls-files '*.py')` may expand to nothing
    if null:
        write_result("".join(f"{path}\0" for path in dict.fromkeys(str(p) for p, _ in left)))
    else:
        write_result("".join(f"{path}:{line}\n" for path, line in left))
    if left:
        raise typer.Exit(1)

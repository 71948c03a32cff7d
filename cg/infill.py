"""`cg infill`: fill FILE:LINE[:COL] positions or marker lines in real files, safely.

Targets are found, every completion is computed on the text in memory, and only then is each
file written, once, atomically (textfile.write_source). A failure anywhere leaves every file as
it was.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import repo_context
from .complete import Completion, RunOptions, complete
from .errors import InputError
from .textfile import SourceFile, read_source, write_source

DEFAULT_MARKER = "cg: fill"
_TARGET = re.compile(r"^(?P<file>.+?):(?P<line>[^:]*)(?::(?P<col>[^:]*))?$")
_COMMENT = r"(?:#|//|--|;|/\*|<!--)"


@dataclass
class Target:
    path: Path
    line: int  # 1-based
    col: int | None = None  # 1-based; None: end of the line's text
    marker: bool = False  # the whole line is a marker comment, replaced by the completion


@dataclass
class Filled:
    target: Target
    completion: Completion


@dataclass
class FileResult:
    source: SourceFile
    new_text: str
    filled: list[Filled] = field(default_factory=list)

    def diff(self) -> str:
        name = str(self.source.path)
        return "".join(difflib.unified_diff(self.source.text.splitlines(keepends=True),
                                            self.new_text.splitlines(keepends=True), name, name))


def parse_target(spec: str) -> tuple[Path, int | None, int | None]:
    """FILE:LINE[:COL] -> (path, line, col); a bare FILE -> (path, None, None)."""
    match = _TARGET.match(spec)
    if not match or Path(spec).exists():
        return Path(spec), None, None
    try:
        line = int(match["line"])
        col = int(match["col"]) if match["col"] is not None else None
    except ValueError:
        raise InputError(f"bad target {spec!r}: LINE and COL must be numbers",
                         "Use FILE:LINE or FILE:LINE:COL, e.g. src/app.py:12:5") from None
    if line < 1 or (col is not None and col < 1):
        raise InputError(f"bad target {spec!r}: LINE and COL start at 1", "Use FILE:LINE or FILE:LINE:COL.")
    return Path(match["file"]), line, col


def marker_lines(text: str, marker: str = DEFAULT_MARKER) -> list[int]:
    """1-based numbers of the lines that are a comment holding the marker."""
    pattern = re.compile(rf"^\s*{_COMMENT}\s*{re.escape(marker)}\b")
    return [i for i, line in enumerate(text.split("\n"), start=1) if pattern.match(line)]


def cursor(text: str, target: Target) -> tuple[int, int, str]:
    """(start, end, indent): the span the completion replaces and the indentation to keep."""
    lines = text.split("\n")
    n = len(lines) - 1 if text.endswith("\n") else len(lines)
    if target.line > n + 1:
        raise InputError(f"{target.path}:{target.line}: line out of range (the file has {n} lines)",
                         f"LINE may be at most {n + 1} (one past the last line appends).")
    start = sum(len(l) + 1 for l in lines[: target.line - 1])
    if target.line == n + 1 and not text.endswith("\n") and text:
        return len(text), len(text), "\n"  # append after a last line that has no line break
    line = lines[target.line - 1] if target.line - 1 < len(lines) else ""
    if target.marker:
        indent = line[: len(line) - len(line.lstrip())]
        return start, start + len(line), indent
    if target.col is not None and target.col > len(line) + 1:
        raise InputError(f"{target.path}:{target.line}:{target.col}: column out of range (the line has {len(line)} characters)",
                         f"COL may be at most {len(line) + 1}.")
    col = len(line) if target.col is None else target.col - 1
    return start + col, start + col, ""


def header_path(path: Path) -> str:
    root = repo_context.git_root(path)
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if root else path.name


def fill_file(src: SourceFile, targets: list[Target], opts: RunOptions, *, context: Sequence[Path] | str = (),
              complete_fn: Callable = complete, **kwargs) -> FileResult:
    """Fill every target of one file, bottom-up so earlier line numbers stay valid."""
    text = src.text
    spans = sorted(((cursor(src.text, t), t) for t in targets), key=lambda x: x[0][0], reverse=True)
    result = FileResult(src, text)
    ctx_files = _context_files(src.path, context)
    for (start, end, indent), target in spans:
        suffix = text[end:]
        done = complete_fn(text[:start] + indent, suffix, opts=opts, path=header_path(src.path), context=ctx_files,
                           **kwargs)
        text = text[:start] + indent + done.text + suffix
        result.filled.append(Filled(target, done))
    result.new_text = text
    result.filled.reverse()
    return result


def _context_files(path: Path, context: Sequence[Path] | str) -> list[tuple[str, str]]:
    files = repo_context.local_imports(path) if context == "auto" else [Path(c) for c in context]
    return [(header_path(f), read_source(f).text) for f in files]


def collect_targets(specs: Sequence[str], marker: str, encoding: str) -> dict[Path, tuple[SourceFile, list[Target]]]:
    """Group targets by file, reading each file once; bare FILEs contribute their marker lines."""
    files: dict[Path, tuple[SourceFile, list[Target]]] = {}
    for spec in specs:
        path, line, col = parse_target(spec)
        key = path.resolve()
        if key not in files:
            files[key] = (read_source(path, encoding), [])
        src, targets = files[key]
        if line is None:
            targets += [Target(path, n, None, True) for n in marker_lines(src.text, marker)]
        else:
            targets.append(Target(path, line, col))
    return files


def infill(specs: Sequence[str], *, opts: RunOptions = RunOptions(), write: bool = False, marker: str = DEFAULT_MARKER,
           encoding: str = "utf-8", context: Sequence[Path] | str = (), **kwargs) -> list[FileResult]:
    """Fill the targets; with write=True replace each file once all its completions are known."""
    files = collect_targets(specs, marker, encoding)
    results = []
    for src, targets in files.values():
        if targets:  # the model loads once: get_engine keeps it for every target and file
            results.append(fill_file(src, targets, opts, context=context, **kwargs))
    if write:
        for res in results:
            if res.new_text != res.source.text:
                write_source(res.source, res.new_text)
    return results


def check(specs: Sequence[str], marker: str = DEFAULT_MARKER, encoding: str = "utf-8") -> list[str]:
    """FILE:LINE of every marker left; reads files only, loads no model."""
    left = []
    for spec in specs:
        path, _, _ = parse_target(spec)
        left += [f"{path}:{n}" for n in marker_lines(read_source(path, encoding).text, marker)]
    return left

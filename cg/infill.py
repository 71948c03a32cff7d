"""`cg infill`: fill FILE:LINE[:COL] positions or marker lines in real files, safely.

Targets are found, every completion is computed on the text in memory, and only then are the
files written: each once, all of them together (textfile.write_sources: every temp file first,
then the renames). A failure while generating leaves every file as it was.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import repo_context
from .complete import Completion, RunOptions, complete
from .errors import InputError, ReadOnlyFileError
from .textfile import Edit, SourceFile, read_source, scan_text, write_sources

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
    edits: list[Edit] = field(default_factory=list)
    filled: list[Filled] = field(default_factory=list)

    def diff(self) -> bytes:
        """A unified diff that `git apply` and `patch -p1` take: a/ and b/ paths (relative to the
        git root in a repository), the file's own line endings and encoding, and git's marker
        for a last line without a line break."""
        name = diff_path(self.source.path)
        src = self.source
        bom = src.bom.decode(src.codec) if src.bom and src.codec == "utf-8" else ""
        old, new = _git_lines(bom + src.raw), _git_lines(bom + src.render_raw(self.edits))
        # A tab ends a file name that holds spaces (GNU patch reads up to it; git apply too).
        end = "\t" if any(c.isspace() for c in name) else ""
        out = bytearray()
        for i, line in enumerate(difflib.unified_diff(old, new, f"a/{name}{end}", f"b/{name}{end}")):
            header = i < 2 or line.startswith("@@")  # content lines start with " ", "-" or "+"
            out += line.encode("utf-8" if header else src.codec)
            if not line.endswith("\n"):
                out += b"\n\\ No newline at end of file\n"
        return bytes(out)


def _git_lines(text: str) -> list[str]:
    """Lines as git sees them: split at "\\n" only (str.splitlines also splits at "\\r", U+2028, ...)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    return lines + [parts[-1]] if parts[-1] else lines


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
    """(start, end, indent): the span the completion replaces and the text to put before it."""
    lines = text.split("\n")
    n = len(lines) - 1 if text.endswith("\n") else len(lines)
    if target.line > n + 1:
        raise InputError(f"{target.path}:{target.line}: line out of range (the file has {n} lines)",
                         f"LINE may be at most {n + 1} (one past the last line appends).")
    start = sum(len(line) + 1 for line in lines[: target.line - 1])
    if target.line == n + 1 and not text.endswith("\n") and text:
        return len(text), len(text), "\n"  # append after a last line that has no line break
    line = lines[target.line - 1] if target.line - 1 < len(lines) else ""
    if target.marker:
        indent = line[: len(line) - len(line.lstrip())]
        return start, start + len(line), indent
    if target.col is not None and target.col > len(line) + 1:
        raise InputError(f"{target.path}:{target.line}:{target.col}: column out of range "
                         f"(the line has {len(line)} characters)", f"COL may be at most {len(line) + 1}.")
    col = len(line) if target.col is None else target.col - 1
    return start + col, start + col, ""


def header_path(path: Path) -> str:
    """The path the model sees in the header line: relative to the git root, else the file name."""
    root = repo_context.git_root(path)
    return repo_context.relative_to_root(path, root) if root else path.name


def diff_path(path: Path) -> str:
    """The path in a diff: relative to the git root in a repository, else as given (made
    relative to the current folder when it is absolute and below it; else without its leading
    slash, as `git diff` writes absolute paths)."""
    root = repo_context.git_root(path)
    if root:
        return repo_context.relative_to_root(path, root)
    if path.is_absolute():
        try:
            return path.relative_to(Path.cwd()).as_posix()
        except ValueError:
            pass
    return path.as_posix().lstrip("/")


def fill_file(src: SourceFile, targets: list[Target], opts: RunOptions, *, context: Sequence[Path] | str = (),
              complete_fn: Callable[..., Completion] = complete, **kwargs: Any) -> FileResult:
    """Fill every target of one file, bottom-up: each completion sees the ones below it in its
    suffix, and the spans above stay where they were in the original text."""
    text = src.text
    spans = sorted(((cursor(src.text, t), t) for t in targets), key=lambda x: x[0][0], reverse=True)
    result = FileResult(src)
    ctx_files = _context_files(src.path, context)
    for (start, end, indent), target in spans:
        suffix = text[end:]
        done = complete_fn(text[:start] + indent, suffix, opts=opts, path=header_path(src.path), context=ctx_files,
                           **kwargs)
        text = text[:start] + indent + done.text + suffix
        result.edits.append(Edit(start, end, indent + done.text))
        result.filled.append(Filled(target, done))
    result.filled.reverse()
    return result


def _context_files(path: Path, context: Sequence[Path] | str) -> list[tuple[str, str]]:
    files = repo_context.local_imports(path) if context == "auto" else [Path(c) for c in context]
    return [(header_path(f), read_source(f).text) for f in files]


def collect_targets(specs: Sequence[str], marker: str, encoding: str) -> dict[Path, tuple[SourceFile, list[Target]]]:
    """Group targets by file, reading each file once. A bare FILE contributes its marker lines;
    one without a marker is skipped unread (binary and other-encoding files pass through)."""
    files: dict[Path, tuple[SourceFile, list[Target]]] = {}
    for spec in specs:
        path, line, col = parse_target(spec)
        if line is None and not _marker_lines_in(path, marker, encoding):
            continue
        key = path.resolve()
        if key not in files:
            files[key] = (read_source(path, encoding), [])
        src, targets = files[key]
        if line is None:
            targets += [Target(path, n, None, True) for n in marker_lines(src.text, marker)]
        else:
            targets.append(Target(path, line, col))
    return files


def infill(specs: Sequence[str], *, opts: RunOptions = RunOptions(), write: bool = False, force: bool = False,
           marker: str = DEFAULT_MARKER, encoding: str = "utf-8", context: Sequence[Path] | str = (),
           **kwargs: Any) -> list[FileResult]:
    """Fill the targets; with write=True replace the files once every completion is known.

    A read-only file is refused before any model runs, unless force."""
    files = [(src, targets) for src, targets in collect_targets(specs, marker, encoding).values() if targets]
    if write and not force:
        for src, _ in files:
            if src.read_only:
                raise ReadOnlyFileError(f"{src.path} is read-only; nothing was written")
    # The model loads once: get_engine keeps it for every target and file.
    results = [fill_file(src, targets, opts, context=context, **kwargs) for src, targets in files]
    if write:
        write_sources([(r.source, r.edits) for r in results], force=force)
    return results


def _marker_lines_in(path: Path, marker: str, encoding: str) -> list[int]:
    text = scan_text(path, encoding)
    return [] if text is None else marker_lines(text, marker)


def check(specs: Sequence[str], marker: str = DEFAULT_MARKER, encoding: str = "utf-8") -> list[tuple[Path, int]]:
    """(FILE, LINE) of every marker left; reads files only (any encoding, binary skipped), loads no model."""
    left = []
    for spec in specs:
        path, _, _ = parse_target(spec)
        left += [(path, n) for n in _marker_lines_in(path, marker, encoding)]
    return left

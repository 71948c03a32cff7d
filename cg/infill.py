"""`cg infill`: fill FILE:LINE[:COL] positions or marker lines in real files, safely.

Targets are found, every completion is computed on the text in memory, and only then are the
files written: each once, all of them together (textfile.write_sources: every temp file first,
then the renames). A failure while generating leaves every file as it was.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cg import report
from cg.complete import Completion, complete
from cg.errors import InputError, UsageError
from cg.files import repo_context
from cg.files.textfile import Edit, SourceFile, check_replaceable, read_source, scan_text, write_sources
from cg.output import blocks
from cg.output.blocks import Language
from cg.request import Request
from cg.settings import DEFAULT_MARKER

# complete(prefix, suffix, request): cg.complete.complete, or a stand-in (tests)
CompleteFn = Callable[[str, str, Request], Completion]
_NUMBER = re.compile(r"\s*[+-]?[0-9]+\s*")  # what LINE and COL may be (int() takes it; "-1" is refused later)
# The comments that can hold a marker: each language's own, any of them where cg does not know it.
_COMMENTS = {Language.PYTHON: ("#",), Language.SHELL: ("#",), Language.C_LIKE: ("//", "/*"),
             Language.GENERIC: ("#", "//", "--", ";", "/*", "<!--")}


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
            # A file name's own bytes, as git writes them (surrogateescape: names need not be UTF-8).
            out += line.encode("utf-8", "surrogateescape") if header else line.encode(src.codec)
            if not line.endswith("\n"):
                out += b"\n\\ No newline at end of file\n"
        return bytes(out)


def _git_lines(text: str) -> list[str]:
    """Lines as git sees them: split at "\\n" only (str.splitlines also splits at "\\r", U+2028, ...)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    return lines + [parts[-1]] if parts[-1] else lines


def parse_target(spec: str) -> tuple[Path, int | None, int | None]:
    """FILE:LINE[:COL] -> (path, line, col); a bare FILE -> (path, None, None).

    File names may hold colons (`a:b.py:2`): the longest name that exists wins, the spec itself
    first. Where no name exists, the trailing fields that are numbers are LINE and COL, so the
    error names the file that is missing."""
    if Path(spec).exists() or ":" not in spec:
        return Path(spec), None, None
    parts = spec.split(":")
    splits = [(":".join(parts[:-n]), parts[-n:]) for n in (1, 2) if len(parts) > n]
    found = next(((name, fields) for name, fields in splits if name and Path(name).exists()), None)
    numeric = [(name, fields) for name, fields in splits if name and all(map(_NUMBER.fullmatch, fields))]
    name, fields = found or (numeric[-1] if numeric else (None, []))
    if name is None or not all(map(_NUMBER.fullmatch, fields)):
        raise InputError(f"bad target {spec!r}: LINE and COL must be numbers",
                         "Use FILE:LINE or FILE:LINE:COL, e.g. src/app.py:12:5")
    line, col = int(fields[0]), (int(fields[1]) if len(fields) > 1 else None)
    if line < 1 or (col is not None and col < 1):
        raise InputError(f"bad target {spec!r}: LINE and COL start at 1", "Use FILE:LINE or FILE:LINE:COL.")
    return Path(name), line, col


def _check_not_a_bare_line(specs: Sequence[str]) -> None:
    """`cg infill src/app.py 42`: 42 was meant as the line of the file before it."""
    for before, spec in zip(["FILE", *specs], specs, strict=False):
        if _NUMBER.fullmatch(spec) and not Path(spec).exists():
            raise InputError(f"file not found: {spec}", f"To fill line {spec.strip()} of {before}, write "
                                                        f"{before}:{spec.strip()} (FILE:LINE, no space).")


def check_marker(marker: str) -> None:
    if not marker.strip():
        raise UsageError("--marker must not be empty", "Give the marker text, e.g. --marker 'cg: fill'.")


def marker_lines(text: str, marker: str = DEFAULT_MARKER, path: Path | str | None = None) -> list[int]:
    """1-based numbers of the lines that are a comment holding the marker: a comment of the
    file's language (from path) that starts in code, not inside a string or a docstring."""
    check_marker(marker)
    language = blocks.language_of(str(path) if path is not None else None)
    leaders = "|".join(re.escape(c) for c in _COMMENTS[language])
    pattern = re.compile(rf"^\s*(?:{leaders})\s*{re.escape(marker)}\b")
    lexer = blocks.Lexer(language) if language != Language.GENERIC else None
    found = []
    for i, line in enumerate(text.split("\n"), start=1):
        in_code = lexer is None or lexer.state.inside == ""
        if in_code and pattern.match(line):
            found.append(i)
        if lexer is not None:
            lexer.feed(line + "\n")
    return found


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
    """The path the model sees in the header line: relative to the git root, else the file name
    (a name's bytes that are not UTF-8 become U+FFFD: the model reads text)."""
    root = repo_context.git_root(path)
    name = repo_context.relative_to_root(path, root) if root else path.name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


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


def fill_file(src: SourceFile, targets: list[Target], request: Request, *, context: Sequence[Path] | str = (),
              complete_fn: CompleteFn = complete) -> FileResult:
    """Fill every target of one file, bottom-up: each completion sees the ones below it in its
    suffix, and the spans above stay where they were in the original text."""
    text = src.text
    spans = sorted(((cursor(src.text, t), t) for t in targets), key=lambda x: x[0][0], reverse=True)
    result = FileResult(src)
    request = replace(request, path=header_path(src.path), context=_context_files(src, context, request))
    for (start, end, indent), target in spans:
        suffix = text[end:]
        done = complete_fn(text[:start] + indent, suffix, request)
        inserted = indent + done.text
        if start == len(text) and text.endswith("\n") and inserted and not inserted.endswith("\n"):
            inserted += "\n"  # appended to a file that ends with a line break: it still does
        text = text[:start] + inserted + suffix
        result.edits.append(Edit(start, end, inserted))
        result.filled.append(Filled(target, done))
    result.filled.reverse()
    return result


def _context_files(src: SourceFile, context: Sequence[Path] | str, request: Request) -> list[tuple[str, str]]:
    """--context FILE... (the user's choice, read as given), or the local imports (confined to the
    repository; what is skipped is said on stderr)."""
    files = (repo_context.auto_context(src.path, src.text, lambda said: report.note(said, quiet=request.quiet))
             if context == repo_context.AUTO else repo_context.named_context([Path(c) for c in context]))
    return [(header_path(f), text) for f, text in files]


def collect_targets(specs: Sequence[str], marker: str, encoding: str, on_note: Callable[[str], None] | None = None
                    ) -> dict[Path, tuple[SourceFile, list[Target]]]:
    """Group targets by file (by its resolved path), reading each file once. A bare FILE
    contributes its marker lines; one without a marker is skipped unread (binary and
    other-encoding files pass through). The same target given twice (`a.py ./a.py`, `a.py:2
    a.py:2`) counts once; two that overlap (a marker line and a position on it) are refused."""
    check_marker(marker)
    _check_not_a_bare_line(specs)
    files: dict[Path, tuple[SourceFile, list[Target]]] = {}
    for spec in specs:
        path, line, col = parse_target(spec)
        if line is None and not _marker_lines_in(path, marker, encoding):
            if on_note is not None:
                on_note(f"no `{marker}` markers in {path}")
            continue
        key = path.resolve()
        if key not in files:
            files[key] = (read_source(path, encoding), [])
        src, targets = files[key]
        new = [Target(path, n, None, True) for n in marker_lines(src.text, marker, path)] if line is None \
            else [Target(path, line, col)]
        for target in new:
            _add_target(src, targets, target)
    return files


def _add_target(src: SourceFile, targets: list[Target], target: Target) -> None:
    start, end, _ = cursor(src.text, target)
    for other in targets:
        o_start, o_end, _ = cursor(src.text, other)
        if (o_start, o_end) == (start, end) and other.marker == target.marker:
            return  # the same target again
        # A marker's line is replaced whole: nothing else may touch it. Insertion points never overlap.
        if (target.marker or other.marker) and start <= o_end and o_start <= end:
            raise UsageError(f"targets overlap: {shown(other)} and {shown(target)}",
                             "Give each place once: a marker line is replaced whole.")
    targets.append(target)


def shown(target: Target) -> str:
    where = f"{target.path}:{target.line}" + (f":{target.col}" if target.col else "")
    return f"{where} (marker)" if target.marker else where


def infill(specs: Sequence[str], request: Request = Request(), *, write: bool = False, force: bool = False,
           marker: str = DEFAULT_MARKER, encoding: str = "utf-8", context: Sequence[Path] | str = (),
           complete_fn: CompleteFn = complete) -> list[FileResult]:
    """Fill the targets (FILE:LINE[:COL] or FILEs with marker lines), each completion made with
    request (its path and context files set per file); with write=True replace the files once
    every completion is known. context: FILEs shown to the model, or "auto" for the local imports.

    A file cg would not replace without force (read-only, hard-linked) is refused before any
    model runs."""
    found = collect_targets(specs, marker, encoding, lambda message: report.note(message, quiet=request.quiet))
    files = [(src, targets) for src, targets in found.values() if targets]
    if write:
        check_replaceable([(src, []) for src, _ in files], force)
    # The model loads once: get_engine keeps it for every target and file.
    results = [fill_file(src, targets, request, context=context, complete_fn=complete_fn) for src, targets in files]
    if write:
        write_sources([(r.source, r.edits) for r in results], force=force)
    return results


def _marker_lines_in(path: Path, marker: str, encoding: str) -> list[int]:
    text = scan_text(path, encoding)
    return [] if text is None else marker_lines(text, marker, path)


def check(specs: Sequence[str], marker: str = DEFAULT_MARKER, encoding: str = "utf-8") -> list[tuple[Path, int]]:
    """(FILE, LINE) of every marker left; reads files only (any encoding, binary skipped), loads no model."""
    left = []
    for spec in specs:
        path, _, _ = parse_target(spec)
        left += [(path, n) for n in _marker_lines_in(path, marker, encoding)]
    return left

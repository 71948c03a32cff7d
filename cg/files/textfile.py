"""Source files read and written without damage: encoding, BOM, every line's own ending, mode,
symlinks, and several files replaced together or not at all.

Inside cg a file's text has "\\n" line breaks (`SourceFile.text`); edits are spans of that text.
Writing maps each edit back onto the file's own text, so lines the edit did not touch keep their
bytes exactly (a file mixing "\\r\\n", "\\n" and "\\r" stays mixed), and the lines an edit adds take
the ending of the line they are inserted into. Only "\\r\\n", "\\r" and "\\n" break lines; other
characters str.splitlines() treats as breaks (form feed, U+2028, ...) are ordinary text here.
"""

from __future__ import annotations

import bisect
import codecs
import errno
import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cg.errors import InputError, ReadOnlyFileError, StaleFileError, WriteError
from cg_core.atomic import Staged, describe_mode, real_target, remove_stale_temps, size_text, stage

MAX_SOURCE_BYTES = 16 * 2**20  # larger is not a source file to fill or check (a data dump, /dev/zero)

_BREAK = re.compile(r"\r\n|\r|\n")
# BOMs of the Unicode encodings whose byte order the BOM decides (UTF-32 LE before UTF-16 LE: it starts alike).
_ORDERED = {
    "utf-16": [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")],
    "utf-32": [(codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be")],
}
_SNIFF = [(codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
          (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]


@dataclass(frozen=True)
class Edit:
    start: int  # span of SourceFile.text replaced by text
    end: int
    text: str


@dataclass
class SourceFile:
    path: Path  # as given (a symlink stays a symlink: writes go to the file it points to)
    raw: str  # decoded text with the file's own line endings
    text: str  # raw with every line break as "\n"
    codec: str  # the codec that encodes the body (byte order explicit)
    bom: bytes
    digest: str  # of the bytes read, to refuse a file changed on disk meanwhile
    mode: int
    owner: tuple[int, int] = (-1, -1)  # uid, gid: kept where permitted
    links: int = 1  # hard links: replacing the file would split them

    @property
    def read_only(self) -> bool:
        # The write bits, not os.access: as root os.access says every file is writable.
        return not self.mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)

    def apply(self, edits: Sequence[Edit]) -> str:
        """The new text, "\\n" line breaks (for diffs and JSON)."""
        out, pos = [], 0
        for e in sorted(edits, key=lambda e: e.start):
            out += [self.text[pos:e.start], e.text]
            pos = e.end
        return "".join(out) + self.text[pos:]

    def render_raw(self, edits: Sequence[Edit]) -> str:
        """The new text with the file's own line endings: each edit's line breaks take the
        ending of the line it starts in; everything outside the edits is the file's text as read."""
        lines = _Lines(self.raw)
        out, pos = [], 0
        for e in sorted(edits, key=lambda e: e.start):
            start, end = lines.raw_offset(e.start), lines.raw_offset(e.end)
            out += [self.raw[pos:start], _BREAK.sub(lines.ending_at(e.start), e.text)]
            pos = end
        out.append(self.raw[pos:])
        return "".join(out)

    def render(self, edits: Sequence[Edit]) -> bytes:
        """The file's bytes with the edits made and nothing else changed."""
        return self.bom + self.render_raw(edits).encode(self.codec)


class _Lines:
    """Where each line starts in the "\\n" text and in the raw text, and how it ends."""

    def __init__(self, raw: str):
        self.norm_starts, self.raw_starts, self.endings = [0], [0], []
        for m in _BREAK.finditer(raw):
            self.endings.append(m.group())
            self.raw_starts.append(m.end())
            self.norm_starts.append(self.norm_starts[-1] + (m.start() - self.raw_starts[-2]) + 1)
        self.endings.append("")  # the last line: no ending

    def _line(self, pos: int) -> int:
        return bisect.bisect_right(self.norm_starts, pos) - 1

    def raw_offset(self, pos: int) -> int:
        i = self._line(pos)
        return self.raw_starts[i] + pos - self.norm_starts[i]

    def ending_at(self, pos: int) -> str:
        """The ending of the line holding pos; for the last line (none), the nearest one above, else "\\n"."""
        i = self._line(pos)
        return next((e for e in reversed(self.endings[: i + 1]) if e), "\n")


def _codec(data: bytes, encoding: str) -> tuple[str, bytes]:
    """(codec for the body, BOM bytes) for a file read with `encoding`."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r}",
                         "Use a Python codec name, e.g. --encoding latin-1.") from None
    if name in ("utf-8", "utf-8-sig"):
        return "utf-8", codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
    if name in _ORDERED:
        for bom, codec in _ORDERED[name]:
            if data.startswith(bom):
                return codec, bom
        return _ORDERED[name][0][1], b""  # no BOM: little-endian, as Python's codec reads it here
    return name, b""


def read_bytes(path: Path, what: str = "file") -> tuple[bytes, os.stat_result]:
    """A regular file's bytes (up to MAX_SOURCE_BYTES) and its status. A FIFO, a device or a
    folder is refused before it is read (a FIFO would block, /dev/zero never ends)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}", "Check the path.") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory", "Pass a source file.") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied", "Check the file's permissions.") from None
    except OSError as exc:
        why = "a symlink loop" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise InputError(f"cannot read {path}: {why}", "Pass a regular source file.") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{path} is a directory", "Pass a source file.")
        raise InputError(f"{path} is {describe_mode(st.st_mode)}, not a regular file", "Pass a source file.")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise InputError(f"{path} is over {size_text(MAX_SOURCE_BYTES)}: not a source file cg reads",
                         "Pass a source file (cg reads files up to 16 MiB).")
    return data, st


def read_source(path: Path | str, encoding: str = "utf-8") -> SourceFile:
    path = Path(path)
    data, st = read_bytes(path)
    codec, bom = _codec(data, encoding)
    try:
        raw = data[len(bom):].decode(codec)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not valid {encoding} text (byte {exc.start + len(bom)})",
                         "Pass the file's encoding with --encoding.") from None
    if "\0" in raw:  # after decoding: UTF-16 text is full of NUL bytes, and none of NUL characters
        raise InputError(f"{path} looks like a binary file", "cg fills text source files only.")
    return SourceFile(path, raw, _BREAK.sub("\n", raw), codec, bom, hashlib.sha256(data).hexdigest(),
                      st.st_mode, (st.st_uid, st.st_gid), st.st_nlink)


def scan_text(path: Path, encoding: str = "utf-8") -> str | None:
    """The file's text for looking at it only (--check): a BOM decides the encoding, undecodable
    bytes pass through as stand-ins, and binary files (NUL characters) give None."""
    data, _ = read_bytes(path)
    codec, bom = next(((c, b) for b, c in _SNIFF if data.startswith(b)), None) or _codec(data, encoding)
    text = data[len(bom):].decode(codec, errors="replace")
    return None if "\0" in text else _BREAK.sub("\n", text)


def write_sources(changes: Sequence[tuple[SourceFile, Sequence[Edit]]], *, force: bool = False) -> None:
    """Replace every changed file, all or nothing as far as the file system allows.

    Each file is locked (flock on the file itself, in a fixed order) while cg checks that it is
    still what was read and renames the new one in: a second cg writing the same file waits, then
    finds it changed and writes nothing, so no edit is ever silently lost. Phase one writes and
    flushes a temp file beside each target (nothing is replaced yet, so a failure leaves every file
    as it was); phase two renames them in. Only a failure during the renames can leave some files
    replaced, and the error then names them.
    """
    changes = [(src, edits) for src, edits in changes if src.apply(edits) != src.text]
    check_replaceable(changes, force)
    with _locked([src.path for src, _ in changes]):
        for src, _ in changes:
            _check_unchanged(src)
        staged: list[Staged] = []
        try:
            for src, edits in changes:
                remove_stale_temps(real_target(src.path).parent)
                staged.append(stage(src.path, src.render(edits), mode=src.mode, owner=src.owner))
            _commit(changes, staged)
        except OSError as exc:
            raise WriteError(f"could not write {exc.filename or 'a temp file'}: {exc.strerror or exc}; "
                             "no file was changed", "Check free disk space and the folder's permissions.") from None
        finally:
            for item in staged:
                item.discard()


def _commit(changes: Sequence[tuple[SourceFile, Sequence[Edit]]], staged: list[Staged]) -> None:
    done: list[Path] = []
    for (src, _), item in zip(changes, staged, strict=True):
        try:
            item.commit()
        except OSError as exc:
            rest = [str(s.path) for s, _ in changes[len(done):]]
            raise WriteError(f"could not replace {src.path}: {exc.strerror or exc}; "
                             + (f"already written: {', '.join(map(str, done))}; " if done else "")
                             + f"left as they were: {', '.join(rest)}",
                             "Check the disk and the folder's permissions, then run again.") from None
        done.append(src.path)


@contextmanager
def _locked(paths: list[Path]) -> Iterator[None]:
    """An exclusive flock on each file (the file itself: no lock files left beside sources)."""
    with ExitStack() as stack:
        for real in sorted({Path(os.path.realpath(p)) for p in paths}):
            try:
                fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                raise StaleFileError(f"{real} cannot be read any more; nothing was written") from None
            stack.callback(os.close, fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, fd, fcntl.LOCK_UN)
        yield


def check_replaceable(changes: Sequence[tuple[SourceFile, Sequence[Edit]]], force: bool) -> None:
    """Refuse, before anything is written (or any model runs), a file cg would not replace
    without --force: read-only, or with other hard links (replacing it splits them)."""
    for src, _ in changes:
        if src.read_only and not force:
            raise ReadOnlyFileError(f"{src.path} is read-only; nothing was written")
        if src.links > 1 and not force:
            raise ReadOnlyFileError(f"{src.path} has {src.links} hard links; replacing it would leave the other "
                                    "names with the old text; nothing was written",
                                    "Pass --force to replace it anyway (only this name gets the new text).")


def _check_unchanged(src: SourceFile) -> None:
    try:
        current = src.path.read_bytes()
    except OSError:
        raise StaleFileError(f"{src.path} cannot be read any more; nothing was written") from None
    if hashlib.sha256(current).hexdigest() != src.digest:
        raise StaleFileError(f"{src.path} changed on disk since cg read it; nothing was written")

"""Source files read and written without damage: encoding, BOM, line endings, mode, atomic replace.

Text is handled with "\\n" line breaks inside cg; the file's own line ending (CRLF stays CRLF)
and BOM are restored on write, and nothing else in the file changes.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, StaleFileError


@dataclass
class SourceFile:
    path: Path
    text: str  # "\n" line breaks
    encoding: str
    bom: bytes
    newline: str  # "\n" or "\r\n"
    digest: str  # of the bytes read, to refuse a file changed on disk meanwhile

    def to_bytes(self, text: str) -> bytes:
        body = text.replace("\n", self.newline) if self.newline != "\n" else text
        return self.bom + body.encode(self.encoding)


def read_source(path: Path | str, encoding: str = "utf-8") -> SourceFile:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"file not found: {path}", "Check the path.") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory", "Pass a source file.") from None
    if b"\0" in data[:8192]:
        raise InputError(f"{path} looks like a binary file", "cg fills text source files only.")
    bom = codecs.BOM_UTF8 if encoding.lower().replace("_", "-") in ("utf-8", "utf8") and data.startswith(codecs.BOM_UTF8) else b""
    try:
        raw = data[len(bom):].decode(encoding)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not valid {encoding} text (byte {exc.start})",
                         "Pass the file's encoding with --encoding.") from None
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r}", "Use a Python codec name, e.g. --encoding latin-1.") from None
    newline = "\r\n" if "\r\n" in raw else "\n"
    text = raw.replace("\r\n", "\n") if newline == "\r\n" else raw
    return SourceFile(path, text, encoding, bom, newline, hashlib.sha256(data).hexdigest())


def write_source(src: SourceFile, text: str) -> None:
    """Replace the file atomically with text, keeping mode, encoding, BOM and line endings."""
    data = src.to_bytes(text)
    current = hashlib.sha256(src.path.read_bytes()).hexdigest()
    if current != src.digest:
        raise StaleFileError(f"{src.path} changed on disk since cg read it; nothing was written")
    mode = src.path.stat().st_mode
    fd, tmp = tempfile.mkstemp(prefix=f".{src.path.name}.", suffix=".cg-tmp", dir=src.path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, src.path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

"""The API key `cg serve` asks clients for: from `--api-key-file` or CG_API_KEY, never from the
command line (any local user reads a process's arguments in /proc), and handed to a llama-server
that cg starts in a private file, not as an argument."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import UsageError

ENV = "CG_API_KEY"


def read_key(file: Path | None) -> str | None:
    """The key from the file (its one line), else from CG_API_KEY; None when neither is set."""
    if file is None:
        key = os.environ.get(ENV, "")
        return check(key, ENV) if key else None
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise UsageError(f"cannot read the API key file {file}: {reason}", "Pass a file holding the key.") from None
    return check(text.removesuffix("\n").removesuffix("\r"), str(file))


def check(key: str, where: str) -> str:
    """A key that every client can send in a header and llama-server's key file can hold."""
    if not key.strip():
        raise UsageError(f"the API key in {where} is empty", "Put the key on the file's one line.")
    if not all(0x20 <= ord(ch) < 0x7F for ch in key):
        raise UsageError(f"the API key in {where} holds a line break, a control character or a non-ASCII one",
                         "A key is one line of printable ASCII (an HTTP header carries it).")
    if key != key.strip():
        raise UsageError(f"the API key in {where} starts or ends with a space",
                         "HTTP clients drop those spaces, so no request could match it.")
    if key.startswith("#"):
        raise UsageError(f"the API key in {where} starts with #",
                         "llama-server reads a key file's lines starting with # as comments; pick another key.")
    return key


def private_key_file(key: str) -> Path:
    """The key in a new 0600 file (mkstemp's mode) for llama-server's --api-key-file: one key a line."""
    fd, name = tempfile.mkstemp(prefix="cg-serve-key-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    return Path(name)

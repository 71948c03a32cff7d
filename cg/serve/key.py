"""The API key `cg serve` asks clients for: from `--api-key-file` or CG_API_KEY, never from the
command line (any local user reads a process's arguments in /proc), and handed to a llama-server
that cg starts in a private file, not as an argument."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from cg import report, settings
from cg.errors import UsageError
from cg.request import header_safe
from cg_core.atomic import process_alive

PREFIX = "cg-serve-key-"  # then the writer's pid, "-", mkstemp's letters, ".txt"
MAX_FILE = 4096  # bytes: a key file is one line (not /dev/zero or a log file named by mistake)


def read_key(file: Path | None) -> str | None:
    """The key from the file (its one line), else from CG_API_KEY; None when neither is set."""
    if file is None:
        key = settings.text(settings.API_KEY)
        return check(key, settings.API_KEY.name) if key else None
    try:
        with file.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(MAX_FILE + 1)
        if len(raw) > MAX_FILE:
            raise UsageError(f"the API key file {file} is longer than {MAX_FILE} bytes",
                             "Put the key on the file's one line.")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise UsageError(f"cannot read the API key file {file}: {reason}", "Pass a file holding the key.") from None
    key = check(text.removesuffix("\n").removesuffix("\r"), str(file))
    if mode & (stat.S_IRGRP | stat.S_IROTH):  # a warning, not a refusal: secrets mounted 0444 (Docker's) are common
        report.warn(f"the API key file {file} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                    f"chmod 600 {file}")
    return key


def check(key: str, where: str) -> str:
    """A key that every client can send in a header and llama-server's key file can hold."""
    if not key.strip():
        raise UsageError(f"the API key in {where} is empty", "Put the key on the file's one line.")
    if not header_safe(key):
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
    """The key in a new 0600 file (mkstemp's mode) for llama-server's --api-key-file: one key a line.
    Its name holds this process's id, so that the next cg serve can remove it if this one is killed
    outright (SIGKILL, the OOM killer) before llama-server has read it."""
    _remove_orphans()
    fd, name = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    return Path(name)


def _remove_orphans() -> None:
    """Key files of this user's cg serves that no longer run."""
    if os.name != "posix":
        return  # os.kill(pid, 0) is a test only on POSIX
    folder = Path(tempfile.gettempdir())
    for path in folder.glob(f"{PREFIX}*-*.txt"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        try:
            if pid.isdigit() and path.lstat().st_uid == os.getuid() and not process_alive(int(pid)):
                path.unlink()
        except OSError:
            pass  # gone meanwhile, or not ours to remove

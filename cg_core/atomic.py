"""Writing files so that nothing is ever half-written: one helper for cg and quantize.

A file is written to a temp file beside its target (same folder, so the rename cannot cross
file systems), flushed to disk, then renamed over the target in one step; on any failure the temp
file is removed and the target is as it was. Symbolic links are written through: the file the
link points to is replaced and the link stays a link.

Only a regular file (or a new path) is ever replaced. A character device or a FIFO (`/dev/null`,
a terminal, `>(...)`), and anything under /dev or /proc (`/dev/stdout`), is written to in place,
as a stream: no temp file, no rename. Anything else that is not a regular file (a folder, a block
device, a socket) is refused.

Temp files carry the writer's pid (`.NAME.PID.RANDOM.cg-tmp`). A run that was killed before its
`finally` could not remove its temp file; `remove_stale_temps` removes those whose process is gone.
A signal that arrived inside a C callback (interrupts.py) is raised before anything is replaced.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import interrupts
from .errors import DiskSpaceError, NotAFileError

TEMP_SUFFIX = ".cg-tmp"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")


def real_target(path: Path | str) -> Path:
    """The file a write to `path` must replace: a symlink's final target, else the path itself."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def is_stream(target: Path | str) -> bool:
    """A path written in place: an existing character device or FIFO, or a path in /dev or /proc."""
    if str(os.path.abspath(target)).startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def check_replaceable(target: Path | str) -> None:
    """Refuse a path that exists and is not a regular file (symlinks followed): cg replaces
    regular files only."""
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise NotAFileError(f"cannot write {target}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise NotAFileError(f"{target} is {describe_mode(mode)}, not a regular file; cg replaces regular files only")


def describe_mode(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "a special file")


def temp_beside(target: Path, tag: str = "") -> Path:
    return target.with_name(f".{target.name}{tag}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class Staged:
    """A temp file, written and flushed, waiting to replace its target (two-phase writes)."""

    tmp: Path
    target: Path

    def commit(self) -> None:
        interrupts.check()  # never replace a file after a Ctrl-C that arrived inside llama.cpp
        os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def stage(target: Path | str, data: bytes, *, mode: int | None = None, owner: tuple[int, int] | None = None
          ) -> Staged:
    """Write data to a flushed temp file beside target (symlinks followed), not yet renamed.
    mode and owner (uid, gid) are given to the new file; the owner where permitted (as root)."""
    check_replaceable(target)
    real = real_target(target)
    tmp = temp_beside(real)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            try:
                os.chown(tmp, *owner)
            except PermissionError:
                pass  # not ours to give away: the file becomes the writer's, as any editor's save does
        if mode is not None:
            os.chmod(tmp, mode & 0o7777)  # after chown, which clears set-id bits
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Staged(tmp, real)


def write_atomic(target: Path | str, data: bytes, *, mode: int | None = None) -> None:
    """Replace target with data in one step; readers see the old file or the new one, never half.
    A device or FIFO is written to as a stream instead (see the module's doc)."""
    if is_stream(target):
        interrupts.check()
        with open(target, "wb") as f:
            f.write(data)
        return
    staged = stage(target, data, mode=mode)
    try:
        staged.commit()
    finally:
        staged.discard()


@contextmanager
def atomic_path(target: Path | str, *, tag: str = "") -> Iterator[Path]:
    """A temp path beside target for a writer that needs a path (GGUF writers, llama.cpp);
    renamed over target when the block ends without an error, removed otherwise. The target
    must be a regular file or a new path (such writers seek: a stream cannot take them)."""
    check_replaceable(target)
    real = real_target(target)
    tmp = temp_beside(real, tag)
    try:
        yield tmp
        fsync_file(tmp)
        interrupts.check()
        os.replace(tmp, real)
        fsync_dir(real.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def scratch_path(target: Path | str, tag: str) -> Iterator[Path]:
    """A temp path beside target for an intermediate file, removed when the block ends."""
    tmp = temp_beside(real_target(target), tag)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path | str) -> list[Path]:
    """Remove cg temp files in folder whose writing process no longer runs; return them."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMP_NAME.match(name)
        if match and not _alive(int(match.group(1))):
            path = Path(folder) / name
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def check_free_space(folder: Path | str, need: float, what: str) -> None:
    """Refuse to start when folder's disk has less than need bytes free (with 5% to spare)."""
    folder = Path(folder)
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if need and free < need * 1.05:
        raise DiskSpaceError(f"not enough disk space in {existing} for {what}: need about "
                             f"{size_text(need)}, {size_text(free)} free")


def size_text(n: float) -> str:
    """A size for people: 1.5 GiB, 300 MiB, 12 KiB, 80 bytes."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} bytes"

"""Writing files so that nothing is ever half-written: one helper for cg and quantize.

A file is written to a temp file beside its target (same folder, so the rename cannot cross
file systems), flushed to disk, then renamed over the target in one step; on any failure the temp
file is removed and the target is as it was. Symbolic links are written through: the file the
link points to is replaced and the link stays a link.

Only a regular file (or a new path) is ever replaced. A character device or a FIFO (`/dev/null`,
a terminal, `>(...)`), and anything under /dev or /proc (`/dev/stdout`), is written to in place,
as a stream: no temp file, no rename. Anything else that is not a regular file (a folder, a block
device, a socket) is refused.

Everything written here is private to its owner: temp files are created 0600 whatever the umask
(a `mode` given for a user's own file overrides it), folders made by `private_dir` are 0700, and
an existing folder or lock file that others could read is tightened when cg opens it. Lock files
(`locked`) and cache entries (`open_regular`) are opened without following symbolic links and
without blocking, and only a regular file is used.

Temp files carry the writer's pid (`.NAME.PID.RANDOM.cg-tmp`). A run that was killed before its
`finally` could not remove its temp file; `remove_stale_temps` removes those whose process is gone.
A signal that arrived inside a C callback (interrupts.py) is raised before anything is replaced.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import interrupts
from .errors import DiskSpaceError, NotAFileError

TEMP_SUFFIX = ".cg-tmp"
PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700
_OTHERS = 0o077  # the group's and other users' permission bits
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


def create_private(path: Path | str) -> BinaryIO:
    """A new file open for writing, 0600 whatever the umask; never an existing file or a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # a umask such as 0o277 would have taken the owner's bits too
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


class NotRegularError(OSError):
    """A path that should hold a regular file holds something else (a FIFO, a device, a folder)."""


def open_regular(path: Path | str, flags: int = os.O_RDONLY) -> int:
    """A file descriptor on a regular file: a symbolic link is refused (ELOOP), and a FIFO or
    device is refused without blocking on it. A file others can read is tightened to 0600 (where
    it is ours). With O_CREAT in flags, a new file is 0600."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularError(f"{path} is {describe_mode(st.st_mode)}, not a regular file")
        tighten(fd, st)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(fd: int, st: os.stat_result) -> None:
    """Take the group's and others' bits off an open file or folder of ours."""
    if st.st_mode & _OTHERS and st.st_uid == os.geteuid():
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~_OTHERS)


def private_dir(folder: Path | str) -> Path:
    """folder, made 0700 with every missing parent (whatever the umask); an existing one that
    others can read is tightened. Raises OSError where it is not a folder of ours."""
    folder = Path(folder)
    for parent in [*reversed(folder.parents), folder]:
        if os.path.isdir(parent):
            continue
        try:
            os.mkdir(parent, PRIVATE_DIR)
        except FileExistsError:
            continue  # made meanwhile by another process (or not a folder: the open below says so)
        os.chmod(parent, PRIVATE_DIR)  # mkdir's mode is cut by the umask
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise PermissionError(f"{folder} belongs to another user")
        tighten(fd, st)
    finally:
        os.close(fd)
    return folder


@contextmanager
def locked(path: Path | str) -> Iterator[None]:
    """An exclusive flock on a lock file: created 0600, never through a symbolic link (a link in
    its place is refused, so no file is ever made where it points), only a regular file."""
    fd = open_regular(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing it releases the lock


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
    The new file is 0600 unless mode is given (a user's own file keeps its mode), and owner
    (uid, gid) where permitted (as root)."""
    check_replaceable(target)
    real = real_target(target)
    tmp = temp_beside(real)
    try:
        with create_private(tmp) as f:
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
        if match and not process_alive(int(match.group(1))):
            path = Path(folder) / name
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def process_alive(pid: int) -> bool:
    """A process with this id runs (this one, or another user's too): its files are not left over."""
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

"""Run a program a model wrote: a supervising process, a temporary folder, and limits.

Limits: wall-clock timeout, then every process the program started is killed, also those that
left its process group or tree (supervisor.py: a subreaper and a sweep); CPU seconds, address
space, file size, processes (RLIMIT_NPROC), no core files; `python -I -S` (no user site, no
PYTHON* variables, no site-packages: the programs need the standard library only, and site's
start-up is most of a run), a bare environment, stdin closed, output captured and bounded. This
contains accidents (loops, memory blow-ups, stray files, fork bombs, daemons); it is not a
security boundary against hostile code.

The resource limits are set by the supervisor's child itself (before the program), not by a
`preexec_fn`: Python documents preexec_fn as unsafe in a process with threads, and scoring runs
in a thread pool while llama.cpp runs in the main thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SUPERVISOR = Path(__file__).with_name("supervisor.py")
# How long past the timeout the supervisor may take to end (its sweep) before cg kills its group.
_GRACE = 10.0
# Processes and threads a program may start beyond what its user ran when counted (RLIMIT_NPROC
# counts every task of the user, so the limit is set from that count, taken at most every
# _RECOUNT seconds: a scan of /proc per run would cost more than many programs). The kernel
# exempts root.
SPARE_TASKS = 256
_RECOUNT = 30.0


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall seconds
    memory_mb: int = 1024
    file_mb: int = 16


@dataclass(frozen=True)
class Outcome:
    passed: bool
    result: str  # "passed", "failed: <last error line>", "timed out"
    seconds: float


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cg-eval-") as work:
        path = os.path.join(work, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        # stderr goes to a file: bounded by the file-size limit, unlike a pipe read into memory.
        with open(os.path.join(work, "stderr.txt"), "w+b") as errfile:
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-S", str(SUPERVISOR), *_limit_args(limits), path],
                                    cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=errfile, start_new_session=True)
            try:
                proc.wait(timeout=limits.timeout + _GRACE)  # the supervisor keeps the timeout itself
            except subprocess.TimeoutExpired:
                return Outcome(False, "timed out", time.perf_counter() - start)
            finally:
                _kill_group(proc)  # a supervisor that hung, and its group
            errfile.seek(0)
            err = errfile.read()[-4096:]
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return Outcome(True, "passed", seconds)
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return Outcome(False, "timed out", seconds)
    if proc.returncode < 0:
        return Outcome(False, f"failed: killed by {signal.Signals(-proc.returncode).name}", seconds)
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return Outcome(False, "failed: " + tail[0][:300], seconds)


def _limit_args(limits: Limits) -> list[str]:
    """supervisor.py's arguments: wall seconds, CPU seconds, address space and file size in
    bytes, and the most tasks the user may have."""
    return [repr(limits.timeout), str(int(limits.timeout) + 1), str(limits.memory_mb * 2**20),
            str(limits.file_mb * 2**20), str(_user_tasks() + SPARE_TASKS)]


_counted = [-_RECOUNT, 0.0]  # when, how many
_count_lock = threading.Lock()


def _user_tasks() -> int:
    """Tasks (threads) this real user runs, from /proc (0 where there is none); recounted every
    _RECOUNT seconds."""
    with _count_lock:
        if time.monotonic() - _counted[0] >= _RECOUNT:
            _counted[:] = [time.monotonic(), _count_user_tasks()]
        return int(_counted[1])


def _count_user_tasks() -> int:
    uid, count = os.getuid(), 0
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    count += int(f.read().rsplit(b")", 1)[1].split()[17])  # num_threads
        except (OSError, ValueError, IndexError):  # gone meanwhile
            pass
    return count


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()

"""Run a program a model wrote: its own process group, a temporary folder, and limits.

Limits: wall-clock timeout (the whole process group is killed), CPU seconds, address space,
file size, no core files; `python -I -S` (no user site, no PYTHON* variables, no site-packages:
the programs need the standard library only, and site's start-up is most of a run), a bare environment,
stdin closed, output captured and bounded. This contains accidents (loops, memory blow-ups,
stray files, fork bombs' children); it is not a security boundary against hostile code.

The resource limits are set by the child itself (a few lines run before the program), not by a
`preexec_fn`: Python documents preexec_fn as unsafe in a process with threads, and scoring runs
in a thread pool while llama.cpp runs in the main thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass


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
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-S", "-c", _LAUNCHER, *_limit_args(limits), path],
                                    cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=errfile, start_new_session=True)
            try:
                proc.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                return Outcome(False, "timed out", time.perf_counter() - start)
            finally:
                _kill_group(proc)  # on timeout, and any children it left behind
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


# Runs in the child: limits first, then the program.
_LAUNCHER = """\
import resource, sys
cpu, memory, size = (int(a) for a in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
with open(sys.argv[4], encoding="utf-8") as f:
    program = compile(f.read(), sys.argv[4], "exec")
exec(program, {})  # as the official harness runs it: fresh globals, not __main__
"""


def _limit_args(limits: Limits) -> list[str]:
    return [str(int(limits.timeout) + 1), str(limits.memory_mb * 2**20), str(limits.file_mb * 2**20)]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()

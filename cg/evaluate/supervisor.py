"""The sandbox's supervising process: `python -I -B -S supervisor.py TIMEOUT CPU MEMORY SIZE TASKS PROGRAM`
(sandbox.py starts it; the standard library only: it runs isolated, without site-packages or cg).

A process group is not enough to end what a program starts: a child that calls setsid leaves the
group, and a double fork leaves the tree. So this process makes itself the subreaper of all its
descendants (PR_SET_CHILD_SUBREAPER: an orphan is given to it, not to init), forks the program
with its limits, ends it at the wall-clock timeout, and then kills every descendant still alive
before it exits. Its exit status is the program's: the same code, the same signal when the
program died of one, SIGKILL on a timeout (sandbox.py reads both as "timed out").
"""

from __future__ import annotations

import os
import resource
import select
import sys
import time

# `signal` and `traceback` are imported where needed: each costs milliseconds of every run, and
# most runs need neither.
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
SIGKILL = 9


def main(argv: list[str]) -> None:
    timeout = float(argv[0])
    cpu, memory, size, tasks = (int(a) for a in argv[1:5])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _become_subreaper()
    pid = os.fork()
    if pid == 0:
        _run_program(argv[5], cpu, memory, size, tasks)
    status = _wait(pid, timeout)
    _sweep()
    _exit_like(status)


def _become_subreaper() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError, ImportError):  # not Linux: the process group is all there is
        pass


def _run_program(path: str, cpu: int, memory: int, size: int, tasks: int) -> None:
    """In the forked child: the limits, then the program, as the official harness runs it
    (exec with fresh globals); never returns."""
    status = 1
    try:
        _limit(resource.RLIMIT_NPROC, tasks)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        with open(path, encoding="utf-8") as f:
            program = compile(f.read(), path, "exec")
        exec(program, {})
        status = 0
    except SystemExit as exc:  # as the interpreter treats it
        if exc.code is None:
            status = 0
        elif isinstance(exc.code, int):
            status = exc.code if -(2**31) <= exc.code < 2**31 else 1
        else:
            print(exc.code, file=sys.stderr)
    except BaseException as exc:
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # no memory left even for that: the last line is what counts
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status & 0xFF)


def _limit(kind: int, value: int) -> None:
    """Lower a limit to value (or to the hard limit where that is lower already)."""
    hard = resource.getrlimit(kind)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, value))


def _wait(pid: int, timeout: float) -> int | None:
    """The program's wait status, or None when it ran past the timeout (then it is killed)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # an old kernel: poll
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            time.sleep(0.005)
        os.kill(pid, SIGKILL)  # not reaped yet: the pid is still this child's
        os.waitpid(pid, 0)
        return None
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            os.kill(pid, SIGKILL)
        status = os.waitpid(pid, 0)[1]
        return status if ready else None
    finally:
        os.close(fd)


def _sweep() -> None:
    """SIGKILL every descendant, again and again, until this process has no child left. As the
    subreaper, the orphans of killed processes become its children, so none escapes; a program
    forking meanwhile is bounded by RLIMIT_NPROC."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0]:
                continue  # reaped one; look again
        except ChildProcessError:
            return  # no child left: no descendant either (each one's ancestors lead to a child)
        for pid in _descendants(os.getpid()):
            try:
                os.kill(pid, SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _descendants(root: int) -> list[int]:
    """Every process below root, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _exit_like(status: int | None) -> None:
    """End this process as the program ended (SIGKILL for a timeout)."""
    if status is not None and os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    import signal

    sig = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else SIGKILL
    if sig != SIGKILL:
        signal.signal(sig, signal.SIG_DFL)  # Python's own handlers (SIGINT, SIGPIPE) would not end it
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # a signal whose default is not to end a process


if __name__ == "__main__":
    main(sys.argv[1:])

"""Shared by the benchmark scripts: a realistic FIM input, child processes with their peak RSS."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

WORKDIR = Path("/tmp/cg-bench")
# The repository root: the benchmarks build their test-shaped checkpoints with tests/synthetic.py.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def source_text() -> str:
    """A real Python module, the same everywhere Python is: the standard library's textwrap."""
    return Path(inspect.getsourcefile(textwrap)).read_text(encoding="utf-8")


def fim_input(tokenize, prefix_tokens: int = 1100, suffix_tokens: int = 400, cursor_at: float = 0.6) -> tuple[str, str]:
    """Prefix and suffix cut from source_text() at whole lines, about the given token counts
    (counted with `tokenize`, the model's own tokenizer)."""
    lines = source_text().splitlines(keepends=True)
    cursor = int(len(lines) * cursor_at)
    prefix, n = [], 0
    for line in reversed(lines[:cursor]):
        n += len(tokenize(line))
        if n > prefix_tokens:
            break
        prefix.insert(0, line)
    suffix, n = [], 0
    for line in lines[cursor:]:
        n += len(tokenize(line))
        if n > suffix_tokens:
            break
        suffix.append(line)
    indent = lines[cursor][: len(lines[cursor]) - len(lines[cursor].lstrip())]
    return "".join(prefix) + indent, "".join(suffix)


def child(cmd: list[str], *, stdin: str | None = None, env: dict | None = None, cwd=None) -> tuple[float, float, str]:
    """Run a child to its end: (wall seconds, peak RSS MiB from wait4, stdout).

    The caller must stay small: on Linux a child's peak RSS starts from its parent's at exec.
    """
    import tempfile

    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        if stdin is not None:
            fin.write(stdin.encode())
            fin.seek(0)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read().decode(errors="replace"), ferr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:4]))} ... failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out

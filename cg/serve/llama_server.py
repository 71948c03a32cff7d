"""`cg serve`: llama.cpp's llama-server for an installed model (or a GGUF path), with the flags cg
needs, until Ctrl-C, SIGTERM or SIGHUP (exit 130 / 143 / 129), never leaving it behind.

The flags: the model, a context per slot (`-c` is shared by the slots, so it is ctx x jobs),
parallel slots for `cg eval --jobs`, host and port, threads, GPU layers, no weight repacking on a
CPU with AMX (unless CG_AMX is on: llama.cpp's AMX kernels crash on some machines), and the API key in a
private file (`--api-key-file`: an argument would show in /proc/PID/cmdline, and `--api-key`
splits keys at commas), removed once llama-server has read it. Stops on the server's side are
not needed: cg stops on the stop ids itself and closes the stream.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cg import report, settings
from cg.errors import ServerError, ToolMissingError, UsageError
from cg.models import store
from cg.serve.key import private_key_file
from cg.settings import DEFAULT_CTX
from cg_core import interrupts

START_TIMEOUT = 600.0  # a big model from a cold disk takes a while to load
HOW_TO_GET = ("Install llama.cpp (brew install llama.cpp, or a release archive from "
              "https://github.com/ggml-org/llama.cpp/releases), or build llama-server from the llama.cpp sources in "
              "the llama-cpp-python sdist (README: Running on a server); then put it on PATH or set CG_LLAMA_SERVER.")


@dataclass(frozen=True)
class ServeOptions:
    model: str | None = None
    ctx: int = DEFAULT_CTX  # per slot
    jobs: int = 1  # parallel slots
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int | None = None
    gpu_layers: int | None = None  # None: all (llama-server runs them on the CPU without a GPU backend)
    api_key: str | None = None
    verbose: bool = False


def llama_server_binary() -> str:
    chosen = settings.text(settings.LLAMA_SERVER)
    if chosen:
        if not (Path(chosen).is_file() and os.access(chosen, os.X_OK)):
            raise ToolMissingError(f"CG_LLAMA_SERVER={chosen} is not an executable file", HOW_TO_GET)
        return chosen
    found = shutil.which("llama-server")
    if found is None:
        raise ToolMissingError("llama-server is not installed (not on PATH, CG_LLAMA_SERVER unset)", HOW_TO_GET)
    return found


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """The CPU offers AMX (Linux: an amx_int8 flag in /proc/cpuinfo; elsewhere unknown: no)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_int8" in line.split() for line in text.splitlines())


def repack_flags() -> list[str]:
    """llama-server's flags for weight repacking, by the local engine's rule: off (--no-repack) on a
    CPU with AMX unless CG_AMX is on, as llama.cpp's AMX kernels crash on some machines."""
    return ["--no-repack"] if cpu_has_amx() and not settings.amx() else []


def command(binary: str, model: Path, opts: ServeOptions, key_file: Path | None = None) -> list[str]:
    cmd = [binary, "-m", str(model), "-c", str(opts.ctx * opts.jobs), "-np", str(opts.jobs),
           "--host", opts.host, "--port", str(opts.port), "-ngl", str(999 if opts.gpu_layers in (None, -1)
                                                                       else opts.gpu_layers)]
    if opts.threads:
        cmd += ["-t", str(opts.threads)]
    cmd += repack_flags()
    if key_file is not None:
        cmd += ["--api-key-file", str(key_file)]
    return cmd


def serve(opts: ServeOptions, on_ready: Callable[[str], None]) -> None:
    """Start llama-server, call on_ready(url) once it answers, run until it ends or cg is told to
    stop. Whatever ends cg (Ctrl-C, SIGTERM, SIGHUP, an error, even SIGKILL on Linux) ends
    llama-server too: no orphan keeps the port."""
    binary = llama_server_binary()
    model = store.resolve(opts.model).path
    url = f"http://{opts.host}:{opts.port}"
    _check_port(opts.host, opts.port)
    key_file = private_key_file(opts.api_key) if opts.api_key else None
    with tempfile.TemporaryFile() as log:
        out = None if opts.verbose else log
        try:
            proc = subprocess.Popen(command(binary, model, opts, key_file), stdout=out,
                                    stderr=subprocess.STDOUT if out else None, start_new_session=True,
                                    preexec_fn=_die_with_parent(os.getpid()))  # noqa: PLW1509 - no threads run here
        except BaseException:
            _remove(key_file)
            raise
        try:
            _wait_healthy(proc, url, opts, log)
            _remove(key_file)  # read at start-up: the key lives on only in llama-server's memory
            on_ready(url)
            proc.wait()
            raise ServerError(f"llama-server stopped by itself (exit {proc.returncode})" + _tail(log),
                              "Run with --verbose to see its whole log.")
        except (KeyboardInterrupt, interrupts.Terminated):
            _stop(proc)
            report.say("Stopped llama-server.")
            raise
        finally:
            _remove(key_file)
            if proc.poll() is None:
                _stop(proc)


def _remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def _check_port(host: str, port: int) -> None:
    """A port another program listens on is a clear error now, not llama-server's exit later."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}: {exc.strerror or exc}", "Check --host.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama-server does: only a listener blocks
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is taken by another program",
                                 f"Pick a free port with --port, or stop what listens on {port}.") from None
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", "Check --host and --port.") \
                from None


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """Linux: the child gets SIGTERM when cg dies, however it dies (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it

    def child() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # cg died before the prctl took effect
            os._exit(1)

    return child


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, opts: ServeOptions, log: IO[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
    request = urllib.request.Request(url + "/health", headers=headers)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if "bind" in _tail(log).lower() or "address already in use" in _tail(log).lower():
                raise UsageError(f"port {opts.port} on {opts.host} is taken by another program",
                                 f"Pick a free port with --port, or stop what listens on {opts.port}.")
            raise ServerError(f"llama-server exited ({proc.returncode}) while starting" + _tail(log),
                              "Run with --verbose to see its whole log.")
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise ServerError(f"llama-server did not answer at {url} within {START_TIMEOUT:.0f} s" + _tail(log))


def _tail(log: IO[bytes], lines: int = 5) -> str:
    """The last lines of llama-server's log, for an error message."""
    try:
        log.seek(0)
        text = [line.strip() for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except (OSError, ValueError):
        return ""
    return (":\n  " + "\n  ".join(t[:300] for t in text[-lines:])) if text else ""


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM to llama-server's process group, SIGKILL after a short grace."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    except ProcessLookupError:
        pass

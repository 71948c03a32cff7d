"""cg serve against llama-server on an editing trace, with llama.vim's own /infill requests.

    python benchmarks/bench_serve.py [--model X.gguf] [--llama-server PATH] [--n-predict 16] [--ctx 8192] [--splice]

The trace, in a large file (the standard library's argparse.py, about 2,600 lines): typing one
30-character line key by key (a request per keystroke), moving the cursor down 10 lines one at a
time, switching to a second file (textwrap.py) and back. Each request is the one llama.vim builds
(autoload/llama.vim): 256 prefix and 64 suffix lines, the cursor line's start in `prompt`, id_slot
0, cache_prompt, llama.vim's sampler fields, t_max_predict_ms 1000; streamed here, to time the
first token, and read to its end (timings.prompt_n: prompt tokens evaluated).

Per phase, for cg serve and for llama-server --cache-reuse 256 (the set-up llama.vim documents;
same model, same context): p50 and p95 of tokens evaluated, time to first token, and total.
Then cancellation: a long request's first token is read and its connection closed (what
llama.vim's job_stop does at the next keystroke); the time until the server is idle again (cg:
/metrics, llama-server: /slots), and for cg also the replacement path (a newer request for the
same slot ends the older one's stream).

Issue 31's targets: p50 tokens evaluated per keystroke <= 0.25x llama-server's, p50 time to first
token <= 0.5x, a cancelled request stops within 0.1 s. Default model: the codegemma-2b-shape
Q4_K_M that `bench_quantize.py --keep` leaves in /tmp/cg-bench. Not a test: run by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import inspect
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WORKDIR

TYPED = "        value = parser.parse(x)"[:30]


@dataclass
class Sample:
    evaluated: int
    ttft: float  # seconds to the first streamed event with text (or the end)
    total: float


def source(module: str) -> list[str]:
    return Path(inspect.getsourcefile(__import__(module))).read_text(encoding="utf-8").splitlines()


def llama_vim_request(lines: list[str], row: int, col: int, n_predict: int) -> dict:
    """llama.vim's s:fim_ctx_local + llama#fim body, for a cursor at (row, col)."""
    cur = lines[row]
    before, after = cur[:col], cur[col:]
    if not cur.strip():
        before = after = ""
    prefix = "\n".join(lines[max(0, row - 256):row]) + "\n"
    suffix = after + "\n" + "\n".join(lines[row + 1:row + 65]) + "\n"
    return {"id_slot": 0, "input_prefix": prefix, "input_suffix": suffix, "input_extra": [], "prompt": before,
            "n_predict": n_predict, "stop": [], "n_indent": len(cur) - len(cur.lstrip()), "top_k": 40, "top_p": 0.90,
            "samplers": ["top_k", "top_p", "infill"], "stream": True, "cache_prompt": True, "t_max_prompt_ms": 500,
            "t_max_predict_ms": 1000}


def send(port: int, body: dict) -> Sample:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    start = time.perf_counter()
    conn.request("POST", "/infill", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first, evaluated = None, 0
    for line in resp:
        if not line.startswith(b"data: "):
            continue
        event = json.loads(line[6:])
        if first is None and (event.get("content") or event.get("stop")):
            first = time.perf_counter()
        if event.get("stop"):
            evaluated = int(event.get("timings", {}).get("prompt_n", 0))
            break
    end = time.perf_counter()
    conn.close()
    return Sample(evaluated, (first or end) - start, end - start)


def trace(a: list[str], b: list[str]) -> Iterator[tuple[str, list[str], int, int]]:
    """(phase, file lines, row, col) of each request."""
    row = len(a) // 2
    typed = list(a)
    typed.insert(row, "")
    for n in range(1, len(TYPED) + 1):
        typed[row] = TYPED[:n]
        yield "typing", list(typed), row, n
    for step in range(1, 11):
        line = typed[row + step]
        yield "cursor down", typed, row + step, len(line) - len(line.lstrip())
    yield "switch file", b, len(b) // 2, 4
    yield "switch file", typed, row, len(TYPED)


def measure(port: int, a: list[str], b: list[str], n_predict: int) -> dict[str, list[Sample]]:
    send(port, llama_vim_request(a, len(a) // 2, 0, n_predict))  # the first look at the file: not counted
    phases: dict[str, list[Sample]] = {}
    for phase, lines, row, col in trace(a, b):
        phases.setdefault(phase, []).append(send(port, llama_vim_request(lines, row, col, n_predict)))
    return phases


def idle_cg(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        return "llamacpp:requests_processing 0" in resp.read().decode()


def idle_llama(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/slots", timeout=30) as resp:
        return not any(slot.get("is_processing") for slot in json.loads(resp.read()))


def cancel_seconds(port: int, a: list[str], idle) -> float:
    """A long request: its first event read, its connection closed; seconds until idle."""
    body = {**llama_vim_request(a, len(a) // 3, 0, 2048), "t_max_predict_ms": 0}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    conn.request("POST", "/infill", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.readline()
    closed = time.perf_counter()
    with contextlib.suppress(OSError):
        conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    while not idle(port):
        time.sleep(0.005)
    return time.perf_counter() - closed


def replace_seconds(port: int, a: list[str]) -> float:
    """cg only: a newer request for slot 0; seconds until the older stream ends."""
    body = {**llama_vim_request(a, len(a) // 3, 0, 2048), "t_max_predict_ms": 0}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    conn.request("POST", "/infill", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.readline()
    newer = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    newer.request("POST", "/infill", json.dumps({**body, "n_predict": 1, "stream": False}),
                  {"Content-Type": "application/json"})
    sent = time.perf_counter()
    for line in resp:
        if b'"stop":true' in line:
            break
    ended = time.perf_counter() - sent
    newer.getresponse().read()
    conn.close()
    newer.close()
    return ended


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(cmd: list[str], port: int) -> Iterator[None]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            for _ in range(1200):
                if proc.poll() is not None:  # it died (a missing model, a taken port): say why, do not wait
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise SystemExit(f"{cmd[0]} exited {proc.returncode}: {tail}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                raise SystemExit(f"{cmd[0]} did not start")
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(WORKDIR / "codegemma-2b-shape-18l-q4_k_m.gguf"))
    ap.add_argument("--llama-server", default=os.environ.get("CG_LLAMA_SERVER") or shutil.which("llama-server"))
    ap.add_argument("--n-predict", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--splice", action="store_true", help="cg serve --splice (reuse after a change)")
    args = ap.parse_args()
    a, b = source("argparse"), source("textwrap")
    results: dict[str, dict[str, list[Sample]]] = {}
    cancels: dict[str, list[float]] = {}
    port = free_port()
    with running([sys.executable, "-m", "cg", "serve", args.model, "--port", str(port), "--ctx", str(args.ctx),
                  "--threads", str(args.threads), *(["--splice"] if args.splice else [])], port):
        results["cg serve"] = measure(port, a, b, args.n_predict)
        cancels["cg serve (closed)"] = [cancel_seconds(port, a, idle_cg) for _ in range(3)]
        cancels["cg serve (replaced)"] = [replace_seconds(port, a) for _ in range(3)]
    if args.llama_server:
        port = free_port()
        with running([args.llama_server, "-m", args.model, "-c", str(args.ctx), "-np", "1", "--cache-reuse", "256",
                      "-t", str(args.threads), "--host", "127.0.0.1", "--port", str(port)], port):
            results["llama-server"] = measure(port, a, b, args.n_predict)
            cancels["llama-server (closed)"] = [cancel_seconds(port, a, idle_llama) for _ in range(3)]
    print("| phase | server | requests | evaluated p50 | p95 | first token s p50 | p95 | total s p50 | p95 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for server, phases in results.items():
        for phase, samples in phases.items():
            ev, ft, tt = ([getattr(s, f) for s in samples] for f in ("evaluated", "ttft", "total"))
            print(f"| {phase} | {server} | {len(samples)} | {statistics.median(ev):.0f} | {pct(ev, 0.95):.0f} | "
                  f"{statistics.median(ft):.2f} | {pct(ft, 0.95):.2f} | {statistics.median(tt):.2f} | "
                  f"{pct(tt, 0.95):.2f} |")
    if "llama-server" in results:
        for phase in results["cg serve"]:
            cg, ls = results["cg serve"][phase], results["llama-server"][phase]
            ev = statistics.median(s.evaluated for s in cg) / max(1, statistics.median(s.evaluated for s in ls))
            ft = statistics.median(s.ttft for s in cg) / statistics.median(s.ttft for s in ls)
            print(f"{phase}: evaluated {ev:.2f}x llama-server's (target <= 0.25), first token {ft:.2f}x (<= 0.5)")
    for what, seconds in cancels.items():
        print(f"cancel, {what}: {max(seconds):.3f} s at most of {len(seconds)} (target <= 0.1)")


if __name__ == "__main__":
    main()

"""cg on llama-server: the cost of cg's client, and eval throughput with requests in flight.

    python benchmarks/bench_server.py [--model X.gguf] [--llama-server PATH] [--repeats 3] [--tasks 8]

1. One FIM completion (~1,500 prompt tokens of textwrap.py, 32 new tokens, stops banned) as a
   process: `cg complete --server URL` against a minimal script that POSTs the same token ids to
   the same llama-server (/completion, streamed). Wall time ratio, target <= 1.10. Each run starts
   with a different first line, so no run reuses another's KV cache.
2. `cg eval humaneval-infill --limit N` throughput (tasks/minute) in-process, and through
   llama-server -np 4 at --jobs 1, 2 and 4: a fresh server for each, so that no run finds the
   same prompts already in a slot's KV cache (a first version reused one server and measured
   that cache: 64 tasks/min at --jobs 4). --repeats 0 skips part 1.

Default model: the codegemma-2b-shape Q4_K_M that `bench_quantize.py --keep` leaves in
/tmp/cg-bench; llama-server from CG_LLAMA_SERVER or PATH. Not a test: run by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WORKDIR, child, fim_input

STOPS = (1, 67, 68, 69, 70, 107)
DIRECT = r'''
import json, sys, urllib.request
spec = json.load(open(sys.argv[1]))
body = {"prompt": spec["ids"], "n_predict": spec["tokens"], "stream": True, "temperature": 0, "cache_prompt": True,
        "logit_bias": [[t, -1e9] for t in spec["stops"]]}
req = urllib.request.Request(spec["url"] + "/completion", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
text = []
with urllib.request.urlopen(req, timeout=3600) as resp:
    for line in resp:
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            text.append(event.get("content", ""))
            if event.get("stop"):
                break
print("".join(text))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(binary: str, model: str, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([binary, "-m", model, "-c", str(4096 * 4), "-np", "4", "-t", str(threads), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("llama-server did not start")


def one_completion(url: str, model: str, run: int, work: Path) -> tuple[float, float]:
    """(cg seconds, direct seconds) for the same prompt ids."""
    from cg.complete import Request, get_engine
    from cg.prompt.build import fim_prompt

    # Each side gets a prompt of its own (another first line): neither reuses the other's KV cache.
    prefix, suffix = f"# run {run}\n" + SPEC["prefix"], SPEC["suffix"]
    opts = Request(server=url, n_ctx=4096, max_tokens=32, quiet=True)
    ids = fim_prompt(get_engine(opts), f"# run {run}b\n" + SPEC["prefix"], suffix, opts).ids  # tokenized only
    spec = work / f"direct-{run}.json"
    spec.write_text(json.dumps({"url": url, "ids": ids, "tokens": 32, "stops": STOPS}))
    bias = [a for t in STOPS for a in ("--logit-bias", f"{t}=-1e9")]
    inp = prefix + "<CURSOR>" + suffix
    cg_s, _, _ = child([sys.executable, "-m", "cg", "complete", "--server", url, "-n", "32", "-q", "--no-block-stop",
                        *bias], stdin=inp, env={"CG_PROMPT_CACHE": "0"})
    direct_s, _, _ = child([sys.executable, "-c", DIRECT, str(spec)])
    return cg_s, direct_s


def eval_rate(args: list[str], tasks: int) -> float:
    seconds, _, _out = child([sys.executable, "-m", "cg", "eval", "humaneval-infill", "--limit", str(tasks), "-n", "48",
                             "--json", *args])
    return tasks / (seconds / 60)


SPEC: dict[str, str] = {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(WORKDIR / "codegemma-2b-shape-18l-q4_k_m.gguf"))
    ap.add_argument("--llama-server", default=os.environ.get("CG_LLAMA_SERVER") or shutil.which("llama-server"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args()
    if not args.llama_server:
        raise SystemExit("no llama-server: set CG_LLAMA_SERVER or pass --llama-server")
    work = WORKDIR / "server"
    work.mkdir(parents=True, exist_ok=True)
    from cg.engine.local.engine import load

    eng = load(args.model, n_ctx=256)
    SPEC["prefix"], SPEC["suffix"] = fim_input(eng.tokenize_text)
    del eng
    print(f"model: {Path(args.model).name}  threads: {args.threads}  repeats: {args.repeats}  "
          f"({time.strftime('%Y-%m-%d')})")
    if args.repeats:
        with server(args.llama_server, args.model, args.threads) as url:
            pairs = [one_completion(url, args.model, run, work) for run in range(args.repeats)]
        cg_s = statistics.median(p[0] for p in pairs)
        direct_s = statistics.median(p[1] for p in pairs)
        print(f"{'measure':<48}{'direct':>10}{'cg':>10}{'ratio':>8}  target")
        print(f"{'one FIM completion via llama-server, wall s':<48}{direct_s:>10.2f}{cg_s:>10.2f}"
              f"{cg_s / direct_s:>8.3f}  <= 1.10")
        print(json.dumps({"pairs": pairs}))
    if not args.skip_eval:
        rates = {"in-process": eval_rate(["-m", args.model, "-t", str(args.threads)], args.tasks)}
        for jobs in (1, 2, 4):
            with server(args.llama_server, args.model, args.threads) as url:
                rates[f"llama-server -np 4, --jobs {jobs}"] = eval_rate(["--server", url, "--jobs", str(jobs)],
                                                                        args.tasks)
        print(f"\ncg eval humaneval-infill single-line, {args.tasks} tasks, up to 48 tokens each:")
        for name, rate in rates.items():
            print(f"  {name:<34}{rate:>8.2f} tasks/min")


@contextlib.contextmanager
def server(binary: str, model: str, threads: int) -> Iterator[str]:
    proc, url = start_server(binary, model, threads)
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


if __name__ == "__main__":
    main()

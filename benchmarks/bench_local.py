"""The local engine on the CPU: the prompt window, and the prompt indicator's cost.

    python benchmarks/bench_local.py [--model X.gguf] [--repeats 3] [--threads N]

1. Cold `cg infill` (a new process, prompt cache off) at a cursor 90% down a 600-line file:
   the default window (2048 prompt tokens on the CPU) against the whole context
   (--max-prompt-tokens 4096). Wall time ratio, target <= 0.55.
2. Decode speed with the prompt indicator on against off, both in one process whose stderr is a
   pseudo-terminal (the indicator draws there; the benchmark counts that it did), from cg's own
   timings, interleaved, median of --decode-repeats: target >= 0.99. (A first version timed
   `cg complete --json` with stderr a terminal or a pipe, but --json turns the indicator off: it
   compared two runs without it.)

Default model: the codegemma-2b-shape Q4_K_M that `bench_quantize.py --keep` leaves in
/tmp/cg-bench. Both sides run in the same session, interleaved, median of --repeats. Not a test.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WORKDIR, child


def six_hundred_lines() -> str:
    """600 lines of real Python: standard-library modules, the same everywhere Python is."""
    import argparse as a
    import textwrap as t

    lines: list[str] = []
    for module in (t, a):
        lines += Path(inspect.getsourcefile(module)).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(lines[:600])


def cold_infill(model: str, target: str, window: int | None, threads: int) -> float:
    cmd = [sys.executable, "-m", "cg", "infill", target, "-m", model, "-n", "16", "-t", str(threads), "-q",
           "--ctx", "4096", *(["--max-prompt-tokens", str(window)] if window else [])]
    seconds, _rss, _out = child(cmd, env={"CG_PROMPT_CACHE": "0"})
    return seconds


DECODE = r"""
import json, sys
from cg.complete import Request, complete
spec = json.load(open(sys.argv[1]))
rates = {"indicator": [], "plain": []}
bias = {t: float("-inf") for t in spec["stops"]}
for run in range(spec["repeats"]):
    # interleaved, each side first in every other pair; a new first line: no run reuses another's KV cache
    for side in ("indicator", "plain") if run % 2 == 0 else ("plain", "indicator"):
        opts = Request(model=spec["model"], n_ctx=4096, threads=spec["threads"], max_tokens=64, logit_bias=bias,
                          progress=side == "indicator")
        c = complete(f"# run {run} {side}\n" + spec["prefix"], "\n", opts=opts, block_stop=False)
        rates[side].append((c.completion_tokens - 1) / (c.timings.generation_ms / 1000))
print(json.dumps(rates))
"""


def decode_rates(model: str, threads: int, repeats: int, work: Path) -> tuple[dict[str, list[float]], int]:
    """Decode tokens/s with the prompt indicator on and off, in one process whose stderr is a
    pseudo-terminal (so the indicator really draws); and how many times it drew."""
    spec = work / "decode.json"
    spec.write_text(json.dumps({"model": model, "threads": threads, "repeats": repeats,
                                "prefix": six_hundred_lines()[:6000], "stops": [1, 67, 68, 69, 70, 107]}))
    master, slave = pty.openpty()
    env = {**os.environ, "CG_PROMPT_CACHE": "0", "COLUMNS": "100"}
    proc = subprocess.Popen([sys.executable, "-c", DECODE, str(spec)], stdout=subprocess.PIPE, stderr=slave,
                            env=env)
    os.close(slave)
    seen = b""
    while True:
        if select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    if proc.wait() != 0:
        raise SystemExit(f"decode run failed:\n{seen.decode(errors='replace')[-2000:]}")
    return json.loads(out), seen.count(b"Reading the prompt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(WORKDIR / "codegemma-2b-shape-18l-q4_k_m.gguf"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--decode-repeats", type=int, default=5)
    ap.add_argument("--skip-window", action="store_true", help="Only the decode measurement.")
    args = ap.parse_args()
    work = WORKDIR / "local"
    work.mkdir(parents=True, exist_ok=True)
    source = work / "module.py"
    source.write_text(six_hundred_lines())
    target = f"{source}:{int(600 * 0.9)}"
    rows: dict[str, list[float]] = {"window": [], "whole": []}
    for _ in range(args.repeats if not args.skip_window else 0):  # interleaved: noise hits both sides alike
        rows["window"].append(cold_infill(args.model, target, None, args.threads))
        rows["whole"].append(cold_infill(args.model, target, 4096, args.threads))
    rates, drawn = decode_rates(args.model, args.threads, args.decode_repeats, work)
    rows.update(rates)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    print(f"model: {Path(args.model).name}  threads: {args.threads}  repeats: {args.repeats}  "
          f"({time.strftime('%Y-%m-%d')})")
    print(f"{'measure':<44}{'baseline':>10}{'cg':>10}{'ratio':>8}  target")
    if "window" in med:
        print(f"{'cold infill at 90% of 600 lines, wall s':<44}{med['whole']:>10.2f}{med['window']:>10.2f}"
              f"{med['window'] / med['whole']:>8.3f}  <= 0.55 (default window vs whole context)")
    paired = statistics.median(a / b for a, b in zip(rows["indicator"], rows["plain"], strict=True))
    print(f"{'decode tokens/s, indicator on vs off':<44}{med['plain']:>10.2f}{med['indicator']:>10.2f}"
          f"{med['indicator'] / med['plain']:>8.3f}  >= 0.99 (the indicator drew {drawn} times)")
    print(f"{'  the same, median of the paired ratios':<64}{paired:>8.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

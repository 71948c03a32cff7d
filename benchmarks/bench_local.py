"""The local engine on the CPU: the prompt window, and the prompt indicator's cost.

    python benchmarks/bench_local.py [--model X.gguf] [--repeats 3] [--threads N]

1. Cold `cg infill` (a new process, prompt cache off) at a cursor 90% down a 600-line file:
   the default window (2048 prompt tokens on the CPU) against the whole context
   (--max-prompt-tokens 4096). Wall time ratio, target <= 0.55.
2. Decode speed with the prompt indicator on (stderr a pseudo-terminal) against off (stderr a
   pipe), from --json timings: target >= 0.99.

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


def decode_rate(model: str, threads: int, *, terminal: bool) -> float:
    """Decode tokens/s of one `cg complete --json`, stderr on a pseudo-terminal or a pipe."""
    prompt = six_hundred_lines()[:6000] + "<CURSOR>\n"
    cmd = [sys.executable, "-m", "cg", "complete", "-m", model, "-n", "64", "-t", str(threads), "--ctx", "4096",
           "--json", *[a for t in (1, 67, 68, 69, 70, 107) for a in ("--logit-bias", f"{t}=-inf")],
           "--no-block-stop"]
    env = {**os.environ, "CG_PROMPT_CACHE": "0", "COLUMNS": "100"}
    if not terminal:
        out = subprocess.run(cmd, input=prompt, capture_output=True, text=True, env=env, check=True).stdout
    else:
        master, slave = pty.openpty()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        proc.stdin.write(prompt.encode())
        proc.stdin.close()
        while proc.poll() is None:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    os.read(master, 65536)
                except OSError:
                    break
        out = proc.stdout.read().decode()
        os.close(master)
    data = json.loads(out)
    return (data["completion_tokens"] - 1) / (data["timings"]["generation_ms"] / 1000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(WORKDIR / "codegemma-2b-shape-18l-q4_k_m.gguf"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    work = WORKDIR / "local"
    work.mkdir(parents=True, exist_ok=True)
    source = work / "module.py"
    source.write_text(six_hundred_lines())
    target = f"{source}:{int(600 * 0.9)}"
    rows: dict[str, list[float]] = {"window": [], "whole": [], "indicator": [], "plain": []}
    for _ in range(args.repeats):  # interleaved: machine noise hits both sides alike
        rows["window"].append(cold_infill(args.model, target, None, args.threads))
        rows["whole"].append(cold_infill(args.model, target, 4096, args.threads))
        rows["indicator"].append(decode_rate(args.model, args.threads, terminal=True))
        rows["plain"].append(decode_rate(args.model, args.threads, terminal=False))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"model: {Path(args.model).name}  threads: {args.threads}  repeats: {args.repeats}  "
          f"({time.strftime('%Y-%m-%d')})")
    print(f"{'measure':<44}{'baseline':>10}{'cg':>10}{'ratio':>8}  target")
    print(f"{'cold infill at 90% of 600 lines, wall s':<44}{med['whole']:>10.2f}{med['window']:>10.2f}"
          f"{med['window'] / med['whole']:>8.3f}  <= 0.55 (default window vs whole context)")
    print(f"{'decode tokens/s, indicator on vs off':<44}{med['plain']:>10.2f}{med['indicator']:>10.2f}"
          f"{med['indicator'] / med['plain']:>8.3f}  >= 0.99")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

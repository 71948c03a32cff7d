"""Repeated use: N infills in one file, in one process versus N one-shot processes, with and
without the on-disk prompt cache; and the prompt time of a second infill whose prefix is cached.

    python benchmarks/bench_repeated.py [--model X.gguf] [--targets 4] [--tokens 32] [--threads N]

Default model: the codegemma-2b-shape Q4_K_M that `bench_quantize.py --keep` leaves in
/tmp/cg-bench. The file is a window of about 1,500 tokens of the standard library's textwrap.py.
Stop tokens are banned so every run makes the same number of tokens. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WORKDIR, child, source_text

PREPARE = r'''
import json, sys
from cg.engine import load
eng = load(sys.argv[1], n_ctx=256)
lines = json.loads(sys.argv[2])
start = int(len(lines) * 0.3)
window, n = [], 0
for line in lines[start:]:
    n += len(eng.tokenize_text(line))
    if n > int(sys.argv[3]):
        break
    window.append(line)
print(json.dumps({"window": window, "stop_ids": sorted(eng.special.stop_ids)}))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(WORKDIR / "codegemma-2b-shape-18l-q4_k_m.gguf"))
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--file-tokens", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--second-at", type=float, nargs="*", default=[0.5, 0.7, 0.9],
                    help="cursor positions (fraction of the file) for the second-infill measure")
    ap.add_argument("--skip-n", action="store_true", help="only the second-infill measure")
    args = ap.parse_args()
    work = WORKDIR / "repeated"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lines = source_text().splitlines(keepends=True)
    prep = json.loads(child([sys.executable, "-c", PREPARE, args.model, json.dumps(lines), str(args.file_tokens)])[2])
    src = work / "module.py"
    src.write_text("".join(prep["window"]))
    n_lines = len(prep["window"])
    targets = [int(n_lines * (0.2 + 0.7 * i / max(1, args.targets - 1))) + 1 for i in range(args.targets)]
    bias = [a for i in prep["stop_ids"] for a in ("--logit-bias", f"{i}=-inf")]
    base = [sys.executable, "-m", "cg", "infill", "-m", args.model, "-n", str(args.tokens), "-t", str(args.threads),
            "--ctx", "4096", "-q", "--json", *bias]

    def run(specs: list[str], cache: bool, home: str) -> tuple[float, list[dict]]:
        env = {"CG_PROMPT_CACHE": "1" if cache else "0", "CG_HOME": str(work / home)}
        sec, _rss, out = child([*base, *specs], env=env)
        return sec, [json.loads(line) for line in out.splitlines()]

    specs = [f"{src}:{line}" for line in targets]
    print(f"{Path(args.model).name}, {args.threads} threads, file of {n_lines} lines (~{args.file_tokens} tokens), "
          f"{args.targets} targets at lines {targets}, {args.tokens} new tokens each")
    if args.skip_n:
        specs = []
    one_sec, one_rows = run(specs, cache=False, home="home-a") if specs else (0.0, [])
    # One-shot calls in the order cg itself fills them (bottom-up, so positions stay valid).
    cold = [run([s], cache=False, home="home-b") for s in reversed(specs)]
    warm = [run([s], cache=True, home="home-c") for s in reversed(specs)]
    cold_sec, warm_sec = sum(s for s, _ in cold), sum(s for s, _ in warm)
    if specs:
        print(f"\n{'N infills in one file':<44}{'wall s':>9}{'prompt s':>10}{'vs one-shot':>13}")
        rows = [("one process (cg infill F:L1 ... F:LN)", one_sec, one_rows),
                ("N one-shot processes, no prompt cache", cold_sec, [r for _, rs in cold for r in rs]),
                ("N one-shot processes, prompt cache", warm_sec, [r for _, rs in warm for r in rs])]
        for name, sec, rs in rows:
            prompt = sum(r["timings"]["prompt_ms"] for r in rs) / 1000
            print(f"{name:<44}{sec:>9.1f}{prompt:>10.1f}{cold_sec / sec:>12.2f}x", flush=True)

    # A second infill two lines below the first: its prefix is what the first one cached.
    print(f"\n{'second infill, cursor at':<26}{'prompt':>8}{'cached':>8}{'no cache s':>12}{'cached s':>10}{'cut':>7}"
          f"{'same text':>11}")
    for where in args.second_at:
        line = max(2, int(n_lines * where))
        first, second = f"{src}:{line}", f"{src}:{line + 2}"
        home = f"home-pair-{line}"
        run([first], cache=True, home=home)
        _, [cached] = run([second], cache=True, home=home)
        _, [uncached] = run([second], cache=False, home=home + "-off")
        pc, pu = cached["timings"]["prompt_ms"] / 1000, uncached["timings"]["prompt_ms"] / 1000
        print(f"{f'line {line + 2}/{n_lines} ({where:.0%})':<26}{cached['prompt_tokens']:>8}"
              f"{cached['timings']['cached_tokens']:>8}{pu:>12.2f}{pc:>10.2f}{pu / pc:>6.1f}x"
              f"{cached['text'] == uncached['text']!s:>11}", flush=True)
    print("target: cut >= 3x")


if __name__ == "__main__":
    main()

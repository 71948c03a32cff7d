"""Conversion and quantization cost at codegemma-2b's shape (random weights: values do not
change the cost). Reports convert time, quantize time and peak RSS of each step, measured in a
child process each.

    python benchmarks/bench_quantize.py [--layers 18] [--dtype BF16] [--workdir /tmp/cg-bench]

--layers below 18 keeps codegemma-2b's tensor shapes but fewer blocks (quicker; the embedding,
the largest tensor at 256000 x 2048, stays). Not a test: run by hand.

Not done yet: the same run of llama.cpp's convert_hf_to_gguf.py (vendor/llama.cpp in the
llama-cpp-python sdist, needs `pip install torch==2.13.0`) for the tensor-identity and speed
and RSS ratios the quantize issue asks for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CHILD = r'''
import json, resource, sys, time
from quantize.convert import convert
src, out, qtype = sys.argv[1:4]
start = time.perf_counter()
convert(src, out, type=qtype, force=True)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run_child(src: Path, out: Path, qtype: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), qtype],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from quantize.synthetic import CODEGEMMA_2B, write_checkpoint

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=CODEGEMMA_2B.layers)
    ap.add_argument("--dtype", default="BF16", choices=["BF16", "F32"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cg-bench"))
    args = ap.parse_args()
    shape = dataclasses.replace(CODEGEMMA_2B, layers=args.layers)
    src = args.workdir / f"codegemma-2b-shape-{args.layers}l"
    if not (src / "config.json").exists():
        start = time.perf_counter()
        write_checkpoint(src, shape, dtype=args.dtype, shards=2, scale=1.0)
        print(f"wrote random checkpoint in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    print(f"checkpoint: {src.name}, {size / 2**30:.2f} GiB {args.dtype}, layers {args.layers}")
    print(f"{'output':<10}{'seconds':>10}{'peak RSS MiB':>14}{'file MiB':>10}")
    for qtype in ("f16", "q8_0", "q4_k_m"):
        out = args.workdir / f"out-{qtype}.gguf"
        r = run_child(src, out, qtype)
        print(f"{qtype:<10}{r['seconds']:>10.1f}{r['peak_rss_mib']:>14.0f}{out.stat().st_size / 2**20:>10.0f}")
        out.unlink()
    print(f"(this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
